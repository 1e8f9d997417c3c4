"""Issue 25: no tool deletes or overwrites what it did not write, a full disk is said in those words, an inexact
resume or a run that trained nothing never reports success, and bad options stop before anything loads.

Each data-loss case is run against a folder holding a file the tool must not touch, and checks that file after.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import types

import pytest
import torch

import storage.disk
import train
from cli_config import parse_config
from data.prepared import PreparedCorpus, prepare
from models.bi_encoder import BiEncoder
from storage.disk import is_no_space
from storage.folders import OutputError, check_output_folder, staged_folder
from tests.helpers import REPO, subprocess_env, train_args
from training.checkpoint import find_checkpoint, write_manifest
from training.step_guard import StepGuard

QUIET = dict(progress=False, log=lambda *a: None)


@pytest.fixture()
def tiny(tiny_run):
    """(model folder, train.jsonl of 48 rows) of the tiny run (tests/conftest.py)."""
    return tiny_run


def tree(folder) -> dict[str, bytes]:
    """Every file under folder with its bytes."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def prepare_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.prepare_data", "--num-proc", "1", *args], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- 1, 2: prepare_data never deletes a folder
def test_prepare_refuses_a_folder_it_did_not_write_and_deletes_nothing(tiny, tmp_path):
    """The issue's case: --output x where x holds precious.txt and the input itself (x/sub/a.jsonl)."""
    model, data = tiny
    x = tmp_path / "x"
    (x / "sub").mkdir(parents=True)
    (x / "precious.txt").write_text("keep")
    (x / "sub" / "a.jsonl").write_bytes(open(data, "rb").read())
    before = tree(x)
    res = prepare_cli("--input", str(x / "sub" / "a.jsonl"), "--tokenizer", model, "--output", str(x))
    assert res.returncode != 0
    assert "did not write" in res.stderr or "holds the input" in res.stderr, res.stderr
    assert tree(x) == before
    assert sorted(os.listdir(tmp_path)) == ["x"]  # no staging folder, no x.old
    # precondition: the same command into a new folder works
    res = prepare_cli("--input", str(x / "sub" / "a.jsonl"), "--tokenizer", model, "--output", str(tmp_path / "y"))
    assert res.returncode == 0, res.stderr
    assert len(PreparedCorpus(str(tmp_path / "y"))) == 48


def test_prepare_leaves_an_existing_old_folder_and_an_output_file_alone(tiny, tmp_path):
    model, data = tiny
    old = tmp_path / "c.old"
    old.mkdir()
    (old / "mine.txt").write_text("not the tool's")
    file = tmp_path / "f"
    file.write_text("a file of the user's")
    res = prepare_cli("--input", data, "--tokenizer", model, "--output", str(file))
    assert res.returncode != 0 and "is a file, not a folder" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert file.read_text() == "a file of the user's"
    # a corpus replaced with --overwrite: c.old is not the tool's and stays
    prepare([data], model, str(tmp_path / "c"), **QUIET)
    prepare([data], model, str(tmp_path / "c"), passage_prompt="p: ", overwrite=True, **QUIET)
    assert (old / "mine.txt").read_text() == "not the tool's"
    assert sorted(os.listdir(tmp_path)) == ["c", "c.old", "f"]


def test_a_corpus_the_user_added_a_file_to_is_not_replaced(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "c"
    prepare([data], model, str(out), **QUIET)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"did not write \(5 entries: .*notes.txt"):
        prepare([data], model, str(out), passage_prompt="p: ", overwrite=True, **QUIET)
    assert (out / "notes.txt").read_text() == "mine"
    os.remove(out / "notes.txt")  # precondition: without it the same call replaces the corpus
    prepare([data], model, str(out), passage_prompt="p: ", overwrite=True, **QUIET)
    assert PreparedCorpus(str(out)).manifest["settings"]["passage_prompt"] == "p: "


