"""Losses are pure functions of embeddings (+ labels or teacher scores); they never call the model.

Shared signature: loss(q [N, D], p [N*G, D], *, rows=None, labels=None, teacher_scores=None) -> scalar.
`in_batch` says whether a loss contrasts against other queries' passages (and so gains from gathering them
across processes); `needs` names what the data must provide beyond query / passage groups — "teacher_scores",
or a label that makes the rows labelled sentence pairs ("nli_label", "similarity_score"); train.py reads the
data that way (`data.examples.pair_kind_for`). A loss with a temperature holds its paper's default τ as
`default_temperature`; build_loss uses it when no τ is given.
"""
from losses.cosine import CosineLoss
from losses.distill import DistillLoss
from losses.gte import DIRECTIONS, GTELoss
from losses.infonce import InfoNCELoss
from losses.mnrl import MNRLoss
from losses.softmax_nli import SoftmaxNLILoss

LOSS_NAMES = ("infonce", "gte", "distill", "mnrl", "softmax", "cosine")


def build_loss(name: str, *, dim: int, temperature: float | None = None, gte_directions=DIRECTIONS,
               gte_exclude_own_group: bool = True, distill_base: str = "infonce", distill_weight: float = 1.0,
               distill_mode: str = "kl", teacher_temperature: float = 1.0, num_labels: int = 3,
               group_size: int | None = None):
    """The loss called `name`; temperature None = the loss's own paper default (see `loss_temperature`).

    group_size (passages per query), when given, is checked against what the loss needs before any training.
    """
    if name == "infonce":
        return InfoNCELoss(_or(temperature, InfoNCELoss.default_temperature))
    if name == "gte":
        return GTELoss(_or(temperature, GTELoss.default_temperature), gte_directions, gte_exclude_own_group)
    if name == "distill":
        if distill_base not in ("infonce", "gte", "none"):
            raise ValueError(f"--distill-base must be infonce, gte or none, got {distill_base!r}")
        if group_size is not None and group_size < DistillLoss.min_group_size:
            raise ValueError(f"--loss distill needs --group-size ≥ {DistillLoss.min_group_size} (got {group_size}): "
                             "with one passage per query the teacher's softmax is constant and the loss is zero")
        base = None if distill_base == "none" else build_loss(
            distill_base, dim=dim, temperature=temperature, gte_directions=gte_directions,
            gte_exclude_own_group=gte_exclude_own_group)
        return DistillLoss(base, distill_weight, temperature, teacher_temperature, distill_mode)
    if name == "mnrl":
        return MNRLoss(_or(temperature, MNRLoss.default_temperature))
    if name == "softmax":
        return SoftmaxNLILoss(dim, num_labels)
    if name == "cosine":
        return CosineLoss()
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")


def loss_temperature(loss) -> float | None:
    """The τ a built loss uses (None for losses without one: softmax, cosine)."""
    return getattr(loss, "temperature", None)


def _or(value, default):
    return default if value is None else value
