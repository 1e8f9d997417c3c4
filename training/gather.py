"""Cross-process gathering of embeddings with exact gradients (for in-batch negatives across GPUs).

Convention: every process computes the loss of its own queries only (mean over its rows) against the
gathered passages and queries; `gather_with_grad`'s backward sums the gradient that every process sends to
each slice (all-reduce, then take our slice); DDP/DeepSpeed then average parameter gradients over the W
processes. Together this is exactly the gradient of the mean loss over the global batch on one process:
    (1/W) Σ_r' Σ_r ∂L_r/∂θ|via slice r'  =  ∂/∂θ (1/W) Σ_r L_r  =  ∂L_global/∂θ.
(FlagEmbedding's plain all_gather keeps only the local slice's own term, giving 1/W of the cross terms;
Tevatron all_gathers queries and passages, puts its local slices back with their graph, computes the loss on all
rows on every rank and multiplies by W; contrastors gathers only the documents, with a gradient-carrying gather,
scores its local queries against them and multiplies the loss by W — its queries are never gathered.)
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world, ctx.n = dist.get_rank(), dist.get_world_size(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)  # [W*n, ...]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # Σ_r ∂L_r/∂(all rows)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """x: [n, ...] on each of W processes (same n everywhere) -> [W*n, ...], rank r's rows at r*n:(r+1)*n."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather_rows(q: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, slice]:
    """Gather a step's queries [n, D] and passages [n*G, D]; returns (q_all, p_all, rows of this process's queries)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return q, p, slice(None)
    rank, n = dist.get_rank(), q.shape[0]
    return gather_with_grad(q), gather_with_grad(p), slice(rank * n, (rank + 1) * n)
