"""training/deepspeed_config.py: a DeepSpeed JSON's "auto" fields filled from train.py's options, and every
contradiction between the two refused with the option to change (no processes, no DeepSpeed engine)."""
import json

import pytest

from tests.helpers import REPO
from training.deepspeed_config import resolve_deepspeed_config

LIMITS = dict(batch_size=8, gradient_accumulation_steps=2, max_grad_norm=1.0, mixed_precision="no", world_size=4)


def test_deepspeed_config_autos_are_filled_from_the_cli():
    with open(REPO / "configs" / "deepspeed" / "zero2.json", encoding="utf-8") as f:
        cfg = resolve_deepspeed_config(json.load(f), **LIMITS)
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["train_batch_size"],
            cfg["gradient_clipping"]) == (8, 2, 64, 1.0)
    z3 = resolve_deepspeed_config({"zero_optimization": {"stage": 3}}, **LIMITS)
    assert z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("config, message", [
    ({"train_micro_batch_size_per_gpu": 16}, "contradicts --batch-size"),
    ({"train_batch_size": 100}, "train_batch_size = 100 contradicts --batch-size 8"),
    ({"gradient_accumulation_steps": 1}, "contradicts --gradient-accumulation-steps"),
    ({"gradient_clipping": 0.5}, "contradicts --max-grad-norm"),
    ({"bf16": {"enabled": True}}, "contradicts --mixed-precision no"),
    ({"optimizer": {"type": "AdamW"}}, 'remove the "optimizer" section'),
    ({"zero_optimization": {"stage": 4}}, "zero_optimization.stage = 4: ZeRO has stages 0, 1, 2 and 3"),
    ({"zero_optimization": {"stage": -1}}, "zero_optimization.stage = -1: ZeRO has stages"),
    ({"zero_optimization": {"stage": "2"}}, "zero_optimization.stage = '2': ZeRO has stages"),
    ({"zero_optimization": {"stage": True}}, "zero_optimization.stage = True: ZeRO has stages"),
])
def test_deepspeed_config_contradicting_the_cli_is_refused(config, message):
    with pytest.raises(SystemExit, match=message):
        resolve_deepspeed_config({"zero_optimization": {"stage": 2}, **config}, **LIMITS)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_shipped_configs_are_exact_and_lean_ones_are_bf16_mode(stage):
    """zero{1,2,3}.json: fp32 weights + bf16 autocast under --mixed-precision bf16; zero{1,2,3}_bf16_lean.json:
    DeepSpeed's bf16 mode (bf16 module); both plain fp32 under --mixed-precision no."""
    def load(name):
        with open(REPO / "configs" / "deepspeed" / name, encoding="utf-8") as f:
            return json.load(f)

    exact, lean = load(f"zero{stage}.json"), load(f"zero{stage}_bf16_lean.json")
    assert exact["zero_optimization"] == lean["zero_optimization"] and exact["zero_optimization"]["stage"] == stage
    bf16 = {**LIMITS, "mixed_precision": "bf16"}
    on = resolve_deepspeed_config(exact, **bf16)
    assert on["torch_autocast"]["enabled"] is True and on["bf16"]["enabled"] is False
    lean_on = resolve_deepspeed_config(lean, **bf16)
    assert "torch_autocast" not in lean_on and lean_on["bf16"]["enabled"] == "auto"  # accelerate: True under bf16
    off = resolve_deepspeed_config(exact, **LIMITS)
    assert off["torch_autocast"]["enabled"] is False


def test_deepspeed_torch_autocast_follows_mixed_precision():
    section = {"torch_autocast": {"enabled": "auto", "dtype": "auto"}, "bf16": {"enabled": "auto"}}
    on = resolve_deepspeed_config(section, **{**LIMITS, "mixed_precision": "bf16"})
    assert on["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert on["bf16"]["enabled"] is False and on["fp16"]["enabled"] is False  # weights stay fp32
    off = resolve_deepspeed_config(section, **LIMITS)  # --mixed-precision no
    assert off["torch_autocast"]["enabled"] is False and off["bf16"]["enabled"] == "auto"


@pytest.mark.parametrize("config, precision, message", [
    ({"torch_autocast": {"enabled": True}}, "no", "torch_autocast.enabled = true contradicts --mixed-precision no"),
    ({"torch_autocast": {"enabled": True}, "bf16": {"enabled": True}}, "bf16", "both on"),
    ({"torch_autocast": {"enabled": "auto"}, "bf16": {"enabled": True}}, "bf16", "bf16.enabled and torch_autocast"),
    ({"torch_autocast": {"enabled": "auto"}, "fp16": {"enabled": True}}, "bf16", "fp16.enabled and torch_autocast"),
    ({"torch_autocast": {"enabled": "auto", "dtype": "float16"}}, "bf16", "only bfloat16 is supported"),
    ({"torch_autocast": {"enabled": "yes"}}, "bf16", "must be true, false or"),
])
def test_deepspeed_torch_autocast_contradictions_are_refused(config, precision, message):
    with pytest.raises(SystemExit, match=message):
        resolve_deepspeed_config(config, **{**LIMITS, "mixed_precision": precision})
