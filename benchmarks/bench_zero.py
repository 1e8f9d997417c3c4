"""GradCache under DDP and DeepSpeed ZeRO-1/2/3: throughput and the collectives of one optimizer step.

    python -m benchmarks.bench_zero                          # every arm, 2 CPU processes (gloo), 4 chunks per step
    python -m benchmarks.bench_zero --chunks 2 4 16 --arms ddp+gradcache zero1+gradcache zero2+gradcache
    python -m benchmarks.bench_zero --nproc 2                # on 2 GPUs: NCCL, bf16 autocast

Every arm trains the same model (a random BERT of MiniLM's width: 2 layers on CPU, MiniLM's 6 on GPU) on the same
random token batches, same global batch (--nproc × --batch-size query/passage pairs) and, with GradCache, the same
chunk size, through train.py's own step: `training.accelerator.build_accelerator` (with the shipped
configs/deepspeed/zero{1,2,3}.json), `training.step.train_step`, train.py's AdamW and schedule, clipping as train.py
clips. "chunks per step" counts GradCache's pieces of one micro-batch, queries and passages chunked separately, so
2 is the fewest (one chunk per side). Each arm is its own `torchrun` launch (accelerate holds one set-up per
process); a GradCache arm measures every --chunks value in turn on the same engine. Arms are launched --rounds
times, round-robin, and the fastest round counts: on a shared machine a busy minute then slows one round of every
arm rather than all of one arm.

Per arm: pairs/s over the timed steps, and per optimizer step the number of calls and the payload bytes of
all_gather / reduce_scatter / all_reduce / broadcast (benchmarks/collectives.py wraps torch.distributed, so
DeepSpeed's, DDP's and our embedding gather's collectives are all counted). For DDP arms the bench also checks
that DDP all-reduced one bucket set per step: bucket bytes = every trainable gradient once. The last lines give
each arm's throughput over DDP + GradCache's in the same run, one line an arm.

Arms are the ARMS table: a DeepSpeed config (None = DDP), GradCache on or off, and `adapt`, how the arm changes the
model before training (None = full fine-tuning); the lora-zero3 arms add rank-8 LoRA adapters (models/lora.py) to
the same random BERT, base frozen, so only the adapters' gradients are reduced.
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
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def with_lora(model):
    """LoRA as train.py adds it (models/lora.py, --lora-rank 8 on BERT's default targets): the base frozen."""
    from models.family import default_lora_targets
    from models.lora import add_lora

    model.backbone = add_lora(model.backbone, rank=8, alpha=16.0, dropout=0.0,
                              targets=default_lora_targets(model.backbone.config), modules_to_save=[])
    return model


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
    "lora-zero3": Arm("configs/deepspeed/zero3.json", False, with_lora),
    "lora-zero3+gradcache": Arm("configs/deepspeed/zero3.json", True, with_lora),
}
REFERENCE = "ddp+gradcache"
KINDS = ("all_gather", "reduce_scatter", "all_reduce", "broadcast")


