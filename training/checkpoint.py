"""Saving models and checkpoints, and resuming a run exactly after it was killed (SIGKILL included).

checkpoint-<step>/ holds
  - the model files, loadable like the final folder (evaluate.py / SentenceTransformer read it as is);
  - state/: accelerate's `save_state` — weights, optimizer, LR schedule and every process's RNG states (torch,
    CUDA, numpy, random); under DeepSpeed the engine's own checkpoint;
  - trainer_state.json: step, the sampler's position (epoch, next batch, fingerprint of data and settings), the best
    evaluation score, the log so far, and the training config.
It is written as checkpoint-<step>.partial/ and renamed once complete, so a run killed while writing leaves no
folder that looks like a checkpoint; `--resume-from-checkpoint latest` takes the newest complete one. Before the
rename every file and folder is fsynced and manifest.json lists every file with its size and SHA-256, so a power
loss cannot leave a renamed-but-empty checkpoint. Resuming checks the manifest first: a missing, truncated or
altered file (one flipped byte in the weights included) is refused by name, and with `latest` the run falls back to
the previous complete checkpoint with a warning. Hashing streams every file once at save and once at resume, on up
to 4 threads (benchmarks/README.md: the cost on a BERT-base-sized checkpoint). A random-state file that does not
load is refused too (accelerate would log it at INFO and resume inexactly) unless --allow-inexact-resume.

Free space is checked before every save against the state's size (weights, their copy in state/, the optimizer's
tensors); a save that fails anyway for lack of space says "no space left on DEVICE", removes its partial folder and
leaves the previous checkpoints as they were.

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
import math
import os
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

import torch
from accelerate.utils import DistributedType

from storage.disk import check_free_space, no_space_message
from storage.folders import apply_umask
from training.master_weights import with_fp32_master_weights

STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
# Settings a resumed run may change: they decide where results go and what is logged, not what is computed.
FREE_TO_CHANGE = {"output_dir", "resume_from_checkpoint", "save_steps", "save_total_limit", "log_steps",
                  "report_to", "num_workers", "eval_sts", "eval_steps", "overwrite_output_dir", "max_bad_steps",
                  "ddp_timeout", "allow_inexact_resume", "merge_lora"}


def save_model(accelerator, model, folder: str, staged: bool = True, merge: bool = False) -> None:
    """Write a loadable folder; under DeepSpeed ZeRO-3 the full weights are gathered first, and under DeepSpeed
    bf16/fp16 the optimizer's fp32 master weights are saved, not the module's rounded 16-bit copy. A LoRA model is
    saved as its adapter folder, taken from those gathered weights (under ZeRO-3 the module's own tensors are empty
    partitions), or with merge=True merged into its base weights.

    staged: write into `<folder>.partial` (a checkpoint's own `.partial` folder is written directly) and move it into
    place when complete; `folder` may be the run's --output-dir, which keeps its checkpoints beside the model files.
    Free space is checked first, and a save that runs out of it stops every process with "no space left on ...",
    leaving no partial files (collective: every process calls it)."""
    estimate = model_bytes(model)
    check_free_space_everywhere(accelerator, folder, estimate, f"the model in {folder}")
    state_dict = accelerator.get_state_dict(model)  # collective: every process must call it
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        state_dict = with_fp32_master_weights(accelerator.unwrap_model(model), state_dict)  # collective too
    refuse_non_finite(accelerator, state_dict, folder)  # collective
    target = folder.rstrip(os.sep) + ".partial" if staged else folder
    failed = None
    if accelerator.is_main_process:
        prefix = "backbone."
        try:
            if staged and os.path.exists(target):
                shutil.rmtree(target)  # left by a run of this output folder killed while saving
            accelerator.unwrap_model(model).save(
                target, state_dict={k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)},
                merge=merge)
            apply_umask(target)
            if staged:
                move_into(target, folder)
        except Exception as e:  # noqa: BLE001 - any write error: agreed on below, then said once
            failed = e
    agree_on_write(accelerator, failed, target, folder, estimate, f"the model in {folder}")  # removes target if failed


def model_bytes(model) -> int:
    """Bytes of the model's weights as saved (fp32 masters under DeepSpeed; ZeRO-3 partitions counted whole)."""
    return sum(getattr(p, "ds_numel", p.numel()) * max(p.element_size(), 4) for p in model.parameters())


def checkpoint_bytes(model, optimizer, world_size: int) -> int:
    """A checkpoint's size: the model files, the same weights again in state/, and the optimizer's tensors
    (each process's partition under ZeRO, all of them on one file system in the worst case)."""
    optimizer_bytes = 0
    for state in getattr(optimizer, "state", {}).values():
        for v in state.values() if isinstance(state, dict) else ():
            if torch.is_tensor(v):
                optimizer_bytes += v.numel() * v.element_size()
    if optimizer_bytes == 0:  # before the first step (or a wrapper that hides its state): AdamW's two moments
        optimizer_bytes = 2 * model_bytes(model)
    return 2 * model_bytes(model) + optimizer_bytes * world_size


def check_free_space_everywhere(accelerator, folder: str, estimate: int, what: str) -> None:
    """SystemExit on every process when any of them lacks room for a save of about `estimate` bytes (collective)."""
    problem = check_free_space(folder, estimate, what)
    count = accelerator.reduce(torch.tensor(float(problem is not None), device=accelerator.device),
                               reduction="sum").item()
    if count:
        raise SystemExit((problem or f"another process has no space left for {what}") + ". " + _kept_hint(folder))


def agree_on_write(accelerator, failed: BaseException | None, partial: str | None, folder: str, estimate: int,
                   what: str) -> None:
    """After a write: every process learns whether any failed (collective); then, and only then (the others may
    still be writing into it until they reach this point), the partial folder is removed by the main process and by
    each failed one (their file systems may differ); a lack of space is said as such, any other error is raised on
    the process that had it."""
    message = None
    if failed is not None:
        message = no_space_message(failed, folder, estimate, what)  # read before the partial files are removed
    count = accelerator.reduce(torch.tensor(float(failed is not None), device=accelerator.device),
                               reduction="sum").item()
    if not count:
        accelerator.wait_for_everyone()
        return
    if partial and (failed is not None or accelerator.is_main_process) and os.path.exists(partial):
        shutil.rmtree(partial, ignore_errors=True)
    if failed is not None and message is None:
        raise failed
    raise SystemExit((message or f"another process failed to write {what}") + ". " + _kept_hint(folder))


def _kept_hint(folder: str) -> str:
    found = complete_checkpoints(folder) or complete_checkpoints(os.path.dirname(os.path.abspath(folder)))
    return (f"The last complete checkpoint is {found[-1][1]} (--resume-from-checkpoint latest)." if found else
            "No checkpoint was written before this one.")


def move_into(staging: str, folder: str) -> None:
    """Move every entry of a finished staging folder into folder (made if absent), replacing same-named model files
    of this run, then remove the staging folder. folder's other entries (checkpoints, logs) stay."""
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(staging):
        dest = os.path.join(folder, name)
        if os.path.isdir(dest) and not os.path.islink(dest):
            shutil.rmtree(dest)
        os.replace(os.path.join(staging, name), dest)
    os.rmdir(staging)


def write_run_record(folder: str, config: dict, history: list) -> None:
    """train_config.json (the settings) and train_log.json (losses and evaluations by step) beside the model.
    Strict JSON: a NaN or inf in the log (a skipped step's loss) is written as null."""
    for name, obj in (("train_config.json", config), ("train_log.json", strict_json(history))):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False, allow_nan=False)


