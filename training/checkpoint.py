"""Saving models and checkpoints, and resuming a run exactly after it was killed (SIGKILL included).

checkpoint-<step>/ holds
  - the model files, loadable like the final folder (evaluate.py / SentenceTransformer read it as is);
  - state/: accelerate's `save_state` — weights, optimizer, LR schedule and every process's RNG states (torch,
    CUDA, numpy, random); under DeepSpeed the engine's own checkpoint;
  - trainer_state.json: step, the sampler's position (epoch, next batch, fingerprint of data and settings), the best
    evaluation score, the log so far, and the training config.
It is written as checkpoint-<step>.partial/ and renamed once complete, so a run killed while writing leaves no
folder that looks like a checkpoint; `--resume-from-checkpoint latest` takes the newest complete one.

Why the resumed run is the uninterrupted one, batch for batch and dropout mask for dropout mask: the sampler's
batches are a pure function of (data, settings, seed, epoch) and it restarts at (epoch, next batch); each
example's negatives are seeded by (seed, epoch, index); dropout draws from the torch RNG, restored from state/
(the DataLoader has a generator of its own, so starting its iterator does not draw from the global one); the
settings that shape the trajectory must equal the checkpoint's (`check_same_run`).
"""
from __future__ import annotations

import json
import os
import re
import shutil

from accelerate.utils import DistributedType

from training.master_weights import with_fp32_master_weights

STATE_FILE = "trainer_state.json"
# Settings a resumed run may change: they decide where results go and what is logged, not what is computed.
FREE_TO_CHANGE = {"output_dir", "resume_from_checkpoint", "save_steps", "save_total_limit", "log_steps",
                  "report_to", "num_workers", "eval_sts", "eval_steps"}


def save_model(accelerator, model, folder: str) -> None:
    """Write a loadable folder; under DeepSpeed ZeRO-3 the full weights are gathered first, and under DeepSpeed
    bf16/fp16 the optimizer's fp32 master weights are saved, not the module's rounded 16-bit copy."""
    state_dict = accelerator.get_state_dict(model)  # collective: every process must call it
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        state_dict = with_fp32_master_weights(accelerator.unwrap_model(model), state_dict)  # collective too
    if accelerator.is_main_process:
        prefix = "backbone."
        accelerator.unwrap_model(model).save(
            folder, state_dict={k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})
    accelerator.wait_for_everyone()


def save_checkpoint(accelerator, model, output_dir: str, step: int, trainer_state: dict, keep: int) -> str:
    """Write checkpoint-<step>/ (via .partial/, renamed when complete); keep the newest `keep` (0 = all)."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    partial = final + ".partial"
    if accelerator.is_main_process and os.path.exists(partial):
        shutil.rmtree(partial)  # left by a run killed while writing it
    accelerator.wait_for_everyone()
    save_model(accelerator, model, partial)
    os.makedirs(os.path.join(partial, "state"), exist_ok=True)  # by every process: under DeepSpeed all write into it
    accelerator.wait_for_everyone()
    accelerator.save_state(os.path.join(partial, "state"))
    accelerator.wait_for_everyone()  # each process writes its own RNG file; rename only once all are written
    if accelerator.is_main_process:
        with open(os.path.join(partial, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump({"step": step, **trainer_state}, f, indent=1, ensure_ascii=False)
        if os.path.exists(final):
            shutil.rmtree(final)  # the same step saved again by a resumed run
        os.replace(partial, final)
        if keep > 0:
            for _, old in complete_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def complete_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, folder) of every complete checkpoint in output_dir, oldest first (.partial folders are not)."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = re.fullmatch(r"checkpoint-(\d+)", name)
        if m and os.path.isfile(os.path.join(output_dir, name, STATE_FILE)):
            found.append((int(m.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def find_checkpoint(spec: str, output_dir: str) -> str | None:
    """--resume-from-checkpoint: a checkpoint folder, or "latest" = the newest complete one in output_dir (None
    when there is none yet, so a restarted job script can always pass "latest")."""
    if spec == "latest":
        found = complete_checkpoints(output_dir)
        return found[-1][1] if found else None
    if not os.path.isfile(os.path.join(spec, STATE_FILE)):
        raise SystemExit(f"--resume-from-checkpoint {spec}: not a checkpoint (no {STATE_FILE}); pass a "
                         f"checkpoint-<step> folder written by train.py, or 'latest'")
    return spec


def read_trainer_state(folder: str) -> dict:
    path = os.path.join(folder, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: cannot read the checkpoint's trainer state: {e}") from None


def check_same_run(saved_config: dict, config: dict, folder: str) -> None:
    """Refuse to resume with settings that change what is computed (lr, batch, data, loss, steps, seed, ...)."""
    changed = [f"--{k.replace('_', '-')}: {saved_config[k]!r} in the checkpoint, {config.get(k)!r} now"
               for k in sorted(saved_config) if k not in FREE_TO_CHANGE and saved_config[k] != config.get(k)]
    if changed:
        raise SystemExit(f"--resume-from-checkpoint {folder}: the run's settings differ, so it would not continue "
                         f"the same run:\n  " + "\n  ".join(changed) + f"\nresume with the checkpoint's settings, or "
                         f"start a new run from its weights (--model {folder}, another --output-dir)")
