"""Accelerate / DeepSpeed set-up for train.py: precision, the DeepSpeed config filled from the command line, and
the Accelerator itself. What the set-up decided is returned so train.py can log it in one line.

--ddp-timeout bounds every collective (DDP and DeepSpeed alike, gloo and NCCL): when one process stalls (stopped,
swapping, a hung file system) the others raise after that many seconds instead of torch's default 30 minutes
in silence, and the launcher takes the run down (tests/test_reliability.py stops one of 2 workers with SIGSTOP).
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DeepSpeedPlugin, DistributedType, InitProcessGroupKwargs

from training.deepspeed_config import load_deepspeed_config, resolve_deepspeed_config, uses_torch_autocast


def resolve_precision(mixed_precision: str) -> str:
    """--mixed-precision auto -> bf16 on a GPU that has it, else no."""
    if mixed_precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return mixed_precision


def build_accelerator(cfg, output) -> tuple[Accelerator, str]:
    """-> (accelerator, precision description for the log). cfg: training.config.OptimConfig, output: OutputConfig."""
    mixed = resolve_precision(cfg.mixed_precision)
    ds_limits = dict(batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                     max_grad_norm=cfg.max_grad_norm, mixed_precision=mixed,
                     world_size=int(os.environ.get("WORLD_SIZE", "1")))
    ds_plugin, accelerate_precision = None, mixed
    if cfg.deepspeed:  # else `accelerate launch` with a DeepSpeed accelerate config may still switch it on
        ds_config = resolve_deepspeed_config(load_deepspeed_config(cfg.deepspeed), source=cfg.deepspeed, **ds_limits)
        if ds_config.get("torch_autocast", {}).get("enabled"):
            accelerate_precision = "no"  # the engine autocasts its forward; accelerate's bf16 would cast the module
        ds_plugin = DeepSpeedPlugin(hf_ds_config=ds_config, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                                    gradient_clipping=cfg.max_grad_norm)
    use_deepspeed = ds_plugin is not None or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    # DeepSpeed on CPU (the tests): cpu=True would drop DeepSpeed, and without a named backend accelerate counts
    # one process while DeepSpeed runs gloo over all of them
    cpu_deepspeed = use_deepspeed and not torch.cuda.is_available()
    accelerator = Accelerator(cpu=not torch.cuda.is_available() and not use_deepspeed,
                              mixed_precision=accelerate_precision, deepspeed_plugin=ds_plugin,
                              kwargs_handlers=[InitProcessGroupKwargs(backend="gloo" if cpu_deepspeed else None,
                                                                      timeout=timedelta(seconds=cfg.ddp_timeout))],
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              # train.py never has accelerate prepare a DataLoader; split_batches=True only makes the
                              # prepared LR scheduler step once per optimizer step (without it accelerate steps it
                              # num_processes times, and a 2-process run reached lr 0 halfway through)
                              dataloader_config=DataLoaderConfiguration(split_batches=True),
                              log_with=None if output.report_to == "none" else output.report_to,
                              project_dir=os.path.join(output.output_dir, "runs"))
    if uses_deepspeed(accelerator) and ds_plugin is None:  # config from `accelerate launch`: same checks, in place
        plugin = accelerator.state.deepspeed_plugin
        if uses_torch_autocast(plugin.deepspeed_config, mixed, "the accelerate DeepSpeed config"):
            raise SystemExit("torch_autocast: pass the DeepSpeed JSON with --deepspeed; through an accelerate config "
                             "accelerate switches on DeepSpeed's bf16 mode itself")
        plugin.deepspeed_config.update(resolve_deepspeed_config(
            plugin.deepspeed_config, source="the accelerate DeepSpeed config",
            **{**ds_limits, "world_size": accelerator.num_processes}))
    precision = mixed + (" (DeepSpeed torch_autocast: fp32 weights)" if accelerate_precision != mixed else "")
    if uses_deepspeed(accelerator):
        precision += f"; DeepSpeed ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}"
    return accelerator, precision


def uses_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def finish(accelerator: Accelerator) -> None:
    """End the run on every process together: trackers closed, a last barrier, then the process group torn down
    before the interpreter exits. Left to interpreter exit, a process whose peer already closed its gloo
    connections could abort in teardown ("terminate called without an active exception", exit -6) after a
    complete run; a CI run of the 2-process ZeRO-3 resume test did."""
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()
