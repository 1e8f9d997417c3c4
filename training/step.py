"""One micro-batch: embed, (gather), loss, backward — plainly or with GradCache. Shared by train.py and the tests.

Gradient convention (see training/gather.py): each process's loss is the mean over its own B queries, scored
against the gathered W·B queries and W·B·G passages; gather's backward sums what every process sends to each
slice, and DDP / DeepSpeed average parameter gradients over the W processes. The result is exactly the
gradient of the mean loss over the global batch of W·B queries on one process (tests/test_distributed.py).
"""
from __future__ import annotations

import torch

from training.gather import gather_rows
from training.grad_cache import grad_cache_step


def make_compute_loss(loss_fn, batch: dict, gather: bool):
    """(q [B, D], p [B*G, D]) -> scalar: gathers across processes first when `gather`."""
    def compute_loss(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        rows = None
        if gather:
            q, p, rows = gather_rows(q, p)  # [W*B, D], [W*B*G, D], slice of this process's queries
        return loss_fn(q, p, rows=rows, labels=batch.get("labels"), teacher_scores=batch.get("teacher_scores"))
    return compute_loss


def train_step(accelerator, model, loss_fn, batch: dict, gather: bool, grad_cache_chunk: int = 0) -> torch.Tensor:
    """Forward and backward of one micro-batch (gradients accumulate in .grad); returns the loss, detached.

    With grad_cache_chunk > 0 the batch is embedded in chunks of that many sequences (training/grad_cache.py);
    the gradients are the same as without it.
    """
    compute_loss = make_compute_loss(loss_fn, batch, gather)
    if grad_cache_chunk > 0:
        return grad_cache_step(accelerator, model, compute_loss, batch, grad_cache_chunk)
    with accelerator.autocast():
        q, p = model(query=batch["query"], passage=batch["passage"])  # [B, D], [B*G, D]
    loss = compute_loss(q, p)
    accelerator.backward(loss)
    return loss.detach()


def batch_to_device(batch: dict, device) -> dict:
    """Collator output (tensors, and dicts of tensors for the tokenised sides) -> the same on `device`."""
    return {k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device))
            for k, v in batch.items()}
