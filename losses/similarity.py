"""Cosine similarity matrix shared by every loss: s(a, b) = cos(a, b)."""
import torch
import torch.nn.functional as F


def cos_sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a: [n, D], b: [m, D] -> [n, m] cosines, computed in fp32 whatever the embeddings' dtype."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def local_rows(rows: slice | None, n: int) -> torch.Tensor:
    """Indices of the queries this process scores (all of them on one process). -> [n_local] long."""
    return torch.arange(n)[rows if rows is not None else slice(None)]
