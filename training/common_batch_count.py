"""Every process must run the same number of steps, or the collectives of the extra step wait forever.

The samplers in data/ already give every rank the same number of batches; this is the guard for any that
does not (e.g. uneven shards or buckets): each epoch stops at the fewest batches any process has.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def common_batch_count(n_local: int) -> int:
    """min over processes of n_local (n_local itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return n_local
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    n = torch.tensor([n_local], dtype=torch.long, device=device)
    dist.all_reduce(n, op=dist.ReduceOp.MIN)
    return int(n.item())
