"""--output-dir belongs to one run: checked before anything loads, claimed (train_config.json) before training.

A folder holding another run — its train_config.json, or the config in one of its checkpoints, differs in a
setting that changes what is computed (training/checkpoint.py FREE_TO_CHANGE lists the others) — is refused
unless --overwrite-output-dir (which deletes that run's checkpoints and best/ first, so `latest` can never pick
one of them) or --resume-from-checkpoint (which checks the checkpoint's settings itself; `latest` with no
checkpoint yet is a fresh start and checked here). Without this the new
run silently replaced the old one's model, and their checkpoints mixed in one folder.
"""
from __future__ import annotations

import json
import os
import re
import shutil

from storage.folders import OutputError, check_not_inside, lies_inside, listing
from training.checkpoint import STATE_FILE, changed_settings, complete_checkpoints

CONFIG_FILE = "train_config.json"


def check_output_dir(output_dir: str, config: dict, overwrite: bool, resume: str | None) -> None:
    """SystemExit when output_dir is a file, cannot be written, is or lies inside an input (the base model, a
    training file), holds files train.py did not write, or holds another run. config: asdict(TrainConfig)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise SystemExit(f"--output-dir {output_dir}: is a file, not a folder")
    inputs = [("--model", config["model"]), ("--from-config", config["from_config"]),
              *(("--train-data", p) for p in config["train_data"]), ("--eval-sts", config["eval_sts"]),
              ("--deepspeed", config["deepspeed"])]
    try:
        check_not_inside(output_dir, inputs)
    except OutputError as e:
        raise SystemExit(f"--output-dir {e}") from None
    if overwrite:  # it deletes the old run's checkpoints and best/: none may hold an input
        for name, path in inputs:
            for folder in _replaced_folders(output_dir):
                if path and os.path.exists(path) and lies_inside(path, folder):
                    raise SystemExit(f"--overwrite-output-dir would delete {folder}, which holds {name} {path}; "
                                     "copy it elsewhere first, or choose another --output-dir")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not _holds_a_run(output_dir):
        raise SystemExit(f"--output-dir {output_dir}: holds files train.py did not write ({listing(output_dir)}); "
                         "nothing in it is overwritten. Choose a new or empty folder")
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, f".write-test-{os.getpid()}")
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as e:
        raise SystemExit(f"--output-dir {output_dir}: cannot write there ({e.strerror})") from None
    if overwrite or (resume and (resume != "latest" or complete_checkpoints(output_dir))):
        return  # a resumed run's settings are checked against its checkpoint
    config = json.loads(json.dumps(config))  # the form it has once saved (tuples as lists)
    for saved, where in _saved_configs(output_dir):
        changed = changed_settings(saved, config, where)
        if changed:
            raise SystemExit(f"--output-dir {output_dir} holds another run, with other settings:\n  "
                             + "\n  ".join(changed[:8]) + ("\n  ..." if len(changed) > 8 else "")
                             + "\nchoose another --output-dir, pass --overwrite-output-dir to replace that run, or "
                               "--resume-from-checkpoint latest to continue it with its settings")


def claim_output_dir(output_dir: str, config: dict, overwrite: bool) -> None:
    """Main process, before training: with --overwrite-output-dir delete the previous run's checkpoints and best/;
    write this run's train_config.json (rewritten at the end), so a run killed before its first checkpoint is
    recognised too."""
    if overwrite:
        for folder in _replaced_folders(output_dir):
            shutil.rmtree(folder)
    with open(os.path.join(output_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)


def _replaced_folders(output_dir: str) -> list[str]:
    """What --overwrite-output-dir deletes: the previous run's checkpoints (complete or partial) and best/."""
    if not os.path.isdir(output_dir):
        return []
    return [os.path.join(output_dir, n) for n in sorted(os.listdir(output_dir))
            if re.fullmatch(r"checkpoint-\d+(\.partial)?|best(\.partial)?", n)
            and os.path.isdir(os.path.join(output_dir, n))]


def _holds_a_run(output_dir: str) -> bool:
    """A train.py run's folder: its train_config.json, or one of its checkpoints."""
    return os.path.isfile(os.path.join(output_dir, CONFIG_FILE)) or any(
        re.fullmatch(r"checkpoint-\d+(\.partial)?", n) for n in os.listdir(output_dir))


def _saved_configs(output_dir: str):
    """(config, where) of the run(s) already in output_dir: train_config.json and every checkpoint's."""
    paths = [os.path.join(output_dir, CONFIG_FILE)]
    paths += [os.path.join(folder, STATE_FILE) for _, folder in complete_checkpoints(output_dir)]
    for path in paths:
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--output-dir: cannot read {path} ({e}); is this folder another run?") from None
        saved = saved.get("config", {}) if path.endswith(STATE_FILE) else saved
        if isinstance(saved, dict):
            yield saved, path
