"""train.py with its free-space check turned off, as if another program filled the disk just after it: run by
tests/test_nothing_lost.py inside a small tmpfs, so the save itself meets the full disk. Prints how full the disk
was when training stopped ("filled: ..."), then exits as train.py would."""
from __future__ import annotations

import os
import shutil
import sys

import train
import training.checkpoint
from cli_config import parse_config

training.checkpoint.check_free_space = lambda path, estimate, what: None

if __name__ == "__main__":
    config = parse_config(train.TrainConfig, sys.argv[1:])
    try:
        train.main(config)
    finally:
        usage = shutil.disk_usage(os.path.dirname(os.path.abspath(config.output.output_dir)))
        print(f"filled: {usage.used} of {usage.total} bytes used, {usage.free} free", flush=True)
