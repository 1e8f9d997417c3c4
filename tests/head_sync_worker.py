"""Run by tests/test_distributed.py as `torchrun --nproc_per_node 2 -m tests.head_sync_worker OUT <train.py args>`:
train.py as it is, with every all-reduce of the softmax classifier's DDP module counted (a DDP communication hook
that counts, then all-reduces as DDP would). Each process writes {"syncs": n, "steps": optimizer steps} to OUT.<rank>.
"""
from __future__ import annotations

import json
import os
import sys

import accelerate
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

import train
from cli_config import parse_config
from losses.softmax_nli import SoftmaxNLILoss


def main(out_path: str, argv: list[str]) -> None:
    syncs = []
    prepare = accelerate.Accelerator.prepare

    def counting(state, bucket):
        syncs.append(1)
        return allreduce_hook(state, bucket)

    def prepare_and_count(self, *objects, **kwargs):
        prepared = prepare(self, *objects, **kwargs)
        for obj in prepared if isinstance(prepared, tuple) else (prepared,):
            if isinstance(obj, DistributedDataParallel) and isinstance(obj.module, SoftmaxNLILoss):
                obj.register_comm_hook(None, counting)
        return prepared

    accelerate.Accelerator.prepare = prepare_and_count
    result = train.main(parse_config(train.TrainConfig, argv))
    with open(f"{out_path}.{os.environ['RANK']}", "w", encoding="utf-8") as f:
        json.dump({"syncs": len(syncs), "steps": result["steps"]}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
