"""Run by tests/test_lora.py as `torchrun --nproc_per_node 2 -m tests.lora_naive_save_worker TRAIN_ARGS...` under
DeepSpeed ZeRO-3: train.py, with the model saved the way the peft / accelerate reports do it — `save_pretrained` of
the module's own tensors, not the state dict gathered before saving — to show what the gathering prevents."""
from __future__ import annotations

import sys

import train
from cli_config import parse_config
from models.bi_encoder import BiEncoder
from models.st_folder import save_folder


def save_own_tensors(self, folder: str, state_dict: dict | None = None, merge: bool = False) -> None:
    save_folder(self, folder, None, merge)  # state_dict dropped: the module's ZeRO-3 partitions are saved


if __name__ == "__main__":
    BiEncoder.save = save_own_tensors
    train.main(parse_config(train.TrainConfig, sys.argv[1:]))
