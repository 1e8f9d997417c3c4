"""The trained fp32 weights of a DeepSpeed bf16/fp16 run, for saving.

DeepSpeed's bf16 and fp16 modes cast the module itself to 16 bits and keep fp32 "master" copies in the optimizer
(partitioned across ranks under ZeRO). The 16-bit module lags the master weights: an update smaller than half a
bf16 step (2^-9 to 2^-8 of the weight's magnitude) does not change it until enough updates add up — with lr 2e-5,
99.7% of a small BERT's bf16 weights were still at their initial values after 4 steps while 99.997% of the master
weights had moved (tests/test_distributed.py). Saving `module.state_dict()` (what accelerate's
`get_state_dict` returns under ZeRO-1/2, and its 16-bit consolidation under ZeRO-3) would therefore write
rounded, partly stale weights. `deepspeed.utils.safe_get_full_fp32_param` assembles each master weight for
ZeRO-1, 2 and 3 alike; it is a collective, so every process calls this with the same parameters in the same order.
"""
from __future__ import annotations

import torch


def with_fp32_master_weights(module: torch.nn.Module, state_dict: dict[str, torch.Tensor] | None
                             ) -> dict[str, torch.Tensor] | None:
    """state_dict with every parameter that has an fp32 master copy replaced by that copy (on CPU), and the other
    floating-point entries (frozen parameters: no master copy; buffers) cast to fp32, so the folder has one dtype.

    Call on every process (collective); only the main process's state_dict needs to be complete (under ZeRO-3
    accelerate returns None on the others, and None comes back).
    """
    from deepspeed.utils import safe_get_full_fp32_param

    out = None if state_dict is None else {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    for name, param in module.named_parameters():
        if param.requires_grad:  # frozen parameters have no master copy
            master = safe_get_full_fp32_param(param)  # full shape, on the accelerator
            if master is not None and out is not None:
                out[name] = master.detach().to("cpu", torch.float32)
    return out
