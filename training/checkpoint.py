"""Saving models and checkpoints, and resuming a run exactly after it was killed (SIGKILL included).

checkpoint-<step>/ holds
  - the model files, loadable like the final folder (evaluate.py / SentenceTransformer read it as is);
  - state/: accelerate's `save_state` — weights, optimizer, LR schedule and every process's RNG states (torch,
    CUDA, numpy, random); under DeepSpeed the engine's own checkpoint;
  - trainer_state.json: step, the sampler's position (epoch, next batch, fingerprint of data and settings), the best
    evaluation score, the log so far, and the training config.
It is written as checkpoint-<step>.partial/ and renamed once complete, so a run killed while writing leaves no
folder that looks like a checkpoint; `--resume-from-checkpoint latest` takes the newest complete one. Before the
rename every file and folder is fsynced and manifest.json lists every file with its size (and the SHA-256 of the
small ones: RNG states, schedule, trainer state), so a power loss cannot leave a renamed-but-empty checkpoint.
Resuming checks the manifest first: a missing, truncated or altered file is refused by name (accelerate would
skip a missing RNG file with an INFO line and resume not quite exactly), and with `latest` the run falls back to
the previous complete checkpoint with a warning.

No weights with NaN / inf are ever written, as a checkpoint or as the final model (`save_model` refuses).

Why the resumed run is the uninterrupted one, batch for batch and dropout mask for dropout mask: the sampler's
batches are a pure function of (data, settings, seed, epoch) and it restarts at (epoch, next batch); each
example's negatives are seeded by (seed, epoch, index); dropout draws from the torch RNG, restored from state/
(the DataLoader has a generator of its own, so starting its iterator does not draw from the global one); the
settings that shape the trajectory must equal the checkpoint's (`check_same_run`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys

import torch
from accelerate.utils import DistributedType

from training.master_weights import with_fp32_master_weights

STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
HASHED_UP_TO = 16 * 2**20  # bytes: files this small also get a SHA-256 in the manifest (RNG states, schedule)
# Settings a resumed run may change: they decide where results go and what is logged, not what is computed.
FREE_TO_CHANGE = {"output_dir", "resume_from_checkpoint", "save_steps", "save_total_limit", "log_steps",
                  "report_to", "num_workers", "eval_sts", "eval_steps", "overwrite_output_dir", "max_bad_steps",
                  "ddp_timeout"}


def save_model(accelerator, model, folder: str) -> None:
    """Write a loadable folder; under DeepSpeed ZeRO-3 the full weights are gathered first, and under DeepSpeed
    bf16/fp16 the optimizer's fp32 master weights are saved, not the module's rounded 16-bit copy."""
    state_dict = accelerator.get_state_dict(model)  # collective: every process must call it
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        state_dict = with_fp32_master_weights(accelerator.unwrap_model(model), state_dict)  # collective too
    refuse_non_finite(accelerator, state_dict, folder)  # collective
    if accelerator.is_main_process:
        prefix = "backbone."
        accelerator.unwrap_model(model).save(
            folder, state_dict={k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})
    accelerator.wait_for_everyone()


def write_run_record(folder: str, config: dict, history: list) -> None:
    """train_config.json (the settings) and train_log.json (losses and evaluations by step) beside the model."""
    for name, obj in (("train_config.json", config), ("train_log.json", history)):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)


def refuse_non_finite(accelerator, state_dict: dict | None, folder: str) -> None:
    """SystemExit on every process when the main process's state_dict holds NaN / inf (it is the complete one)."""
    bad = []
    if accelerator.is_main_process:
        bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    count = accelerator.reduce(torch.tensor(float(len(bad)), device=accelerator.device), reduction="sum").item()
    if count:
        found = complete_checkpoints(folder) or complete_checkpoints(os.path.dirname(os.path.abspath(folder)))
        shown = f" ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})" if bad else ""
        raise SystemExit(f"{folder}: not written: {int(count)} of the model's weight tensors hold NaN or inf{shown}. "
                         + (f"The last checkpoint is {found[-1][1]}." if found else "") + " Lower --lr or check "
                         "the data; --max-bad-steps stops a run whose steps go non-finite.")


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
    fsync_tree(partial, others_writing=True)  # each process flushes what it sees, its own files among them
    accelerator.wait_for_everyone()  # each process writes its own RNG file; rename only once all are written
    if accelerator.is_main_process:
        with open(os.path.join(partial, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump({"step": step, **trainer_state}, f, indent=1, ensure_ascii=False)
        write_manifest(partial)
        fsync_tree(partial)
        if os.path.exists(final):
            shutil.rmtree(final)  # the same step saved again by a resumed run
        os.replace(partial, final)
        fsync_path(output_dir)  # the rename itself
        if keep > 0:
            for _, old in complete_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str, others_writing: bool = False) -> None:
    """Flush every file and folder under `folder` (folders last: their entries must point at flushed files).
    others_writing: other processes may still be saving into `folder`, so a file listed a moment ago (their
    temporary file, renamed since) can be gone; it is skipped (the main process flushes the finished tree)."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            try:
                fsync_path(os.path.join(root, name))
            except FileNotFoundError:
                if not others_writing:
                    raise
        fsync_path(root)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str) -> None:
    """manifest.json: {relative path: {size, sha256 for small files}} of every file in the folder."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            files[os.path.relpath(path, folder)] = {"size": size, **({"sha256": _sha256(path)} if size <= HASHED_UP_TO
                                                                     else {})}
    with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as f:
        json.dump({"files": files}, f, indent=1, sort_keys=True)