def strict_json(obj):
    """obj with every non-finite float replaced by None (JSON has no NaN; Python's json writes a bare NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


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


def save_checkpoint(accelerator, model, optimizer, output_dir: str, step: int, trainer_state: dict, keep: int) -> str:
    """Write checkpoint-<step>/ (via .partial/, renamed when complete); keep the newest `keep` (0 = all). A save
    that would not fit, or runs out of space, stops the run with "no space left on ..." and removes its .partial;
    the previous checkpoints stay."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    partial = final + ".partial"
    what = f"checkpoint-{step}"
    estimate = checkpoint_bytes(model, optimizer, accelerator.num_processes)
    check_free_space_everywhere(accelerator, output_dir, estimate, what)
    if accelerator.is_main_process and os.path.exists(partial):
        shutil.rmtree(partial)  # left by a run killed while writing it
    accelerator.wait_for_everyone()
    save_model(accelerator, model, partial, staged=False)
    failed = None
    try:
        os.makedirs(os.path.join(partial, "state"), exist_ok=True)  # by every process: under DeepSpeed all write
    except OSError as e:
        failed = e
    accelerator.wait_for_everyone()
    try:
        if failed is None:
            accelerator.save_state(os.path.join(partial, "state"))
            apply_umask(os.path.join(partial, "state"), others_writing=True)  # the others may still be saving
            fsync_tree(partial, others_writing=True)  # each process flushes what it sees, its own files among them
    except Exception as e:  # noqa: BLE001 - agreed on below
        failed = e
    agree_on_write(accelerator, failed, partial, output_dir, estimate, what)  # all RNG files written, or stop
    if accelerator.is_main_process:
        try:
            with open(os.path.join(partial, STATE_FILE), "w", encoding="utf-8") as f:
                json.dump({"step": step, **strict_json(trainer_state)}, f, indent=1, ensure_ascii=False,
                          allow_nan=False)
            write_manifest(partial)
            fsync_tree(partial)
        except Exception as e:  # noqa: BLE001
            failed = e
    agree_on_write(accelerator, failed, partial, output_dir, estimate, what)
    if accelerator.is_main_process:
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
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_files(paths: list[str]) -> list[str]:
    """SHA-256 of each file, streamed, the big ones on threads of their own (hashlib releases the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        return list(pool.map(_sha256, paths))


def write_manifest(folder: str) -> None:
    """manifest.json: {relative path: {size, sha256}} of every file in the folder."""
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                   if os.path.join(root, name) != os.path.join(folder, MANIFEST))
    files = {os.path.relpath(p, folder): {"size": os.path.getsize(p), "sha256": digest}
             for p, digest in zip(paths, sha256_files(paths))}
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
    present = []
    for name, want in sorted(files.items()):
        file = os.path.join(folder, name)
        try:
            size = os.path.getsize(file)
        except OSError as e:
            return f"{file}: {'missing' if isinstance(e, FileNotFoundError) else 'unreadable'} ({e.strerror})"
        if size != want["size"]:
            return f"{file}: {size} bytes, {want['size']} when the checkpoint was written (truncated or changed)"
        if "sha256" in want:  # every file since issue 25; only files ≤ 16 MiB in older checkpoints
            present.append((file, want["sha256"]))
    try:
        digests = sha256_files([file for file, _ in present])
    except OSError as e:
        return f"{e.filename}: unreadable ({e.strerror})"
    for (file, want), have in zip(present, digests):
        if have != want:
            return f"{file}: content differs from when the checkpoint was written (SHA-256 mismatch)"
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


def load_random_states(state_dir: str, process_index: int):
    """This process's RNG states as accelerate saved them -> (states, None), or (None, why they do not load)."""
    from accelerate.utils import load
    from accelerate.utils.constants import RNG_STATE_NAME

    path = os.path.join(state_dir, f"{RNG_STATE_NAME}_{process_index}.pkl")
    try:
        states = load(path)
        if not isinstance(states["torch_manual_seed"], torch.Tensor):  # the one every run restores (dropout)
            raise TypeError("torch_manual_seed is not a tensor")
        return states, None
    except Exception as e:  # noqa: BLE001 - whatever fails here makes accelerate skip them silently
        return None, f"{path}: does not load ({type(e).__name__}: {str(e)[:200]})"


