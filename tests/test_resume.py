"""Exact resume after SIGKILL (training/checkpoint.py): a run killed mid-training and restarted with
`--resume-from-checkpoint latest` logs the same losses and ends with the same weights as a run never killed —
dropout on, across an epoch boundary, with a log window that straddles the checkpoint, gradient accumulation,
DataLoader workers that read ahead, GradCache, 2 processes, DeepSpeed ZeRO-2 and ZeRO-3. The kill is a real
SIGKILL to every process of the run, sent as soon as a checkpoint is complete, so it lands mid-step or mid-save.

"Every process" is found by parent links, not by process group: torch's elastic launcher (torchrun) starts each
worker in a session of its own, so killing the launcher's group would leave the workers training on and writing
checkpoints into the folder the resumed run reads (`test_killing_the_launchers_group_leaves_torchrun_workers_alive`
shows it). Each test checks its own preconditions: every process it meant to kill is gone, and the resumed run
says it started from the checkpoint the kill left behind.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
from safetensors.torch import load_file

import train
from tests.helpers import REPO, TORCHRUN, alive, kill_tree, losses, make_tiny_run_files, subprocess_env
from training.checkpoint import complete_checkpoints, find_checkpoint, write_manifest

ENV = subprocess_env()


@pytest.fixture(scope="module")
def dropout_run(tmp_path_factory):
    """A tiny model with dropout 0.1 and 96 rows (24 batches of 4 per epoch on one process: 30 steps cross one)."""
    from tests.helpers import minilm_path

    return make_tiny_run_files(str(tmp_path_factory.mktemp("resume")), minilm_path(), rows=96, dropout=0.1)


@pytest.fixture(scope="module")
def prepared_dropout_run(dropout_run, tmp_path_factory):
    """The same rows as a prepared corpus (scripts/prepare_data.py; train.py's default lengths)."""
    from data.prepared import prepare

    model, data = dropout_run
    folder = str(tmp_path_factory.mktemp("prepared") / "corpus")
    prepare([data], model, folder, progress=False, log=lambda *a: None)
    return model, folder


def args(run: tuple[str, str], out: str, *extra: str) -> list[str]:
    model, data = run
    return ["train.py", "--model", model, "--train-data", data, "--loss", "infonce", "--group-size", "3",
            "--batch-size", "4", "--max-steps", "30", "--lr", "1e-3", "--report-to", "none", "--save-steps", "4",
            "--save-total-limit", "2", "--mixed-precision", "no", "--output-dir", out, *extra]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res


def kill_after_checkpoint(cmd: list[str], out: str, step: int, workers: int) -> None:
    """Start cmd; once checkpoint-<step> is complete, SIGKILL the launcher and every process it started.

    workers: how many train.py processes the launcher starts (torchrun: 2; plain python: 0, it is train.py
    itself); fewer found below it means one escaped the listing."""
    with open(out + ".log", "w") as log:  # the killed run's output, beside its folder
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900  # generous: a loaded 2-core machine runs 2-process DeepSpeed slowly
    while proc.poll() is None and not os.path.isfile(os.path.join(out, f"checkpoint-{step}", "trainer_state.json")):
        if time.monotonic() > deadline:
            kill_tree(proc)
            raise AssertionError(f"no checkpoint-{step} within 900 s; the run's output is in {out}.log")
        time.sleep(0.01)
    code, below = kill_tree(proc)
    assert code == -signal.SIGKILL, "the run ended before it could be killed; the test needs a longer run"
    trainers = [pid for pid, command in below.items() if "train.py" in command]
    assert len(trainers) >= workers, f"found {len(trainers)} of the launcher's {workers} workers to kill: {below}"
    # nothing of the run is left to write: the newest complete checkpoint is the one the kill waited for
    assert complete_checkpoints(out)[-1][0] == step, complete_checkpoints(out)


CASES = {
    "one process, dropout, epoch boundary, log window across the checkpoint": ([], ["--log-steps", "3"]),
    "one process, gradient accumulation 2": ([], ["--gradient-accumulation-steps", "2", "--log-steps", "1"]),
    "one process, 2 DataLoader workers (read ahead)": ([], ["--num-workers", "2", "--log-steps", "1"]),
    "2 processes, GradCache": (TORCHRUN, ["--grad-cache-chunk", "5", "--log-steps", "1"]),
    "2 processes, DeepSpeed ZeRO-2": (TORCHRUN, ["--deepspeed", "configs/deepspeed/zero2.json", "--log-steps", "1"]),
    "2 processes, DeepSpeed ZeRO-3 + GradCache": (TORCHRUN, ["--deepspeed", "configs/deepspeed/zero3.json",
                                                             "--grad-cache-chunk", "5", "--log-steps", "1"]),
}


PREPARED_CASES = {  # the same, reading a prepared (memory-mapped) corpus
    "prepared corpus, one process, 2 DataLoader workers": ([], ["--num-workers", "2", "--log-steps", "1"]),
    "prepared corpus, 2 processes": (TORCHRUN, ["--log-steps", "1"]),
}
CASES.update(PREPARED_CASES)


@pytest.mark.parametrize("case", list(CASES))
def test_sigkill_then_resume_equals_the_uninterrupted_run(request, tmp_path, case):
    launcher, extra = CASES[case]
    dropout_run = request.getfixturevalue("prepared_dropout_run" if case in PREPARED_CASES else "dropout_run")
    python = launcher or [sys.executable]
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    run([*python, *args(dropout_run, whole, *extra)])
    kill_after_checkpoint([*python, *args(dropout_run, killed, *extra)], killed, step=8,
                          workers=2 if launcher else 0)
    res = run([*python, *args(dropout_run, killed, *extra, "--resume-from-checkpoint", "latest")])
    assert f"resumed from {os.path.join(killed, 'checkpoint-8')}: step 8," in res.stdout + res.stderr
    assert losses(killed) == losses(whole)  # every logged loss, bit for bit
    want = load_file(os.path.join(whole, "model.safetensors"))
    have = load_file(os.path.join(killed, "model.safetensors"))
    assert want.keys() == have.keys()
    for k in want:
        assert (have[k] == want[k]).all(), k


def start_sleeping_torchrun(folder, new_session: bool) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """torchrun with 2 workers that only sleep; -> (launcher, workers) once both workers have started."""
    script = folder / "sleeper.py"
    script.write_text("import os, sys, time\n"
                      "open(os.path.join(sys.argv[1], f'worker-{os.getpid()}'), 'w').close()\n"
                      "time.sleep(120)\n")
    launcher = subprocess.Popen([*TORCHRUN, str(script), str(folder)], cwd=REPO, env=ENV,
                                start_new_session=new_session, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(folder.glob("worker-*"))) < 2:
        assert time.monotonic() < deadline and launcher.poll() is None, "torchrun did not start 2 workers"
        time.sleep(0.05)
    return launcher, [psutil.Process(int(f.name.split("-")[1])) for f in folder.glob("worker-*")]


def test_killing_the_launchers_group_leaves_torchrun_workers_alive(tmp_path):
    """Why kill_tree exists: torchrun's workers run in sessions of their own, so os.killpg on the launcher's group
    (what this file did before) leaves them running — the check in kill_tree would catch that."""
    launcher, workers = start_sleeping_torchrun(tmp_path, new_session=True)
    try:
        os.killpg(launcher.pid, signal.SIGKILL)
        assert launcher.wait() == -signal.SIGKILL
        time.sleep(0.5)
        assert all(alive(w) for w in workers), "the workers died with the launcher's group: the premise changed"
    finally:
        for w in workers:
            w.kill()
        psutil.wait_procs(workers, timeout=30)


def test_kill_tree_kills_torchrun_and_every_worker(tmp_path):
    launcher, workers = start_sleeping_torchrun(tmp_path, new_session=False)
    code, below = kill_tree(launcher)
    assert code == -signal.SIGKILL
    assert {w.pid for w in workers} <= set(below)
    assert not any(alive(w) for w in workers)


def test_partial_checkpoints_are_not_resumed_from(tmp_path):
    for name in ("checkpoint-4", "checkpoint-8.partial", "checkpoint-12", "checkpoint-x"):
        (tmp_path / name).mkdir()
    for name in ("checkpoint-4", "checkpoint-8.partial"):
        (tmp_path / name / "trainer_state.json").write_text("{}")
    write_manifest(str(tmp_path / "checkpoint-4"))
    # checkpoint-12 lacks trainer_state.json (train.py never leaves one like that: it renames complete folders)
    assert complete_checkpoints(str(tmp_path)) == [(4, str(tmp_path / "checkpoint-4"))]
    assert find_checkpoint("latest", str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert find_checkpoint("latest", str(tmp_path / "nothing-yet")) is None
    with pytest.raises(SystemExit, match="not a checkpoint"):
        find_checkpoint(str(tmp_path / "checkpoint-12"), str(tmp_path))


@pytest.fixture(scope="module")
def finished_checkpoint(dropout_run, tmp_path_factory):
    """One complete run with checkpoints, on its own copy of the data."""
    folder = tmp_path_factory.mktemp("finished")
    data = str(folder / "train.jsonl")
    shutil.copy(dropout_run[1], data)
    out = str(folder / "out")
    run([sys.executable, *args((dropout_run[0], data), out, "--max-steps", "9")])
    return data, out


def test_resume_refuses_changed_settings(dropout_run, finished_checkpoint):
    data, out = finished_checkpoint
    argv = args((dropout_run[0], data), out, "--max-steps", "9", "--lr", "5e-4", "--batch-size", "8",
                "--resume-from-checkpoint", os.path.join(out, "checkpoint-8"))[1:]
    with pytest.raises(SystemExit) as e:
        train.main(train.parse_config(train.TrainConfig, argv))
    message = str(e.value)
    assert "--lr: 0.001 in the checkpoint, 0.0005 now" in message
    assert "--batch-size: 4 in the checkpoint, 8 now" in message


def test_resume_refuses_changed_data(dropout_run, finished_checkpoint):
    data, out = finished_checkpoint
    original = open(data, encoding="utf-8").read()
    try:
        with open(data, "w", encoding="utf-8") as f:  # same file name, rows in another order
            f.write("\n".join(original.splitlines()[::-1]) + "\n")
        argv = args((dropout_run[0], data), out, "--max-steps", "9", "--resume-from-checkpoint", "latest")[1:]
        with pytest.raises(SystemExit, match="sampler state is from a run with a different fingerprint"):
            train.main(train.parse_config(train.TrainConfig, argv))
    finally:
        with open(data, "w", encoding="utf-8") as f:
            f.write(original)
