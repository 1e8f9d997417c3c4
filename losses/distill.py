"""Knowledge distillation from reranker (teacher) scores, alone or added to a contrastive loss.

Teacher: for query i's group (its positive and G-1 negatives, the order of the data's `pos_scores` then
`neg_scores`), p_i = softmax(t_i / τ_t) over the G passages. Student: s(q, d) = cos(q, d) / τ.

mode "kl" (RocketQAv2, Ren et al. 2021, arXiv:2110.07367; BGE's `kl_div`):
    L_kd = 1/n Σ_i KL(p_i ‖ softmax(s_i)),   s_ig = s(q_i, d_ig) over the same G passages.
  Conventions: FlagEmbedding's `kl_div` computes the cross-entropy -Σ_g p_ig log softmax(s_i)_g, which is this
  KL plus the teacher's entropy (a constant: same gradient, different value). sentence-transformers'
  DistillKLDivLoss computes the same KL but multiplies it by τ² (Hinton et al.'s gradient-scale convention) and
  by default scores with the dot product at τ = 1; ours is unscaled, so λ (`weight`) alone sets the KD weight.
mode "m3" (BGE-M3, Chen et al. 2024, arXiv:2402.03216; FlagEmbedding's `m3_kd_loss`): cross-entropy against
every passage of the batch, one term per group member g weighted by its teacher probability; when scoring
member g, the members 0…g-1 of the query's own group are left out of the partition (FlagEmbedding masks them):
    L_kd = -1/n Σ_i Σ_g p_ig · log( e^{s(q_i, d_ig)} / Σ_{j ∉ {d_i0 … d_i(g-1)}} e^{s(q_i, d_j)} ),
  j over all N*G passages. FlagEmbedding's m3 mode uses no other loss; here L_base is added as in kl mode
  (set base None, `--distill-base none`, for FlagEmbedding's loss).

Total: L = L_base + λ · L_kd with L_base the `base` loss (infonce or gte) or 0 when base is None.
Inputs as in `losses/infonce.py`, plus teacher_scores [n, G] for the local queries; G ≥ 2 (with one passage
the teacher's distribution is the constant 1 and there is nothing to distil).
τ defaults to the base loss's own default (FlagEmbedding uses one τ for both terms), BGE's 0.02 without a base.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cli_config import ConfigError, opt
from data.row_kind import RowKind
from losses.registry import LossSpec, register, tiled_form
from losses.similarity import cos_sim, local_rows
from losses.tiled import TiledDistillLoss

MODES = ("kl", "m3")
BASES = ("infonce", "gte", "none")
BGE_TEMPERATURE = 0.02  # C-Pack / FlagEmbedding fine-tuning default


@dataclass
class DistillOptions:
    distill_base: str = opt("infonce", "distill: contrastive loss added to the KD term: infonce | gte | none")
    distill_weight: float = opt(1.0, "distill: λ, weight of the KD term")
    distill_mode: str = opt("kl", "distill: kl (over the query's group) | m3 (teacher-weighted in-batch CE)")
    teacher_temperature: float = opt(1.0, "distill: τ_t in softmax(teacher_score / τ_t)")


class DistillLoss(nn.Module):
    min_group_size = 2

    def __init__(self, base: nn.Module | None = None, weight: float = 1.0, temperature: float | None = None,
                 teacher_temperature: float = 1.0, mode: str = "kl"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"distill mode must be one of {MODES}, got {mode!r}")
        self.base, self.weight, self.mode = base, weight, mode
        if temperature is None:
            temperature = base.temperature if base is not None else BGE_TEMPERATURE
        self.temperature, self.teacher_temperature = temperature, teacher_temperature
        self.in_batch = base is not None or mode == "m3"

    def forward(self, q, p, *, rows: slice | None = None, teacher_scores: torch.Tensor = None, **_) -> torch.Tensor:
        if teacher_scores is None:
            raise ValueError("distill loss needs teacher scores (pos_scores / neg_scores in the data)")
        n_queries, group = q.shape[0], p.shape[0] // q.shape[0]
        if group < self.min_group_size:
            raise ValueError(f"distill needs ≥ {self.min_group_size} passages per query (got {group}): with one "
                             "passage the teacher's softmax is constant and the loss is zero")
        idx = local_rows(rows, n_queries).to(q.device)  # [n]
        target = F.softmax(teacher_scores.float() / self.teacher_temperature, dim=-1)  # [n, G]
        cols = idx[:, None] * group + torch.arange(group, device=q.device)  # this query's group, [n, G]
        if self.mode == "kl":
            s = torch.einsum("nd,ngd->ng", F.normalize(q[idx].float(), dim=-1),
                             F.normalize(p[cols].float(), dim=-1)) / self.temperature  # [n, G]
            kd = F.kl_div(F.log_softmax(s, dim=-1), target, reduction="batchmean")
        else:
            scores = cos_sim(q[idx], p, 1 / self.temperature)  # [n, N*G]
            member = torch.arange(p.shape[0], device=q.device) - idx[:, None] * group  # [n, N*G]: g in own group
            members = torch.arange(group, device=q.device)[None, :, None]  # [1, G, 1]
            earlier = (member[:, None, :] >= 0) & (member[:, None, :] < members)  # [n, G, N*G]: members 0…g-1
            masked = scores[:, None, :].masked_fill(earlier, float("-inf"))  # [n, G, N*G]
            log_p = masked.gather(2, cols[:, :, None]).squeeze(2) - torch.logsumexp(masked, dim=2)  # [n, G]
            kd = -(target * log_p).sum(dim=1).mean()
        base = self.base(q, p, rows=rows) if self.base is not None else 0.0
        return base + self.weight * kd


def check_distill(o: DistillOptions, group_size: int | None) -> None:
    if o.distill_base not in BASES:
        raise ConfigError("distill_base", f"{o.distill_base}: must be one of {', '.join(BASES)}")
    if o.distill_mode not in MODES:
        raise ConfigError("distill_mode", f"{o.distill_mode}: must be one of {', '.join(MODES)}")
    if not (math.isfinite(o.distill_weight) and o.distill_weight >= 0):
        raise ConfigError("distill_weight", f"{o.distill_weight}: must be a finite number ≥ 0")
    if not (math.isfinite(o.teacher_temperature) and o.teacher_temperature > 0):
        raise ConfigError("teacher_temperature", f"{o.teacher_temperature}: must be a finite number > 0")
    if group_size is not None and group_size < DistillLoss.min_group_size:
        raise ConfigError("group_size", f"{group_size}: the distill loss needs ≥ {DistillLoss.min_group_size} "
                                        "passages per query: with one the teacher's softmax is constant and the loss "
                                        "is zero")


def make_distill(o: DistillOptions, *, temperature, dim, build) -> DistillLoss:
    base = None if o.distill_base == "none" else build(o.distill_base, temperature)
    loss = DistillLoss(base, o.distill_weight, temperature, o.teacher_temperature, o.distill_mode)
    loss.base_name = None if base is None else o.distill_base  # its tiled form is the base's registered one
    return loss


def tiled_distill(loss: DistillLoss, tile: int) -> nn.Module:
    if loss.base is None and loss.mode == "kl":
        raise ValueError("with distill base none and mode kl it has no tiled form: it only scores each query's own "
                         "group ([n, G]), there is no batch × batch matrix to tile")
    base = tiled_form(loss.base_name, loss.base, tile) if loss.base is not None else None
    return TiledDistillLoss(loss, tile, base)


register(LossSpec(
    name="distill", rows=RowKind.SCORED_GROUPS, options=DistillOptions, make=make_distill, tiled=tiled_distill,
    check=check_distill, summary="KL (RocketQAv2) or m3 (BGE-M3) distillation from teacher scores, + a base loss"))