def checkpoint_problem(folder: str) -> str | None:
    """What is wrong with a checkpoint's files according to its manifest, or None when every file is as written."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return f"{path}: missing (the checkpoint was not written completely, or by a version without manifests)"
    try:
        with open(path, encoding="utf-8") as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{path}: unreadable ({e})"
    for name, want in sorted(files.items()):
        file = os.path.join(folder, name)
        try:
            size = os.path.getsize(file)
            if size != want["size"]:
                return f"{file}: {size} bytes, {want['size']} when the checkpoint was written (truncated or changed)"
            if "sha256" in want and _sha256(file) != want["sha256"]:
                return f"{file}: content differs from when the checkpoint was written (SHA-256 mismatch)"
        except OSError as e:
            return f"{file}: {'missing' if isinstance(e, FileNotFoundError) else 'unreadable'} ({e.strerror})"
    return None


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
        problems = []
        for _, folder in reversed(found):
            problem = checkpoint_problem(folder)
            if problem is None:
                if problems:
                    print(f"warning: --resume-from-checkpoint latest: skipped {len(problems)} newer checkpoint(s) "
                          f"whose files do not match their manifest:\n  " + "\n  ".join(problems) +
                          f"\nresuming from {folder}", file=sys.stderr, flush=True)
                return folder
            problems.append(problem)
        if problems:
            raise SystemExit(f"--resume-from-checkpoint latest: no intact checkpoint in {output_dir}:\n  "
                             + "\n  ".join(problems))
        return None
    if not os.path.isfile(os.path.join(spec, STATE_FILE)):
        raise SystemExit(f"--resume-from-checkpoint {spec}: not a checkpoint (no {STATE_FILE}); pass a "
                         f"checkpoint-<step> folder written by train.py, or 'latest'")
    problem = checkpoint_problem(spec)
    if problem:
        raise SystemExit(f"--resume-from-checkpoint {spec}: {problem}; resume from an earlier checkpoint")
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
    changed = changed_settings(saved_config, config, "the checkpoint")
    if changed:
        raise SystemExit(f"--resume-from-checkpoint {folder}: the run's settings differ, so it would not continue "
                         f"the same run:\n  " + "\n  ".join(changed) + f"\nresume with the checkpoint's settings, or "
                         f"start a new run from its weights (--model {folder}, another --output-dir)")


def changed_settings(saved_config: dict, config: dict, where: str) -> list[str]:
    """'--option: saved value in <where>, value now' for each setting that changes what is computed."""
    return [f"--{k.replace('_', '-')}: {saved_config[k]!r} in {where}, {config.get(k)!r} now"
            for k in sorted(saved_config) if k not in FREE_TO_CHANGE and saved_config[k] != config.get(k)]