def check_random_states(accelerator, state_dir: str, allow_inexact: bool, restored: bool = False) -> None:
    """Collective. Before load_state: every process's RNG file loads; after it (restored=True): the torch RNG holds
    the saved state. accelerate only logs "Could not load random states" at INFO and goes on, and the resumed run
    then draws other dropout masks: refused unless allow_inexact (then a warning)."""
    states, problem = load_random_states(state_dir, accelerator.process_index)
    if problem is None and restored and not torch.equal(torch.get_rng_state(), states["torch_manual_seed"]):
        problem = f"{state_dir}: the random state of process {accelerator.process_index} was not restored"
    bad = accelerator.reduce(torch.tensor(float(problem is not None), device=accelerator.device),
                             reduction="sum").item()
    if not bad:
        return
    what = problem or f"the random states of {int(bad)} other process(es) do not load"
    if allow_inexact:
        print(f"warning: {what}; resuming anyway (--allow-inexact-resume): dropout and other random draws will "
              "differ from the uninterrupted run", file=sys.stderr, flush=True)
        return
    raise SystemExit(f"--resume-from-checkpoint: {what}, so the resumed run would not be the uninterrupted one. Resume "
                     "from an earlier checkpoint, or pass --allow-inexact-resume to continue with fresh random states")


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
