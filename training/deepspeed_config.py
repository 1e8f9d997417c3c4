"""Reconcile a DeepSpeed JSON config with train.py's command line: fill its "auto" values, refuse contradictions.

train.py owns the batch size, accumulation, clipping, precision, optimizer and schedule; the DeepSpeed file owns
the ZeRO stage and its knobs (configs/deepspeed/zero{1,2,3}.json). A value both set differently is an error,
never silently one or the other:

    train_micro_batch_size_per_gpu = --batch-size
    gradient_accumulation_steps   = --gradient-accumulation-steps
    train_batch_size              = --batch-size × --gradient-accumulation-steps × world size
    gradient_clipping             = --max-grad-norm
    bf16/fp16.enabled             = --mixed-precision
No "optimizer" / "scheduler" sections: train.py builds AdamW and the linear schedule and hands them to DeepSpeed.
ZeRO-3: `stage3_gather_16bit_weights_on_model_save` defaults to true so the final folder holds full weights.
"""
from __future__ import annotations

import copy
import json


def load_deepspeed_config(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"--deepspeed {path}: cannot read the DeepSpeed config: {e}") from None


def resolve_deepspeed_config(config: dict, *, batch_size: int, gradient_accumulation_steps: int,
                             max_grad_norm: float, mixed_precision: str, world_size: int,
                             source: str = "the DeepSpeed config") -> dict:
    """Return a copy of `config` with every "auto" filled from the CLI; SystemExit naming both values on conflict."""
    config = copy.deepcopy(config)
    expected = {
        "train_micro_batch_size_per_gpu": (batch_size, "--batch-size"),
        "gradient_accumulation_steps": (gradient_accumulation_steps, "--gradient-accumulation-steps"),
        "train_batch_size": (batch_size * gradient_accumulation_steps * world_size,
                             f"--batch-size {batch_size} × --gradient-accumulation-steps "
                             f"{gradient_accumulation_steps} × {world_size} processes"),
        "gradient_clipping": (max_grad_norm, "--max-grad-norm"),
    }
    for key, (value, flag) in expected.items():
        given = config.get(key, "auto")
        if given == "auto":
            config[key] = value
        elif float(given) != float(value):
            raise SystemExit(f"{source}: {key} = {given} contradicts {flag} ({value}); set it to \"auto\" "
                             f"(train.py fills it) or change the flag")
    for name in ("optimizer", "scheduler"):
        if name in config:
            raise SystemExit(f"{source}: remove the \"{name}\" section; train.py builds AdamW and the linear "
                             f"warm-up/decay schedule from --lr / --weight-decay / --warmup-ratio")
    for dtype in ("bf16", "fp16"):
        enabled = config.get(dtype, {}).get("enabled", "auto")
        if enabled != "auto" and bool(enabled) != (mixed_precision == dtype):
            raise SystemExit(f"{source}: {dtype}.enabled = {enabled} contradicts --mixed-precision "
                             f"{mixed_precision}; set it to \"auto\"")
    zero = config.setdefault("zero_optimization", {"stage": 0})
    if zero.get("stage", 0) == 3:
        zero.setdefault("stage3_gather_16bit_weights_on_model_save", True)
    return config
