"""InfoNCE with in-batch and hard negatives (BGE / E5 fine-tuning loss).

    L = -1/n Σ_i log( e^{s(q_i, d_i⁺)} / Σ_j e^{s(q_i, d_j)} ),   s(a, b) = cos(a, b) / τ

The sum over j runs over every passage of the (global) batch: query i's positive, its hard negatives, and
every other query's positive and hard negatives. τ defaults to 0.02 as in BGE (Xiao et al. 2023, C-Pack,
arXiv:2309.07597); E5 (Wang et al. 2022, arXiv:2212.03533) uses 0.01.

Inputs: q [N, D] queries; p [N*G, D] passages in groups of G = 1 positive + (G-1) hard negatives, group-major
(query i's positive is row i*G). `rows` selects the queries this process owns when q and p were gathered from
all processes; the loss is the mean over those rows.
"""
import torch
import torch.nn.functional as F
from torch import nn

from data.row_kind import RowKind
from losses.registry import LossSpec, register
from losses.similarity import cos_sim, local_rows
from losses.tiled import TiledInfoNCELoss


class InfoNCELoss(nn.Module):
    in_batch = True  # uses other queries' passages as negatives, so it benefits from cross-device gathering
    default_temperature = 0.02  # BGE (C-Pack)

    def __init__(self, temperature: float = default_temperature):
        super().__init__()
        self.temperature = temperature

    def forward(self, q, p, *, rows: slice | None = None, **_) -> torch.Tensor:
        group = p.shape[0] // q.shape[0]
        idx = local_rows(rows, q.shape[0]).to(q.device)  # [n]
        logits = cos_sim(q[idx], p, 1 / self.temperature)  # [n, N*G]
        return F.cross_entropy(logits, idx * group)


def tiled_infonce(loss: InfoNCELoss, tile: int) -> nn.Module:
    return TiledInfoNCELoss(loss.temperature, tile)


register(LossSpec(
    name="infonce", make=lambda options, *, temperature, dim, build: InfoNCELoss(temperature), rows=RowKind.GROUPS,
    default_temperature=InfoNCELoss.default_temperature, tiled=tiled_infonce,
    summary="InfoNCE over in-batch and hard negatives (BGE, E5)"))
