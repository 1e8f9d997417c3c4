"""Batch sampler: one shuffled global batch per step, sliced per rank; deterministic from (seed, epoch).

All ranks compute the same permutation, so they agree on every global batch without talking, and all get the
same number of steps (the last incomplete global batch of an epoch is left out; the epoch's reshuffle puts
those examples in full batches in other epochs). `set_epoch(epoch, start_batch)` restarts mid-epoch at an
exact batch, which is what a resumed run needs.

train.py uses data/bucket_sampler.py's BucketBatchSampler (the same global-batch scheme plus length buckets,
same-file batches and duplicate-free batches); this plain version is kept as the reference.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[list[int]]):
    def __init__(self, num_examples: int, batch_size: int, seed: int = 42, rank: int = 0, world_size: int = 1):
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        if num_examples < self.global_batch:
            raise ValueError(f"{num_examples} training examples are fewer than one global batch "
                             f"({batch_size} per process × {world_size} processes)")
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start_batch": self.start_batch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(state["epoch"], state["start_batch"])

    def __len__(self) -> int:
        return self.num_examples // self.global_batch

    def global_batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_examples, generator=g).tolist()
        return [order[b * self.global_batch:(b + 1) * self.global_batch] for b in range(len(self))]

    def __iter__(self):
        for batch in self.global_batches()[self.start_batch:]:
            yield batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
