"""One LoRA training step of a random-weight Gemma2-9B-shaped bi-encoder: peak memory and pairs/s.

    python -m benchmarks.bench_lora_big               # GPU: Gemma2-9B's shape, bf16 weights, LoRA rank 16, GradCache
    python -m benchmarks.bench_lora_big --shape tiny  # CPU: a 2-layer Gemma2 of the same form (gpu_suite --dry-run)

The model is built as train.py builds a decoder embedder with --lora-rank (models/lora.py `add_lora` on the
decoder targets of models/family.py, gradient checkpointing, last-token pooling), from a config alone: no weights
are read, so no download is needed. The step is train.py's (`training.step.train_step` with GradCache, AdamW over
the adapters). Prints `RESULT {json}`: seconds per step, pairs/s, peak memory (CUDA allocated, or RSS on CPU), the
trained and frozen parameter counts.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

# Gemma2-9B (google/gemma-2-9b config.json), and a toy of the same family for CPU runs
SHAPES = {
    "gemma2-9b": {"hidden_size": 3584, "num_hidden_layers": 42, "intermediate_size": 14336, "num_attention_heads": 16,
                  "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 256000, "query_pre_attn_scalar": 256,
                  "sliding_window": 4096},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 2,
             "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 1000, "query_pre_attn_scalar": 32,
             "sliding_window": 64},
}


def build(shape: str, rank: int, device: str):
    """-> (BiEncoder with LoRA adapters, its config): random weights, bf16 on a GPU, fp32 on CPU."""
    import torch
    from transformers import Gemma2Config, Gemma2Model

    from models.bi_encoder import BiEncoder
    from models.family import attention_for, default_lora_targets
    from models.lora import add_lora
    from models.settings import EncoderSettings

    config = Gemma2Config(**SHAPES[shape])
    attention, _ = attention_for(config, "sdpa")  # as train.py: eager where the family cannot run SDPA (Gemma2)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # built where it runs: 9B fp32 weights would not fit on the host first
        backbone = Gemma2Model._from_config(config, attn_implementation=attention, dtype=dtype)
    model = BiEncoder(backbone, None, EncoderSettings(pooling="last"))
    model.backbone = add_lora(model.backbone, rank=rank, alpha=2.0 * rank, dropout=0.0,
                              targets=default_lora_targets(config), modules_to_save=[])
    model.gradient_checkpointing_enable()
    return model, config


def one_run(args) -> dict:
    import torch
    from accelerate import Accelerator

    from losses import build_loss
    from training.step import train_step

    cuda = args.device == "cuda"
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no")
    model, config = build(args.shape, args.rank, args.device)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    loss_fn = build_loss("infonce", dim=model.dim, temperature=0.02)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    gen = torch.Generator().manual_seed(0)

    def tokens(length: int) -> dict:
        ids = torch.randint(10, config.vocab_size, (args.batch, length), generator=gen).to(accelerator.device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def step() -> float:
        batch = {"query": tokens(args.query_len), "passage": tokens(args.passage_len)}
        loss = train_step(accelerator, model, loss_fn, batch, gather=False, grad_cache_chunk=args.chunk)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up (allocator, kernels); its peak counts too
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / max(args.steps, 1)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"shape": args.shape, "attention": config._attn_implementation, "rank": args.rank, "batch": args.batch,
            "chunk": args.chunk, "query_len": args.query_len, "passage_len": args.passage_len,
            "trained_parameters": trained, "frozen_parameters": frozen, "seconds_per_step": seconds,
            "pairs_per_s": args.batch / seconds, "peak_bytes": peak, "last_loss": loss,
            "device": torch.cuda.get_device_name() if cuda else "cpu"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="gemma2-9b")
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when there is one")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank (α = 2 × rank)")
    ap.add_argument("--batch", type=int, default=256, help="query/passage pairs per step")
    ap.add_argument("--chunk", type=int, default=32, help="GradCache chunk (sequences); 0 = off")
    ap.add_argument("--query-len", type=int, default=32)
    ap.add_argument("--passage-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    args = ap.parse_args(argv)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_lora_big: --device cuda, but no CUDA GPU is visible")
    for value, name in ((args.rank, "--rank"), (args.batch, "--batch"), (args.query_len, "--query-len"),
                        (args.passage_len, "--passage-len")):
        if value < 1:
            raise SystemExit(f"{name} {value}: must be ≥ 1")
    if args.chunk < 0 or args.chunk > args.batch:
        raise SystemExit(f"--chunk {args.chunk}: must be between 0 (off) and --batch {args.batch}")
    if args.steps < 0:
        raise SystemExit(f"--steps {args.steps}: must be ≥ 0")
    print("RESULT " + json.dumps(one_run(args)), flush=True)


if __name__ == "__main__":
    main()
