"""GradCache under DDP and DeepSpeed ZeRO-1/2/3: throughput and the collectives of one optimizer step.

    python -m benchmarks.bench_zero                          # every arm, 2 CPU processes (gloo), 4 chunks per step
    python -m benchmarks.bench_zero --chunks 2 4 16 --arms ddp+gradcache zero1+gradcache zero2+gradcache
    python -m benchmarks.bench_zero --nproc 2                # on 2 GPUs: NCCL, bf16 autocast

Every arm trains the same model (a random BERT; BERT-tiny dimensions on CPU, MiniLM's on GPU) on the same random
token batches, same global batch (--nproc × --batch-size query/passage pairs) and, with GradCache, the same chunk
size, through train.py's own step: `training.accelerator.build_accelerator` (with the shipped
configs/deepspeed/zero{1,2,3}.json), `training.step.train_step`, train.py's AdamW and schedule, clipping as train.py
clips. "chunks per step" counts GradCache's pieces of one micro-batch, queries and passages chunked separately, so
2 is the fewest (one chunk per side). Each arm is its own `torchrun` launch (accelerate holds one set-up per
process).

Per arm: pairs/s over the timed steps, and per optimizer step the number of calls and the payload bytes of
all_gather / reduce_scatter / all_reduce / broadcast (benchmarks/collectives.py wraps torch.distributed, so
DeepSpeed's, DDP's and our embedding gather's collectives are all counted). For DDP arms the bench also checks
that DDP all-reduced one bucket set per step: bucket bytes = every trainable gradient once. The last lines give
each arm's throughput over DDP + GradCache's in the same run, one line an arm.

Arms are the ARMS table: a DeepSpeed config (None = DDP), GradCache on or off, and `adapt`, how the arm changes the
model before training (None = full fine-tuning). LoRA on ZeRO-3 ± GradCache is added there, with LoRA, as two
lines whose `adapt` applies it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Arm:
    deepspeed: str | None  # DeepSpeed JSON under configs/deepspeed/, None = DDP
    grad_cache: bool
    adapt: Callable | None = None  # model -> model before training (e.g. LoRA); None = all weights trained


ARMS = {
    "ddp": Arm(None, False),
    "ddp+gradcache": Arm(None, True),
    "zero1": Arm("configs/deepspeed/zero1.json", False),
    "zero1+gradcache": Arm("configs/deepspeed/zero1.json", True),
    "zero2": Arm("configs/deepspeed/zero2.json", False),
    "zero2+gradcache": Arm("configs/deepspeed/zero2.json", True),
    "zero3": Arm("configs/deepspeed/zero3.json", False),
    "zero3+gradcache": Arm("configs/deepspeed/zero3.json", True),
}
REFERENCE = "ddp+gradcache"
KINDS = ("all_gather", "reduce_scatter", "all_reduce", "broadcast")


def model_config(cuda: bool):
    from transformers import BertConfig

    if cuda:  # all-MiniLM-L6-v2's shape
        return BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                          intermediate_size=1536)
    return BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=512)


def chunk_size(batch_size: int, chunks: int) -> int:
    """Chunk size giving `chunks` GradCache pieces per micro-batch of batch_size queries + batch_size passages."""
    if chunks < 2 or chunks % 2 or batch_size % (chunks // 2):
        raise SystemExit(f"--chunks {chunks}: must be even, ≥ 2 (queries and passages are chunked separately) and "
                         f"its half must divide --batch-size {batch_size}")
    return batch_size // (chunks // 2)


# ---------------------------------------------------------------- one arm, inside each torchrun process
def worker(args) -> None:
    from benchmarks.collectives import CollectiveCounter

    counter = CollectiveCounter().install()  # before DeepSpeed starts: its backend keeps function handles
    import torch
    import torch.distributed as dist
    from transformers import BertModel

    import train
    from losses import build_loss
    from models.bi_encoder import BiEncoder, EncoderSettings
    from training.accelerator import build_accelerator
    from training.optimizer import build_optimizer
    from training.step import train_step
    from training.step_guard import clip_gradients

    arm = ARMS[args.arm]
    cuda = torch.cuda.is_available()
    steps = args.warmup_steps + args.steps
    with tempfile.TemporaryDirectory() as out:
        cfg = train.TrainConfig(model="random", train_data=["random"], batch_size=args.batch_size,
                                deepspeed=os.path.join(REPO, arm.deepspeed) if arm.deepspeed else None,
                                mixed_precision="auto", max_steps=steps, output_dir=out, report_to="none")
        accelerator, precision = build_accelerator(cfg)
    torch.manual_seed(0)
    config = model_config(cuda)
    model = BiEncoder(BertModel(config, add_pooling_layer=False), None, EncoderSettings())
    if arm.adapt:
        model = arm.adapt(model)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    loss_fn = build_loss("infonce", dim=model.dim, temperature=0.02)
    optimizer, scheduler = build_optimizer(model.named_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           warmup_ratio=cfg.warmup_ratio, total_steps=steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        counter.count_ddp_buckets(model)
    model.train()
    gen = torch.Generator().manual_seed(1000 + accelerator.process_index)  # each rank its own rows, every arm alike

    def tokens(length: int) -> dict:
        ids = torch.randint(1000, config.vocab_size, (args.batch_size, length), generator=gen)
        return {"input_ids": ids.to(accelerator.device), "attention_mask": torch.ones_like(ids).to(accelerator.device)}

    batches = [{"query": tokens(args.query_len), "passage": tokens(args.passage_len)} for _ in range(steps)]
    chunk = chunk_size(args.batch_size, args.chunks) if arm.grad_cache else 0
    gather = accelerator.num_processes > 1

    def step(batch) -> torch.Tensor:  # train.py's loop body, without logging and the finiteness guard
        with accelerator.accumulate(model):
            loss = train_step(accelerator, model, loss_fn, batch, gather, chunk)
            clip_gradients(accelerator, [model], cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        return loss

    for batch in batches[:args.warmup_steps]:
        step(batch)
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    counter.reset()
    start = time.perf_counter()
    for batch in batches[args.warmup_steps:]:
        loss = step(batch)
    loss = loss.item()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    per_step = {k: {"calls": v["calls"] / args.steps, "bytes": v["bytes"] / args.steps}
                for k, v in counter.snapshot().items()}
    if accelerator.is_main_process:
        result = {"arm": args.arm, "chunks": args.chunks if chunk else None, "chunk_size": chunk,
                  "precision": precision, "world": accelerator.num_processes, "seconds_per_step": seconds / args.steps,
                  "pairs_per_s": args.steps * args.batch_size * accelerator.num_processes / seconds,
                  "per_step": per_step, "trainable_bytes": trainable, "last_loss": loss,
                  "device": torch.cuda.get_device_name() if cuda else "cpu"}
        with open(args.result, "w", encoding="utf-8") as f:
            json.dump(result, f)
    accelerator.end_training()


# ---------------------------------------------------------------- the launcher
def run_arm(args, arm: str, chunks: int, result: str) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
           "-m", "benchmarks.bench_zero", "--worker", arm, "--result", result, "--chunks", str(chunks),
           "--batch-size", str(args.batch_size), "--query-len", str(args.query_len),
           "--passage-len", str(args.passage_len), "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if not args.cuda:
        env["OMP_NUM_THREADS"] = str(args.threads)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=args.arm_timeout)
    if proc.returncode != 0 or not os.path.isfile(result):
        raise SystemExit(f"arm {arm} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    with open(result, encoding="utf-8") as f:
        out = json.load(f)
    out["launch_seconds"] = time.perf_counter() - started
    return out


def label(r: dict) -> str:
    return r["arm"] + (f"@{r['chunks']}" if r["chunks"] is not None and r["multi"] else "")


def ddp_check(r: dict) -> str | None:
    """DDP arms: one bucket set per step, i.e. bucket bytes = the trainable gradients' bytes, once."""
    if ARMS[r["arm"]].deepspeed is not None:
        return None
    b = r["per_step"]["ddp_buckets"]
    ok = abs(b["bytes"] - r["trainable_bytes"]) <= 0.001 * r["trainable_bytes"]
    return (f"{label(r)}: DDP all-reduced {b['calls']:g} buckets per step, {b['bytes'] / 2**20:.2f} MiB = "
            f"{'every trainable gradient once' if ok else 'NOT the trainable gradients once'} "
            f"({r['trainable_bytes'] / 2**20:.2f} MiB)")


