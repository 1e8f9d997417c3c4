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
])
def test_deepspeed_config_contradicting_the_cli_is_refused(config, message):
    with pytest.raises(SystemExit, match=message):
        resolve_deepspeed_config({"zero_optimization": {"stage": 2}, **config}, **LIMITS)


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
    ({"torch_autocast": {"enabled": "auto", "dtype": "float16"}}, "bf16", "only bfloat16 is supported"),
    ({"torch_autocast": {"enabled": "yes"}}, "bf16", "must be true, false or"),
])
def test_deepspeed_torch_autocast_contradictions_are_refused(config, precision, message):
    with pytest.raises(SystemExit, match=message):
        resolve_deepspeed_config(config, **{**LIMITS, "mixed_precision": precision})