def model_config(args):
    """A random BERT: MiniLM's width (every weight matrix above ZeRO-3's default persistence threshold of 1e5
    elements, so ZeRO-3 really partitions them), --layers deep."""
    from transformers import BertConfig

    return BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                      num_attention_heads=max(1, args.hidden // 64), intermediate_size=4 * args.hidden)


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

    from losses import build_loss
    from models.bi_encoder import BiEncoder
    from models.settings import EncoderSettings
    from training.accelerator import build_accelerator, finish
    from training.config import OptimConfig, OutputConfig
    from training.optimizer import build_optimizer
    from training.step import train_step
    from training.step_guard import clip_gradients

    arm = ARMS[args.arm]
    cuda = torch.cuda.is_available()
    cfg = OptimConfig(batch_size=args.batch_size, mixed_precision="auto",
                      deepspeed=os.path.join(REPO, arm.deepspeed) if arm.deepspeed else None)
    with tempfile.TemporaryDirectory() as out:
        accelerator, precision = build_accelerator(cfg, OutputConfig(output_dir=out, report_to="none"))
    torch.manual_seed(0)
    config = model_config(args)
    model = BiEncoder(BertModel(config, add_pooling_layer=False), None, EncoderSettings())
    if arm.adapt:
        model = arm.adapt(model)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    loss_fn = build_loss("infonce", dim=model.dim, temperature=0.02)
    optimizer, scheduler = build_optimizer(model.named_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           warmup_ratio=cfg.warmup_ratio,
                                           total_steps=(args.warmup_steps + args.steps) * len(args.chunks))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        counter.count_ddp_buckets(model)
    model.train()
    gen = torch.Generator().manual_seed(1000 + accelerator.process_index)  # each rank its own rows, every arm alike

    def tokens(length: int) -> dict:
        ids = torch.randint(min(1000, config.vocab_size - 1), config.vocab_size, (args.batch_size, length),
                            generator=gen)
        return {"input_ids": ids.to(accelerator.device), "attention_mask": torch.ones_like(ids).to(accelerator.device)}

    def batch() -> dict:
        return {"query": tokens(args.query_len), "passage": tokens(args.passage_len)}

    gather = accelerator.num_processes > 1
    results = []
    for chunks in (args.chunks if arm.grad_cache else [None]):  # one engine, every chunk count in turn
        chunk = chunk_size(args.batch_size, chunks) if chunks else 0

        def step(batch, chunk=chunk) -> torch.Tensor:  # train.py's loop body, without logging and finiteness guard
            with accelerator.accumulate(model):
                loss = train_step(accelerator, model, loss_fn, batch, gather, chunk)
                clip_gradients(accelerator, [model], cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            return loss

        batches = [batch() for _ in range(args.warmup_steps + args.steps)]
        for b in batches[:args.warmup_steps]:
            step(b)
        if cuda:
            torch.cuda.synchronize()
        if dist.is_initialized():
            dist.barrier()
        counter.reset()
        start = time.perf_counter()
        for b in batches[args.warmup_steps:]:
            loss = step(b)
        loss = loss.item()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        per_step = {k: {"calls": v["calls"] / args.steps, "bytes": v["bytes"] / args.steps}
                    for k, v in counter.snapshot().items()}
        results.append({"arm": args.arm, "chunks": chunks, "chunk_size": chunk, "precision": precision,
                        "world": accelerator.num_processes, "seconds_per_step": seconds / args.steps,
                        "pairs_per_s": args.steps * args.batch_size * accelerator.num_processes / seconds,
                        "per_step": per_step, "trainable_bytes": trainable, "last_loss": loss,
                        "device": torch.cuda.get_device_name() if cuda else "cpu"})
    if accelerator.is_main_process:
        with open(args.result, "w", encoding="utf-8") as f:
            json.dump(results, f)
    finish(accelerator)


# ---------------------------------------------------------------- the launcher
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_arm(args, arm: str, result: str) -> list[dict]:
    """One torchrun launch of `arm` (every --chunks value in it, for GradCache arms) -> its results."""
    sizes = {"--batch-size": args.batch_size, "--query-len": args.query_len, "--passage-len": args.passage_len,
             "--steps": args.steps, "--warmup-steps": args.warmup_steps, "--hidden": args.hidden,
             "--layers": args.layers, "--vocab": args.vocab}
    worker = ["-m", "benchmarks.bench_zero", "--worker", arm, "--result", result, "--chunks", *map(str, args.chunks),
              *[str(x) for item in sizes.items() for x in item]]
    # the fault handler: a worker that aborts prints every thread's Python stack (an arm once ended in SIGABRT)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONFAULTHANDLER": "1"}
    if args.nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
               *worker]
    else:  # a world of one needs no launcher process, only its address
        cmd = [sys.executable, *worker]
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(free_port()))
    if not args.cuda:
        env["OMP_NUM_THREADS"] = str(args.threads)
    started = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=args.arm_timeout)
    if proc.returncode != 0 or not os.path.isfile(result):
        raise SystemExit(f"arm {arm} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    with open(result, encoding="utf-8") as f:
        out = json.load(f)
    for r in out:
        r["launch_seconds"] = time.perf_counter() - started
    return out


def label(r: dict, multi: bool) -> str:
    return r["arm"] + (f"@{r['chunks']}" if r["chunks"] and multi else "")


def ddp_check(r: dict, multi: bool) -> str | None:
    """DDP arms: one bucket set per step, i.e. bucket bytes = the trainable gradients' bytes, once."""
    if ARMS[r["arm"]].deepspeed is not None:
        return None
    b = r["per_step"]["ddp_buckets"]
    ok = abs(b["bytes"] - r["trainable_bytes"]) <= 0.001 * r["trainable_bytes"]
    return (f"{label(r, multi)}: DDP all-reduced {b['calls']:g} buckets per step, {b['bytes'] / 2**20:.2f} MiB = "
            f"{'every trainable gradient once' if ok else 'NOT the trainable gradients once'} "
            f"({r['trainable_bytes'] / 2**20:.2f} MiB)")


def report(args, results: list[dict], machine: str) -> list[str]:
    mib, multi = 2 ** 20, len(args.chunks) > 1
    lines = [f"machine: {machine}; load average {args.load}",
             (f"{args.nproc} processes ({'NCCL' if args.cuda else 'gloo'}), {results[0]['precision'].split(';')[0]}; "
              f"random BERT, hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; {args.batch_size} pairs "
              f"per process (global {args.batch_size * args.nproc}), query {args.query_len} + passage "
              f"{args.passage_len} tokens; {args.steps} timed steps after {args.warmup_steps}; the fastest of "
              f"{args.rounds} launches per arm"),
             "",
             "| arm | trained MiB | chunks per step (size) | pairs/s (each round) | s/step | " +
             " | ".join(f"{k} calls / MiB" for k in KINDS) + " |",
             "|---|---|---|---|---|" + "---|" * len(KINDS)]
    for r in results:
        chunks = f"{r['chunks']} ({r['chunk_size']})" if r["chunks"] else "—"
        comm = " | ".join(f"{r['per_step'][k]['calls']:g} / {r['per_step'][k]['bytes'] / mib:.2f}" for k in KINDS)
        rounds = r.get("rounds", [])
        each = f" ({', '.join(f'{x:.1f}' for x in rounds)})" if len(rounds) > 1 else ""
        lines.append(f"| {r['arm']} | {r['trainable_bytes'] / mib:.2f} | {chunks} | {r['pairs_per_s']:.1f}{each} | "
                     f"{r['seconds_per_step']:.2f} | {comm} |")
    lines.append("")
    lines += [c for r in results if (c := ddp_check(r, multi))]
    refs = {r["chunks"]: r for r in results if r["arm"] == REFERENCE}
    for r in results:
        ref = refs.get(r["chunks"]) or refs.get(args.chunks[0])
        if ref is not None and r is not ref:
            lines.append(f"{label(r, multi)}: {r['pairs_per_s'] / ref['pairs_per_s']:.2f}× "
                         f"DDP+GradCache{'@' + str(ref['chunks']) if multi else ''}")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), help=f"from {', '.join(ARMS)}")
    ap.add_argument("--chunks", type=int, nargs="+", default=[4], help="GradCache chunks per step (queries + "
                    "passages, each side chunked alike: even, ≥ 2); GradCache arms measure each value in turn")
    ap.add_argument("--nproc", type=int, default=2, help="processes (on GPU: one per GPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="pairs per process (default 32 CPU, 256 GPU)")
    ap.add_argument("--query-len", type=int, default=None, help="tokens per query (default 16 CPU, 32 GPU)")
    ap.add_argument("--passage-len", type=int, default=None, help="tokens per passage (default 32 CPU, 128 GPU)")
    ap.add_argument("--hidden", type=int, default=384, help="model width (MiniLM's)")
    ap.add_argument("--layers", type=int, default=None, help="layers (default 2 CPU, 6 GPU = MiniLM's shape)")
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per arm and chunk count")
    ap.add_argument("--warmup-steps", type=int, default=1, help="untimed steps first (allocator, ZeRO-3 trace)")
    ap.add_argument("--rounds", type=int, default=1, help="launches of each arm, round-robin; the fastest counts "
                    "(more guard against a busy minute on a shared machine; each adds a launch of every arm)")
    ap.add_argument("--threads", type=int, default=1, help="CPU: torch threads per process")
    ap.add_argument("--arm-timeout", type=int, default=900, help="seconds before an arm's launch is abandoned")
    ap.add_argument("--json", default=None, help="write every arm's result here")
    ap.add_argument("--worker", choices=list(ARMS), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import torch

    args.cuda = torch.cuda.is_available()
    for name, gpu, cpu in (("batch_size", 256, 32), ("query_len", 32, 16), ("passage_len", 128, 32), ("layers", 6, 2)):
        if getattr(args, name) is None:
            setattr(args, name, gpu if args.cuda else cpu)
    for value, name in ((args.nproc, "--nproc"), (args.steps, "--steps"), (args.batch_size, "--batch-size"),
                        (args.rounds, "--rounds"),
                        (args.hidden, "--hidden"), (args.layers, "--layers"), (args.vocab, "--vocab"),
                        (args.query_len, "--query-len"), (args.passage_len, "--passage-len")):
        if value < 1:
            raise SystemExit(f"{name} {value}: must be ≥ 1")
    if args.warmup_steps < 0:
        raise SystemExit(f"--warmup-steps {args.warmup_steps}: must be ≥ 0")
    for chunks in args.chunks:
        chunk_size(args.batch_size, chunks)
    if args.worker:
        args.arm = args.worker
        worker(args)
        return
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms {' '.join(unknown)}: unknown; choose from {', '.join(ARMS)}")
    if args.cuda and torch.cuda.device_count() < args.nproc:
        raise SystemExit(f"--nproc {args.nproc}: only {torch.cuda.device_count()} GPU(s); NCCL needs one per process")
    from benchmarks.machine import describe_machine

    args.load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    best, failed = {}, []  # (arm, chunks) -> its fastest round
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):  # round-robin: a busy minute on a shared machine hits one round, not one arm
            for arm in args.arms:
                if any(f.startswith(f"{arm}:") for f in failed):
                    continue
                try:
                    runs = run_arm(args, arm, os.path.join(tmp, f"{arm}.json"))
                except (SystemExit, subprocess.TimeoutExpired) as e:  # recorded; the other arms still run
                    print(e, file=sys.stderr, flush=True)
                    why = f"timed out after {e.timeout:.0f} s" if isinstance(e, subprocess.TimeoutExpired) else \
                        str(e).splitlines()[0]
                    failed.append(f"{arm}: failed: {why}")
                    continue
                for r in runs:
                    key = (r["arm"], r["chunks"])
                    r["rounds"] = best.get(key, {}).get("rounds", []) + [r["pairs_per_s"]]
                    if key not in best or r["pairs_per_s"] > best[key]["pairs_per_s"]:
                        best[key] = r
                    best[key]["rounds"] = r["rounds"]
                    print(f"round {round_ + 1}: {label(r, True)}: {r['pairs_per_s']:.1f} pairs/s "
                          f"({r['launch_seconds']:.0f} s launch)", file=sys.stderr, flush=True)
    results = list(best.values())
    args.load += " → " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    if not results:
        raise SystemExit("every arm failed:\n" + "\n".join(failed))
    lines = report(args, results, describe_machine()) + failed
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": describe_machine(), "load": args.load, "args": vars(args), "results": results,
                       "report": lines}, f, indent=2)


if __name__ == "__main__":
    main()
