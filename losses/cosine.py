"""Cosine-similarity regression (sentence-transformers' CosineSimilarityLoss, Reimers & Gurevych 2019).

    L = 1/n Σ_i ( cos(u_i, v_i) − y_i )²,   y_i ∈ [0, 1] (e.g. an STS score divided by 5)

Inputs: q [n, D], p [n, D] the two sentences, labels [n] float. Not an in-batch loss.
"""
import torch
import torch.nn.functional as F
from torch import nn

from data.row_kind import RowKind
from losses.registry import LossSpec, register


class CosineLoss(nn.Module):
    in_batch = False

    def forward(self, q, p, *, labels: torch.Tensor = None, **_) -> torch.Tensor:
        cos = F.cosine_similarity(q.float(), p.float(), dim=-1)  # [n]
        return F.mse_loss(cos, labels.float())


register(LossSpec(
    name="cosine", make=lambda options, *, temperature, dim, build: CosineLoss(), rows=RowKind.SCORED_PAIRS,
    summary="sentence-transformers' CosineSimilarityLoss on scored pairs"))
