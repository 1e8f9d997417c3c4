"""Finding the checkpoint a run continues from, and loading it (training/checkpoint.py writes them): shared by
train.py and pretrain.py."""
from __future__ import annotations

import json
import math
import os

from training.checkpoint import check_random_states, check_same_run, find_checkpoint, read_trainer_state


def find_resume(output, config: dict, log):
    """(checkpoint folder, its trainer state) for --resume-from-checkpoint, or (None, None); a checkpoint written
    with other settings is refused here, before anything loads. output: OutputConfig; config: the run's flat
    options."""
    spec = output.resume_from_checkpoint
    resume = find_checkpoint(spec, output.output_dir) if spec else None
    if resume is None:
        if output.resume_from_checkpoint:
            log(f"--resume-from-checkpoint latest: no checkpoint in {output.output_dir} yet, starting at step 0")
        return None, None
    resumed = read_trainer_state(resume)
    check_same_run(resumed["config"], json.loads(json.dumps(config)), resume)
    return resume, resumed


def restore(accelerator, sampler, resume: str, resumed: dict, batches_per_epoch: int, allow_inexact: bool):
    """Load a checkpoint into the prepared objects and the sampler -> (step, best, history, (epoch, batch) to start)."""
    state = os.path.join(resume, "state")
    check_random_states(accelerator, state, allow_inexact)  # accelerate skips bad ones silently
    accelerator.load_state(state)  # weights, optimizer, schedule, RNG of every process
    check_random_states(accelerator, state, allow_inexact, restored=True)
    try:
        sampler.load_state_dict(resumed["sampler"])  # refuses other data / buckets / global batch
    except ValueError as e:
        raise SystemExit(f"--resume-from-checkpoint {resume}: {e}") from None
    step, history = resumed["step"], resumed["history"]
    best = -math.inf if resumed["best"] is None else resumed["best"]
    start = (sampler.epoch, sampler.start_batch) if sampler.start_batch < batches_per_epoch else (sampler.epoch + 1, 0)
    accelerator.print(f"resumed from {resume}: step {step}, epoch {start[0]}, batch {start[1]}")
    return step, best, history, start