def test_the_output_may_not_be_or_lie_inside_an_input(tiny, tmp_path):
    model, data = tiny
    folder_input = tmp_path / "rows"
    folder_input.mkdir()
    (folder_input / "a.jsonl").write_bytes(open(data, "rb").read())
    for output in (folder_input, folder_input / "corpus", os.path.join(model, "corpus")):
        with pytest.raises(OutputError, match="(is|lies inside) the (input|tokenizer folder)"):
            prepare([str(folder_input)], model, str(output), **QUIET)
    assert sorted(os.listdir(folder_input)) == ["a.jsonl"]


def test_staged_folder_removes_its_own_work_on_error_and_keeps_the_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(OutputError):  # someone else's folder: refused before the block runs
        with staged_folder(str(target), "tool", overwrite=True):
            pass
    with pytest.raises(RuntimeError):
        with staged_folder(str(tmp_path / "new"), "tool", overwrite=False) as staging:
            open(os.path.join(staging, "half"), "w").close()
            raise RuntimeError("killed mid-write")
    assert sorted(os.listdir(tmp_path)) == ["out"]
    with staged_folder(str(tmp_path / "new"), "tool", overwrite=False) as staging:
        open(os.path.join(staging, "done"), "w").close()
    assert json.load(open(tmp_path / "new" / ".written_by.json"))["entries"] == ["done"]
    assert check_output_folder(str(tmp_path / "new"), "tool", overwrite=True) is True
    with pytest.raises(OutputError, match="written by|did not write"):
        check_output_folder(str(tmp_path / "new"), "another tool", overwrite=True)


# ---------------------------------------------------------------- 3: train.py never writes into its inputs
def run_train(model, data, out, *extra):
    return train.main(parse_config(train.TrainConfig, train_args(model, data, str(out), "--max-steps", "2", *extra)))


def test_output_dir_equal_to_or_inside_the_base_model_is_refused(tiny, tmp_path):
    model, data = tiny
    before = tree(model)
    for out in (model, os.path.join(model, "finetuned")):
        with pytest.raises(SystemExit, match=r"--output-dir .*: (is|lies inside) --model"):
            run_train(model, data, out)
    assert tree(model) == before and not os.path.exists(os.path.join(model, "finetuned"))
    copy = tmp_path / "base"
    shutil.copytree(model, copy)
    run_train(str(copy), data, tmp_path / "out")  # precondition: the same run into another folder trains


def test_output_dir_holding_files_train_py_did_not_write_is_refused(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}')  # a name train.py would write
    with pytest.raises(SystemExit, match=r"holds files train.py did not write \(1 entry: config.json\)"):
        run_train(model, data, out)
    assert (out / "config.json").read_text() == '{"mine": true}'


def test_overwrite_output_dir_never_deletes_the_checkpoint_it_starts_from(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "out"
    run_train(model, data, out, "--save-steps", "1")
    base = str(out / "checkpoint-1")
    with pytest.raises(SystemExit, match=r"--overwrite-output-dir would delete .*checkpoint-1, which holds --model"):
        run_train(base, data, out, "--overwrite-output-dir")
    assert os.path.isfile(os.path.join(base, "model.safetensors"))


# ---------------------------------------------------------------- 4: a full disk
def checkpoints(out) -> list[str]:
    return sorted(n for n in os.listdir(out) if n.startswith("checkpoint-"))


def test_a_checkpoint_that_does_not_fit_is_refused_before_writing(tiny, tmp_path, monkeypatch):
    model, data = tiny
    out = tmp_path / "out"
    real = storage.disk.free_bytes
    monkeypatch.setattr(storage.disk, "free_bytes",
                        lambda path: 10 * 2**20 if os.path.isdir(out / "checkpoint-2") else real(path))
    with pytest.raises(SystemExit) as e:
        run_train(model, data, out, "--save-steps", "1", "--max-steps", "4")
    message = str(e.value)
    assert re.search(r"no space left on .* for checkpoint-3: needed about [\d.]+ MiB, free 10.0 MiB; nothing was "
                     r"written\. The last complete checkpoint is .*checkpoint-2", message), message
    assert checkpoints(out) == ["checkpoint-1", "checkpoint-2"]  # precondition: two saves went through
    assert find_checkpoint("latest", str(out)) == str(out / "checkpoint-2")  # intact


def test_running_out_of_space_mid_checkpoint_says_so_and_removes_the_partial(tiny, tmp_path, monkeypatch):
    """torch.save's own message on a full disk ('inline_container.cc ... unexpected pos') never says "disk"."""
    model, data = tiny
    out = tmp_path / "out"
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        if "checkpoint-2" in str(f) and str(f).endswith("optimizer.bin"):
            calls.append(f)
            open(f, "wb").write(b"\0" * 4096)  # what a full disk leaves
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 4032")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(SystemExit, match=r"no space left on .* while writing checkpoint-2: needed about .*, free .*"
                                         r"The last complete checkpoint is .*checkpoint-1"):
        run_train(model, data, out, "--save-steps", "1", "--max-steps", "4")
    assert calls  # precondition: the save really failed there
    assert checkpoints(out) == ["checkpoint-1"]  # no checkpoint-2.partial left filling the disk
    assert find_checkpoint("latest", str(out)) == str(out / "checkpoint-1")


