"""Knowledge distillation from reranker (teacher) scores, alone or added to a contrastive loss.

Teacher: for query i's group (its positive and G-1 negatives, the order of the data's `pos_scores` then
`neg_scores`), p_i = softmax(t_i / τ_t) over the G passages.

mode "kl" (RocketQAv2, Ren et al. 2021, arXiv:2110.07367; BGE's `kl_div`):
    L_kd = 1/n Σ_i KL(p_i ‖ softmax(s_i)),   s_ig = cos(q_i, d_ig) / τ over the same G passages.
mode "m3" (BGE-M3, Chen et al. 2024, arXiv:2402.03216; BGE's `m3_kd_loss`): cross-entropy against every
passage of the batch, each group member weighted by its teacher probability:
    L_kd = -1/n Σ_i Σ_g p_ig · log softmax_j( s(q_i, d_j) )[i*G + g],   j over all N*G passages.

Total: L = L_base + λ · L_kd with L_base the `base` loss (infonce or gte) or 0 when base is None.
Inputs as in `losses/infonce.py`, plus teacher_scores [n, G] for the local queries.
"""
import torch
import torch.nn.functional as F
from torch import nn

from losses.similarity import cos_sim, local_rows

MODES = ("kl", "m3")


class DistillLoss(nn.Module):
    needs = frozenset({"teacher_scores"})

    def __init__(self, base: nn.Module | None = None, weight: float = 1.0, temperature: float = 0.02,
                 teacher_temperature: float = 1.0, mode: str = "kl"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"distill mode must be one of {MODES}, got {mode!r}")
        self.base, self.weight, self.mode = base, weight, mode
        self.temperature, self.teacher_temperature = temperature, teacher_temperature
        self.in_batch = base is not None or mode == "m3"

    def forward(self, q, p, *, rows: slice | None = None, teacher_scores: torch.Tensor = None, **_) -> torch.Tensor:
        if teacher_scores is None:
            raise ValueError("distill loss needs teacher scores (pos_scores / neg_scores in the data)")
        n_queries, group = q.shape[0], p.shape[0] // q.shape[0]
        idx = local_rows(rows, n_queries).to(q.device)  # [n]
        target = F.softmax(teacher_scores.float() / self.teacher_temperature, dim=-1)  # [n, G]
        cols = idx[:, None] * group + torch.arange(group, device=q.device)  # this query's group, [n, G]
        if self.mode == "kl":
            s = torch.einsum("nd,ngd->ng", F.normalize(q[idx].float(), dim=-1),
                             F.normalize(p[cols].float(), dim=-1)) / self.temperature  # [n, G]
            kd = F.kl_div(F.log_softmax(s, dim=-1), target, reduction="batchmean")
        else:
            log_p = F.log_softmax(cos_sim(q[idx], p, 1 / self.temperature), dim=-1)  # [n, N*G]
            kd = -(target * log_p.gather(1, cols)).sum(dim=1).mean()
        base = self.base(q, p, rows=rows) if self.base is not None else 0.0
        return base + self.weight * kd
