"""Reconcile a DeepSpeed JSON config with train.py's command line: fill its "auto" values, refuse contradictions.

train.py owns the batch size, accumulation, clipping, precision, optimizer and schedule; the DeepSpeed file owns
the ZeRO stage and its knobs (configs/deepspeed/zero{1,2,3}.json). A value both set differently is an error,
never silently one or the other:

    train_micro_batch_size_per_gpu = --batch-size
    gradient_accumulation_steps   = --gradient-accumulation-steps
    train_batch_size              = --batch-size × --gradient-accumulation-steps × world size
    gradient_clipping             = --max-grad-norm
    bf16/fp16.enabled             = --mixed-precision
    torch_autocast.enabled/dtype  = --mixed-precision bf16 (then bf16/fp16.enabled = false)
No "optimizer" / "scheduler" sections: train.py builds AdamW and the linear schedule and hands them to DeepSpeed.

Two ways to train in bf16 under DeepSpeed. The shipped configs (configs/deepspeed/zero{1,2,3}.json) have a
`"torch_autocast": {"enabled": "auto"}` section: the weights stay fp32 and the engine runs its forward under
`torch.autocast(bfloat16)` — what train.py does without DeepSpeed, with its losses and updates up to bf16
rounding (ZeRO-2, 3: tests/test_distributed.py) — at the cost of fp32 parameters in memory (4 bytes, not 2, before
ZeRO-3 partitions them). The memory-lean option, configs/deepspeed/zero{1,2,3}_bf16_lean.json, is DeepSpeed's
`bf16` mode: it casts the module to bf16, so the pretrained weights are rounded once at start, and keeps fp32
master weights in the optimizer; updates below half a bf16 step reach the forward pass late
(training/master_weights.py; on an H100 a ZeRO-2 run's loss was 7.28 against 5.92 without DeepSpeed at step 3).
A config asking for both (bf16/fp16.enabled true while torch_autocast is on) is refused.
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
    if uses_torch_autocast(config, mixed_precision, source):
        config["torch_autocast"] = {**config["torch_autocast"], "enabled": True, "dtype": "bfloat16"}
        for dtype in ("bf16", "fp16"):
            if config.get(dtype, {}).get("enabled", "auto") not in ("auto", False):
                raise SystemExit(f"{source}: {dtype}.enabled and torch_autocast.enabled are both on; set "
                                 f"{dtype}.enabled to \"auto\" (torch_autocast keeps the weights fp32)")
            config[dtype] = {**config.get(dtype, {}), "enabled": False}
    else:
        if "torch_autocast" in config:  # off; its dtype filled too, or accelerate refuses the leftover "auto"
            config["torch_autocast"] = {**config["torch_autocast"], "enabled": False, "dtype": "bfloat16"}
        for dtype in ("bf16", "fp16"):
            enabled = config.get(dtype, {}).get("enabled", "auto")
            if enabled != "auto" and bool(enabled) != (mixed_precision == dtype):
                raise SystemExit(f"{source}: {dtype}.enabled = {enabled} contradicts --mixed-precision "
                                 f"{mixed_precision}; set it to \"auto\"")
    zero = config.setdefault("zero_optimization", {"stage": 0})
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise SystemExit(f"{source}: zero_optimization.stage = {stage!r}: ZeRO has stages 0, 1, 2 and 3")
    if stage == 3:
        zero.setdefault("stage3_gather_16bit_weights_on_model_save", True)
    return config


def uses_torch_autocast(config: dict, mixed_precision: str, source: str = "the DeepSpeed config") -> bool:
    """Whether the config's torch_autocast section is on for this --mixed-precision ("auto": on for bf16)."""
    enabled = config.get("torch_autocast", {}).get("enabled", False)
    dtype = config.get("torch_autocast", {}).get("dtype", "auto")
    if enabled is False:
        return False
    if enabled not in ("auto", True):
        raise SystemExit(f"{source}: torch_autocast.enabled must be true, false or \"auto\", got {enabled!r}")
    if dtype not in ("auto", "bfloat16", "bf16"):
        raise SystemExit(f"{source}: torch_autocast.dtype {dtype!r}: only bfloat16 is supported (DeepSpeed has no "
                         f"loss scaling for fp16 autocast under ZeRO); use \"auto\"")
    if mixed_precision == "bf16":
        return True
    if enabled is True:
        raise SystemExit(f"{source}: torch_autocast.enabled = true contradicts --mixed-precision {mixed_precision}; "
                         f"set it to \"auto\" or pass --mixed-precision bf16")
    return False