def test_running_out_of_space_at_the_final_save_leaves_no_half_model(tiny, tmp_path, monkeypatch):
    model, data = tiny
    out = tmp_path / "out"
    real_save = BiEncoder.save

    def save(self, folder, state_dict=None, merge=False):
        real_save(self, folder, state_dict, merge)
        if not os.path.basename(folder).startswith("checkpoint-"):
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(folder, "model.safetensors"))

    monkeypatch.setattr(BiEncoder, "save", save)
    with pytest.raises(SystemExit, match=r"no space left on .* while writing the model in .*out.*checkpoint-2"):
        run_train(model, data, out, "--save-steps", "1", "--max-steps", "3")
    assert sorted(os.listdir(out)) == ["checkpoint-1", "checkpoint-2", "train_config.json"]


def test_no_space_forms_are_recognised():
    assert is_no_space(OSError(errno.ENOSPC, "No space left on device"))
    assert is_no_space(RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                                    "\"No space left on device\" })"))  # safetensors
    assert is_no_space(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 4032"))
    assert not is_no_space(RuntimeError("CUDA out of memory"))
    assert not is_no_space(OSError(errno.EACCES, "Permission denied"))


UNSHARE = shutil.which("unshare")


def in_small_tmpfs(size_mb: int, folder, *command: str) -> subprocess.CompletedProcess:
    """Run command in a mount namespace where `folder` is a tmpfs of size_mb: a real full disk."""
    script = f'mount -t tmpfs -o size={size_mb}m tmpfs "{folder}" && exec "$@"'
    return subprocess.run([UNSHARE, "-rm", "sh", "-c", script, "sh", *command], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)


def tmpfs_available(tmp_path) -> bool:
    if UNSHARE is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    return in_small_tmpfs(1, probe, "true").returncode == 0


@pytest.mark.parametrize("when, size_mb", [("checkpoint", 12), ("final", 4)])
def test_a_real_full_disk(tiny, tmp_path, when, size_mb):
    """A tmpfs of a few MiB in a mount namespace of its own (skipped where unshare cannot make one). The free-space
    check is turned off in the worker, as if another program filled the disk after it, so the write itself fails:
    torch.save for the checkpoint's optimizer state, safetensors for the final model."""
    if not tmpfs_available(tmp_path):
        pytest.skip("cannot mount a tmpfs in a user + mount namespace here (unshare -rm)")
    model, data = tiny
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "out"
    extra = ["--save-steps", "1", "--max-steps", "3"] if when == "checkpoint" else ["--max-steps", "1"]
    res = in_small_tmpfs(size_mb, disk, sys.executable, "-m", "tests.disk_full_worker",
                         *train_args(model, data, str(out), *extra))
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-3000:]
    assert "no space left on tmpfs (mounted at " in res.stderr, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert "filled: " in res.stdout  # precondition: the worker's disk was really full when it stopped



# ---------------------------------------------------------------- 6: a run that trained nothing fails
def test_a_run_whose_every_step_was_skipped_fails_and_writes_no_model(tiny, tmp_path, capfd):
    model, data = tiny
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"training failed: no optimizer step was applied \(2 of 2 steps had a "
                                         r"non-finite loss or gradient norm\); no model is written"):
        run_train(model, data, out, "--temperature", "1e-45")
    text = "\n".join(capfd.readouterr())
    assert text.count("update skipped") == 2  # precondition: both steps were skipped, below --max-bad-steps 3
    assert os.listdir(out) == ["train_config.json"]
    run_train(model, data, tmp_path / "ok")  # and the same run at a sane τ trains and saves
    assert os.path.isfile(tmp_path / "ok" / "model.safetensors")


