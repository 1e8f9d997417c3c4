"""Count torch.distributed collectives and the bytes they carry, whoever calls them (DeepSpeed, DDP, our gather).

    counter = CollectiveCounter().install()   # before DeepSpeed starts: its comm backend keeps function handles
    ...
    counter.reset(); <steps>; counter.snapshot()  # {"all_gather": {"calls": n, "bytes": b}, ...}

Every collective function of `torch.distributed` is wrapped, in both places it is looked up
(`torch.distributed.X` and `torch.distributed.distributed_c10d.X`), including the tensor forms DeepSpeed uses
(`all_gather_into_tensor`, `reduce_scatter_tensor`, the deprecated `_all_gather_base` / `_reduce_scatter_base`).
deepspeed.comm's wrappers all end in these functions, so they are counted once, there. A call made from inside
another counted call (`_all_gather_base` → `all_gather_into_tensor`, `all_gather_object` → `all_gather`) counts
once, as the outer one. DDP reduces in C++ and never calls Python: `count_ddp_buckets` registers torch's own
`allreduce_hook` as its communication hook, which all-reduces each bucket through `dist.all_reduce`, so those
are counted too, and tallies the buckets for the DDP check.

Bytes are the payload of the whole collective, the same on every rank: the tensor of an all_reduce / broadcast,
the gathered output of an all_gather, the input of a reduce_scatter. (A ring moves about (W−1)/W of that per rank
for gather / reduce-scatter and twice that for all-reduce.)
"""
from __future__ import annotations

import functools
import threading
from collections import defaultdict

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

KINDS = ("all_gather", "reduce_scatter", "all_reduce", "broadcast", "reduce")


def _bytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_bytes(t) for t in x)
    return 0


def _arg(args, kwargs, i: int, name: str):
    return kwargs[name] if name in kwargs else (args[i] if len(args) > i else None)


# function name -> (kind, payload in bytes from its arguments)
WRAPPED = {
    "all_reduce": ("all_reduce", lambda a, k: _bytes(_arg(a, k, 0, "tensor"))),
    "all_reduce_coalesced": ("all_reduce", lambda a, k: _bytes(_arg(a, k, 0, "tensors"))),
    "all_gather": ("all_gather", lambda a, k: _bytes(_arg(a, k, 0, "tensor_list"))),
    "all_gather_into_tensor": ("all_gather", lambda a, k: _bytes(_arg(a, k, 0, "output_tensor"))),
    "_all_gather_base": ("all_gather", lambda a, k: _bytes(_arg(a, k, 0, "output_tensor"))),
    "all_gather_coalesced": ("all_gather", lambda a, k: _bytes(_arg(a, k, 0, "output_tensor_lists"))),
    "_all_gather_base_coalesced": ("all_gather", lambda a, k: _bytes(_arg(a, k, 0, "output_tensors"))),
    "reduce_scatter": ("reduce_scatter", lambda a, k: _bytes(_arg(a, k, 1, "input_list"))),
    "reduce_scatter_tensor": ("reduce_scatter", lambda a, k: _bytes(_arg(a, k, 1, "input"))),
    "_reduce_scatter_base": ("reduce_scatter", lambda a, k: _bytes(_arg(a, k, 1, "input"))),
    "broadcast": ("broadcast", lambda a, k: _bytes(_arg(a, k, 0, "tensor"))),
    "reduce": ("reduce", lambda a, k: _bytes(_arg(a, k, 0, "tensor"))),
}


class CollectiveCounter:
    def __init__(self):
        self.counts = defaultdict(lambda: {"calls": 0, "bytes": 0})
        self.ddp_buckets = {"calls": 0, "bytes": 0}
        self._inside = threading.local()
        self._originals: list[tuple[object, str, object]] = []

    def install(self) -> "CollectiveCounter":
        for name, (kind, size) in WRAPPED.items():
            for module in (dist, c10d):
                original = getattr(module, name, None)
                if original is None or getattr(original, "_counted", False):
                    continue
                setattr(module, name, self._wrap(original, kind, size))
                self._originals.append((module, name, original))
        return self

    def uninstall(self) -> None:
        for module, name, original in reversed(self._originals):
            setattr(module, name, original)
        self._originals.clear()

    def _wrap(self, fn, kind: str, size):
        @functools.wraps(fn)
        def counted(*args, **kwargs):
            if getattr(self._inside, "depth", 0):  # called by another counted collective: counted there
                return fn(*args, **kwargs)
            entry = self.counts[kind]
            entry["calls"] += 1
            entry["bytes"] += size(args, kwargs)
            self._inside.depth = 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._inside.depth = 0

        counted._counted = True
        return counted

    def count_ddp_buckets(self, ddp_model) -> None:
        """DDP's all-reduces go through `dist.all_reduce` (torch's default hook), one call per gradient bucket."""
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def hook(state, bucket):
            self.ddp_buckets["calls"] += 1
            self.ddp_buckets["bytes"] += _bytes(bucket.buffer())
            return allreduce_hook(state, bucket)

        ddp_model.register_comm_hook(None, hook)

    def reset(self) -> None:
        self.counts.clear()
        self.ddp_buckets = {"calls": 0, "bytes": 0}

    def snapshot(self) -> dict:
        out = {kind: dict(self.counts[kind]) if kind in self.counts else {"calls": 0, "bytes": 0} for kind in KINDS}
        out["ddp_buckets"] = dict(self.ddp_buckets)
        return out
