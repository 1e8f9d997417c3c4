"""A tiny model folder and BGE-style training file for end-to-end train.py runs in the tests (seconds on CPU).

Dropout is 0 in the saved model so runs that draw random numbers in different orders (DDP vs DeepSpeed,
plain vs GradCache) still compute the same function and can be compared step by step.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from models.bi_encoder import BiEncoder, EncoderSettings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def torchrun(script_and_args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """2 real processes on CPU (gloo); raises with the output if any fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *script_and_args]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}")
    return res


def losses(out: str) -> list[float]:
    with open(os.path.join(out, "train_log.json"), encoding="utf-8") as f:
        return [h["loss"] for h in json.load(f) if "loss" in h]
