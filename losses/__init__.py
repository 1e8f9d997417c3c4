"""Losses are pure functions of embeddings (+ labels or teacher scores); they never call the model.

Shared signature: loss(q [N, D], p [N*G, D], *, rows=None, labels=None, teacher_scores=None) -> scalar.
`in_batch` says whether a loss contrasts against other queries' passages (and so gains from gathering them
across processes); `needs` names what the data must provide beyond query / passage groups — "teacher_scores",
or a label that makes the rows labelled sentence pairs ("nli_label", "similarity_score"); train.py reads the
data that way (`data.examples.pair_kind_for`).
"""
from losses.cosine import CosineLoss
from losses.distill import DistillLoss
from losses.gte import DIRECTIONS, GTELoss
from losses.infonce import InfoNCELoss
from losses.mnrl import MNRLoss
from losses.softmax_nli import SoftmaxNLILoss

LOSS_NAMES = ("infonce", "gte", "distill", "mnrl", "softmax", "cosine")


def build_loss(name: str, *, dim: int, temperature: float = 0.02, gte_directions=DIRECTIONS,
               distill_base: str = "infonce", distill_weight: float = 1.0, distill_mode: str = "kl",
               teacher_temperature: float = 1.0, mnrl_scale: float = 20.0, num_labels: int = 3):
    if name == "infonce":
        return InfoNCELoss(temperature)
    if name == "gte":
        return GTELoss(temperature, gte_directions)
    if name == "distill":
        if distill_base not in ("infonce", "gte", "none"):
            raise ValueError(f"--distill-base must be infonce, gte or none, got {distill_base!r}")
        base = None if distill_base == "none" else build_loss(distill_base, dim=dim, temperature=temperature,
                                                              gte_directions=gte_directions)
        return DistillLoss(base, distill_weight, temperature, teacher_temperature, distill_mode)
    if name == "mnrl":
        return MNRLoss(mnrl_scale)
    if name == "softmax":
        return SoftmaxNLILoss(dim, num_labels)
    if name == "cosine":
        return CosineLoss()
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
