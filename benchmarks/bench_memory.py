"""Peak memory and throughput of one training step vs global batch size, with and without GradCache.

    python -m benchmarks.bench_memory                       # CPU: BERT-tiny-sized model, batches 256/1024/4096
    python -m benchmarks.bench_memory --device cuda         # GPU: BERT-base, bf16, batches up to 16384, + tokens/s, MFU
    python -m benchmarks.bench_memory --batches 1024 65536 --no-uncached --loss-tile 1024 --steps 0
                                                            # the batch ceiling with GradCache + the tiled loss

Each (batch, GradCache on/off) runs in a fresh subprocess, because peak RSS (ru_maxrss) never goes down within one.
The step is train.py's: `training.step.train_step` (InfoNCE on query/positive pairs, dropout on) + AdamW, single
process (global batch = process batch); with --loss-tile N the InfoNCE is losses/tiled.py's, tiles of N × N
(never the batch × batch matrix). Reported per configuration:
  - peak memory: CUDA max_memory_allocated on GPU; peak RSS of the process on CPU, and the part of it the step
    added on top of the model + optimizer + batch already in memory ("step extra");
  - pairs/s (and tokens/s) over the timed steps after one warm-up step (--steps 0: the one step, warm-up
    costs included, for batches where one step takes minutes);
  - GPU only: MFU = 6·N·tokens/s + attention (12·layers·hidden·seq·tokens/s) over --peak-tflops (×4/3 with
    GradCache's extra forward not counted as useful work).
--attn picks the attention implementation (sdpa, eager, flash_attention_2 with the flash-attn package) and --compile
runs the backbone under torch.compile (benchmarks/gpu_suite.py reports the fastest for MFU).
CPU: the subprocesses run with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_, --malloc-mmap-threshold):
with glibc's default dynamic threshold, the thousands of chunk forwards/backwards of a 65,536-pair GradCache step
leave the freed activation blocks in a fragmented heap, and RSS grows with the number of chunks although no
tensor does (measured: see benchmarks/README.md). 0 keeps glibc's default.
Prints a Markdown table and writes --json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from benchmarks.machine import describe_machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def model_config(device: str):
    from transformers import BertConfig

    if device == "cuda":  # BERT-base
        return BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                          intermediate_size=3072)
    return BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=512)  # BERT-tiny dimensions: 4096 pairs fit a 2-core CPU in seconds


def one_run(args) -> dict:
    """Runs inside the subprocess: build, warm up, time, measure."""
    import torch
    from accelerate import Accelerator
    from transformers import BertModel

    from losses import build_loss
    from losses.registry import tiled_form
    from models.bi_encoder import BiEncoder
    from models.settings import EncoderSettings
    from training.step import train_step

    cuda = args.device == "cuda"
    if not cuda:
        torch.set_num_threads(args.threads)
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no")
    torch.manual_seed(0)
    config = model_config(args.device)
    backbone = BertModel._from_config(config, attn_implementation=args.attn, add_pooling_layer=False)
    model = BiEncoder(backbone, None, EncoderSettings()).to(accelerator.device)
    if args.compile:  # the backbone only: GradCache's chunk shapes make it recompile once per shape
        model.backbone = torch.compile(model.backbone, dynamic=False)
    loss_fn = build_loss("infonce", dim=model.dim, temperature=0.02)
    if args.loss_tile:
        loss_fn = tiled_form("infonce", loss_fn, args.loss_tile)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    gen = torch.Generator().manual_seed(0)

    def tokens(n, length):
        ids = torch.randint(1000, config.vocab_size, (n, length), generator=gen)
        return {"input_ids": ids.to(accelerator.device), "attention_mask": torch.ones_like(ids).to(accelerator.device)}

    batch = {"query": tokens(args.batch, args.query_len), "passage": tokens(args.batch, args.passage_len)}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def step():
        loss = train_step(accelerator, model, loss_fn, batch, gather=False, grad_cache_chunk=args.chunk)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    start = time.perf_counter()
    loss = step()  # warm-up (allocator, AdamW state); the timed step itself with --steps 0
    if args.steps:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
    loss.item()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / max(args.steps, 1)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tokens_per_step = args.batch * (args.query_len + args.passage_len)
    out = {"batch": args.batch, "chunk": args.chunk, "loss_tile": args.loss_tile, "attn": args.attn,
           "compile": args.compile, "seconds_per_step": seconds, "pairs_per_s": args.batch / seconds,
           "tokens_per_s": tokens_per_step / seconds, "peak_bytes": peak, "step_extra_bytes": peak - base}
    if cuda:
        n_params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
        seq = (args.query_len + args.passage_len) / 2
        flops_per_token = 6 * n_params + 12 * config.num_hidden_layers * config.hidden_size * seq
        out["mfu"] = flops_per_token * out["tokens_per_s"] / (args.peak_tflops * 1e12) if args.peak_tflops else None
        out["gpu"] = torch.cuda.get_device_name()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=None,
                    help="global batch sizes (default 256 1024 4096, + 16384 on cuda)")
    ap.add_argument("--chunk", type=int, default=None, help="GradCache chunk in sequences (default 128 cpu, 512 cuda)")
    ap.add_argument("--query-len", type=int, default=None, help="tokens per query (default 16 cpu, 32 cuda)")
    ap.add_argument("--passage-len", type=int, default=None, help="tokens per passage (default 32 cpu, 128 cuda)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step (0: time that one step)")
    ap.add_argument("--loss-tile", type=int, default=0, help="tiled InfoNCE (losses/tiled.py) with tiles of N × N; "
                    "0 = the dense loss")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads on CPU")
    ap.add_argument("--attn", choices=["sdpa", "eager", "flash_attention_2"], default="sdpa",
                    help="attention implementation (flash_attention_2 needs the flash-attn package)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    ap.add_argument("--peak-tflops", type=float, default=None, help="accelerator peak bf16 TFLOP/s for MFU "
                    f"(default from the GPU name: {PEAK_TFLOPS})")
    ap.add_argument("--no-uncached", action="store_true", help="skip the runs without GradCache (they may not fit)")
    ap.add_argument("--json", default=None, help="write all results here")
    ap.add_argument("--malloc-mmap-threshold", type=int, default=131072, help="CPU: glibc MALLOC_MMAP_THRESHOLD_ for "
                    "the runs, in bytes (0 = glibc's dynamic default)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cuda = args.device == "cuda"
    args.chunk = args.chunk if args.chunk is not None else (512 if cuda else 128)
    args.query_len = args.query_len or (32 if cuda else 16)
    args.passage_len = args.passage_len or (128 if cuda else 32)
    if args.one:
        print("RESULT " + json.dumps(one_run(args)), flush=True)
        return
    if cuda and args.peak_tflops is None:
        import torch

        name = torch.cuda.get_device_name()
        args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    batches = args.batches or ([256, 1024, 4096, 16384] if cuda else [256, 1024, 4096])
    results = []
    for batch in batches:
        for chunk in ([0] if not args.no_uncached else []) + [args.chunk]:
            cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--one", "--device", args.device, "--batch",
                   str(batch), "--chunk", str(chunk), "--query-len", str(args.query_len),
                   "--passage-len", str(args.passage_len),
                   "--steps", str(args.steps), "--threads", str(args.threads), "--loss-tile", str(args.loss_tile),
                   "--attn", args.attn, *(["--compile"] if args.compile else [])]
            if args.peak_tflops:
                cmd += ["--peak-tflops", str(args.peak_tflops)]
            env = dict(os.environ)
            if not cuda and args.malloc_mmap_threshold:
                env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
            line = next((out_line for out_line in res.stdout.splitlines() if out_line.startswith("RESULT ")), None)
            if line is None:  # e.g. out of memory without GradCache: record it, go on
                err = (res.stderr.strip().splitlines() or ["no output"])[-1]
                results.append({"batch": batch, "chunk": chunk, "error": err[:200]})
                print(f"batch {batch} chunk {chunk}: failed: {err[:200]}", file=sys.stderr)
                continue
            results.append(json.loads(line[len("RESULT "):]))
            print(f"batch {batch} chunk {chunk}: {results[-1]}", file=sys.stderr)
    mib = 2 ** 20
    print(f"\nMachine: {describe_machine()}")
    mmap_note = (f"; MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold}" if not cuda and args.malloc_mmap_threshold
                 else "")
    print(f"Model: {model_config(args.device).num_hidden_layers} layers, "
          f"hidden {model_config(args.device).hidden_size}; "
          f"query {args.query_len} + passage {args.passage_len} tokens; "
          f"{f'tiled InfoNCE (tiles of {args.loss_tile})' if args.loss_tile else 'InfoNCE (dense)'}, AdamW; "
          f"GradCache chunk {args.chunk}; {args.steps or 'the warm-up'} timed step(s)"
          f"{mmap_note}\n")
    mem = "peak CUDA allocated (MiB)" if cuda else "peak RSS (MiB)"
    print(f"| global batch | GradCache | {mem} | step extra (MiB) | pairs/s | tokens/s |" + (" MFU |" if cuda else ""))
    print("|---|---|---|---|---|---|" + ("---|" if cuda else ""))
    for r in results:
        gc = f"chunk {r['chunk']}" if r["chunk"] else "off"
        if "error" in r:
            print(f"| {r['batch']} | {gc} | failed: {r['error']} | | | |" + (" |" if cuda else ""))
            continue
        row = (f"| {r['batch']} | {gc} | {r['peak_bytes'] / mib:.0f} | {r['step_extra_bytes'] / mib:.0f} | "
               f"{r['pairs_per_s']:.0f} | {r['tokens_per_s']:.0f} |")
        if cuda:
            row += f" {r['mfu']:.1%} |" if r.get("mfu") else " n/a |"
        print(row)
    by = {(r["batch"], r["chunk"]): r for r in results if "error" not in r}
    small, large = min(batches), max(batches)
    if (small, args.chunk) in by and (large, args.chunk) in by:
        a, b = by[(small, args.chunk)], by[(large, args.chunk)]
        print(f"\nGradCache peak({large}) / peak({small}) = {b['peak_bytes'] / a['peak_bytes']:.2f} "
              f"(step extra: {b['step_extra_bytes'] / max(a['step_extra_bytes'], 1):.2f})")
    for batch in batches:
        if (batch, 0) in by and (batch, args.chunk) in by:
            print(f"batch {batch}: GradCache throughput = "
                  f"{by[(batch, args.chunk)]['pairs_per_s'] / by[(batch, 0)]['pairs_per_s']:.0%}"
                  f" of uncached")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": describe_machine(), "args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