def test_the_skip_count_survives_a_resume():
    guard = StepGuard.__new__(StepGuard)
    guard.max_bad_steps, guard.output_dir = 3, "/nonexistent"
    guard.bad_in_a_row, guard.skipped, guard.applied = [5, 6], 2, 4
    guard.check_trained(6)  # steps 1-4 applied, 5-6 skipped: trained, saved
    guard.applied, guard.bad_in_a_row = 0, [1, 2]
    with pytest.raises(SystemExit, match="no optimizer step was applied"):
        guard.check_trained(2)
    guard.applied = None  # resumed from a checkpoint that did not record it, then every step skipped
    guard.bad_in_a_row = [3, 4]
    with pytest.raises(SystemExit, match=r"its last 2 steps \(3–4\) were all skipped"):
        guard.check_trained(2)


# ---------------------------------------------------------------- 7, 8: a resume that would not be exact
@pytest.fixture()
def finished(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "out"
    run_train(model, data, out, "--save-steps", "1", "--max-steps", "3", "--save-total-limit", "0")
    return model, data, out


def resume(model, data, out, *extra):
    return run_train(model, data, out, "--save-steps", "1", "--max-steps", "3", "--save-total-limit", "0",
                     "--resume-from-checkpoint", str(out / "checkpoint-1"), *extra)


def test_a_checkpoint_altered_at_the_same_size_is_refused(tiny, tmp_path):
    """Weights of more than 16 MiB (checkpoints used to hash only smaller files): a BERT of hidden 160."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from models.settings import EncoderSettings

    tokenizer = AutoTokenizer.from_pretrained(tiny[0])
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=160, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=160)
    model, data, out = str(tmp_path / "wide"), tiny[1], tmp_path / "out"
    BiEncoder(BertModel(config), tokenizer, EncoderSettings(query_max_len=16, passage_max_len=24)).save(model)
    run_train(model, data, out, "--save-steps", "1", "--max-steps", "3", "--save-total-limit", "0")
    weights = out / "checkpoint-1" / "state" / "model.safetensors"
    size, blob = os.path.getsize(weights), bytearray(weights.read_bytes())
    assert size > 16 * 2**20
    blob[size // 2] ^= 0xFF  # one byte inside the tensors, far past the header
    weights.write_bytes(bytes(blob))
    assert os.path.getsize(weights) == size
    with pytest.raises(SystemExit, match=r"state/model.safetensors: content differs from when the checkpoint was "
                                         r"written \(SHA-256 mismatch\)"):
        resume(model, data, out)
    blob[size // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    resume(model, data, out)  # precondition: the restored file resumes


def test_a_random_state_that_does_not_load_refuses_the_resume(finished, capfd):
    model, data, out = finished
    rng = out / "checkpoint-1" / "state" / "random_states_0.pkl"
    rng.write_bytes(b"not a pickle")
    write_manifest(str(out / "checkpoint-1"))  # as if it had been written so: the manifest agrees
    with pytest.raises(SystemExit, match=r"random_states_0.pkl: does not load .* so the resumed run would not be "
                                         r"the uninterrupted one.*--allow-inexact-resume"):
        resume(model, data, out)
    resume(model, data, out, "--allow-inexact-resume")
    assert "resuming anyway (--allow-inexact-resume)" in capfd.readouterr().err


# ---------------------------------------------------------------- 10, 13: options by type and range
@pytest.mark.parametrize("text, message", [
    ("save_steps: 1.7\n", r"c.yaml:1: save_steps: 1.7 is not a whole number"),
    ("loss: gte\nlr: \"abc\"\n", r"c.yaml:2: lr: 'abc' is not a number"),
    ("train_data: 5\n", r"c.yaml:1: train_data: 5 is not a list"),
    ("length_buckets: maybe\n", r"c.yaml:1: length_buckets: 'maybe' is not true or false"),
    ("lr: [1\n", r"c.yaml:2: not a valid YAML config: expected ',' or ']'"),
    ("lr: !!python/object/apply:os.system [\"touch pwned\"]\n", r"c.yaml:1: not a valid YAML config: could not "
                                                                 r"determine a constructor"),
    ("- lr\n", r"c.yaml: a YAML config is a mapping of option: value, got list"),
])
def test_yaml_values_are_checked_by_type_with_file_and_line(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit, match=message):
        parse_config(train.TrainConfig, ["--config", str(path)])
    assert not (REPO / "pwned").exists()


def test_yaml_numbers_written_as_yaml_1_1_text_are_read(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 1e-4\ntrain_data: a.jsonl\n")  # PyYAML reads 1e-4 as a string
    cfg = parse_config(train.TrainConfig, ["--config", str(tmp_path / "c.yaml")])
    assert cfg.optim.lr == 1e-4 and cfg.data.train_data == ["a.jsonl"]


def test_a_range_error_names_the_yaml_file_it_came_from(tiny, tmp_path):
    model, data = tiny
    (tmp_path / "c.yaml").write_text("seed: 4294967296\n")
    with pytest.raises(SystemExit, match=r"--seed \(.*c.yaml:1: seed\) 4294967296: must be a whole number from 0 to "
                                         r"2³² − 1"):
        train.main(parse_config(train.TrainConfig, ["--config", str(tmp_path / "c.yaml"),
                                                    *train_args(model, data, str(tmp_path / "o"))]))
    with pytest.raises(SystemExit, match=r"^--seed -1: must be a whole number from 0"):
        run_train(model, data, tmp_path / "o", "--seed", "-1")


# ---------------------------------------------------------------- smaller ones
def test_the_log_is_strict_json_and_saved_files_follow_the_umask(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        run_train(model, data, out, "--temperature", "1e-45", "--max-steps", "3", "--max-bad-steps", "5",
                  "--save-steps", "2")
    except SystemExit:
        pass  # every step skipped: no model, but the checkpoint and its log are written
    finally:
        os.umask(old)
    state = (out / "checkpoint-2" / "trainer_state.json").read_text()
    history = json.loads(state, parse_constant=lambda c: pytest.fail(f"bare {c} in trainer_state.json"))["history"]
    assert any(h.get("loss", 0) is None for h in history)  # precondition: a non-finite loss was logged
    modes = {p: oct(os.stat(os.path.join(r, p)).st_mode & 0o777) for r, _, ns in os.walk(out) for p in ns}
    assert set(modes.values()) == {"0o644"}, modes


def test_sigterm_without_checkpoints_does_not_promise_a_resume(capsys):
    guard = StepGuard.__new__(StepGuard)
    guard.accelerator = types.SimpleNamespace(print=print)
    guard.close = lambda: None
    with pytest.raises(SystemExit):
        guard.exit_after_sigterm(7, None)
    text = capsys.readouterr().out
    assert "no checkpoint written (--save-steps is 0)" in text and "Resume with" not in text


# ---------------------------------------------------------------- 5, 12 (train.py side; models/checks.py)
def test_train_py_refuses_a_model_folder_without_tokenizer_files(tiny, tmp_path):
    model, data = tiny
    bare = tmp_path / "bare"
    shutil.copytree(model, bare, ignore=shutil.ignore_patterns("tokenizer*", "vocab.txt", "special_tokens_map.json"))
    with pytest.raises(SystemExit, match=r"--model .*bare: not a complete model folder: no tokenizer files"):
        run_train(str(bare), data, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # stopped before claiming the output folder


def test_train_py_refuses_max_lengths_beyond_the_position_table(tiny, tmp_path):
    model, data = tiny
    limit = json.load(open(os.path.join(model, "config.json")))["max_position_embeddings"]
    with pytest.raises(SystemExit, match=rf"--passage-max-len {limit + 1}: more than the {limit} tokens"):
        run_train(model, data, tmp_path / "out", "--passage-max-len", str(limit + 1))
    run_train(model, data, tmp_path / "ok", "--passage-max-len", str(limit))  # precondition: the limit itself trains