def report(args, results: list[dict], machine: str) -> list[str]:
    mib = 2 ** 20
    lines = [f"machine: {machine}; load average {args.load}",
             f"{args.nproc} processes ({'NCCL' if args.cuda else 'gloo'}), {results[0]['precision']}; batch "
             f"{args.batch_size} pairs per process (global {args.batch_size * args.nproc}), query {args.query_len} + "
             f"passage {args.passage_len} tokens; {args.steps} timed steps after {args.warmup_steps}", "",
             "| arm | chunks per step (size) | pairs/s | s/step | " +
             " | ".join(f"{k} calls / MiB" for k in KINDS) + " |",
             "|---|---|---|---|" + "---|" * len(KINDS)]
    for r in results:
        chunks = f"{r['chunks']} ({r['chunk_size']})" if r["chunks"] else "—"
        comm = " | ".join(f"{r['per_step'][k]['calls']:g} / {r['per_step'][k]['bytes'] / mib:.2f}" for k in KINDS)
        lines.append(f"| {r['arm']} | {chunks} | {r['pairs_per_s']:.1f} | {r['seconds_per_step']:.2f} | {comm} |")
    lines.append("")
    lines += [c for r in results if (c := ddp_check(r))]
    refs = {r["chunks"]: r for r in results if r["arm"] == REFERENCE}
    for r in results:
        ref = refs.get(r["chunks"]) or refs.get(args.chunks[0])
        if ref is not None and r is not ref:
            lines.append(f"{label(r)}: {r['pairs_per_s'] / ref['pairs_per_s']:.2f}× DDP+GradCache"
                         f"{'@' + str(ref['chunks']) if r['multi'] else ''}")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), help=f"from {', '.join(ARMS)}")
    ap.add_argument("--chunks", type=int, nargs="+", default=[4], help="GradCache chunks per step (queries + "
                    "passages, each side chunked alike: even, ≥ 2); GradCache arms run once per value")
    ap.add_argument("--nproc", type=int, default=2, help="processes (on GPU: one per GPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="pairs per process (default 32 CPU, 256 GPU)")
    ap.add_argument("--query-len", type=int, default=None, help="tokens per query (default 16 CPU, 32 GPU)")
    ap.add_argument("--passage-len", type=int, default=None, help="tokens per passage (default 32 CPU, 128 GPU)")
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per arm")
    ap.add_argument("--warmup-steps", type=int, default=2, help="untimed steps first (allocator, ZeRO-3 trace)")
    ap.add_argument("--threads", type=int, default=1, help="CPU: torch threads per process")
    ap.add_argument("--arm-timeout", type=int, default=900, help="seconds before an arm's launch is abandoned")
    ap.add_argument("--json", default=None, help="write every arm's result here")
    ap.add_argument("--worker", choices=list(ARMS), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import torch

    args.cuda = torch.cuda.is_available()
    args.batch_size = args.batch_size or (256 if args.cuda else 32)
    args.query_len = args.query_len or (32 if args.cuda else 16)
    args.passage_len = args.passage_len or (128 if args.cuda else 32)
    if args.worker:
        args.arm, args.chunks = args.worker, args.chunks[0]
        worker(args)
        return
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms {' '.join(unknown)}: unknown; choose from {', '.join(ARMS)}")
    for n, name in ((args.nproc, "--nproc"), (args.steps, "--steps"), (args.batch_size, "--batch-size")):
        if n < 1:
            raise SystemExit(f"{name} {n}: must be ≥ 1")
    for chunks in args.chunks:
        chunk_size(args.batch_size, chunks)
    if args.cuda and torch.cuda.device_count() < args.nproc:
        raise SystemExit(f"--nproc {args.nproc}: only {torch.cuda.device_count()} GPU(s); NCCL needs one per process")
    from benchmarks.machine import describe_machine

    args.load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    multi = len(args.chunks) > 1
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms:
            for chunks in (args.chunks if ARMS[arm].grad_cache else args.chunks[:1]):
                r = run_arm(args, arm, chunks, os.path.join(tmp, f"{arm}-{chunks}.json"))
                r["multi"] = multi
                results.append(r)
                print(f"{label(r)}: {r['pairs_per_s']:.1f} pairs/s ({r['launch_seconds']:.0f} s launch)",
                      file=sys.stderr, flush=True)
    args.load += " → " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = report(args, results, describe_machine())
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": describe_machine(), "load": args.load, "args": {k: v for k, v in vars(args).items()},
                       "results": results, "report": lines}, f, indent=2)


if __name__ == "__main__":
    main()
