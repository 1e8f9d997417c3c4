"""Cosine similarity matrix shared by every loss: s(a, b) = cos(a, b)."""
import torch
import torch.nn.functional as F


def cos_sim(a: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """a: [n, D], b: [m, D] -> [n, m] scale · cosines, in fp32 whatever the embeddings' dtype.

    The scale (1/τ) multiplies the [n, D] side before the product, so no second [n, m] matrix is made: at a
    global batch of 16k that matrix is 1 GiB.
    """
    return (F.normalize(a.float(), dim=-1) * scale) @ F.normalize(b.float(), dim=-1).T


def local_rows(rows: slice | None, n: int) -> torch.Tensor:
    """Indices of the queries this process scores (all of them on one process). -> [n_local] long."""
    return torch.arange(n)[rows if rows is not None else slice(None)]
