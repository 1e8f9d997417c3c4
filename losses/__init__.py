"""Losses are pure functions of embeddings (+ labels or teacher scores); they never call the model.

Shared signature: loss(q [N, D], p [N*G, D], *, rows=None, labels=None, teacher_scores=None) -> scalar.
`in_batch` says whether a loss contrasts against other queries' passages (and so gains from gathering them
across processes). Each loss module registers itself (losses/registry.py): its name, options, the rows it needs, its
paper's τ and its tiled form; importing this package imports every built-in loss, in the order of --loss's help.
"""
from losses import cosine, distill, gte, infonce, mnrl, softmax_nli  # noqa: F401 (each registers its loss)
from losses.cosine import CosineLoss  # noqa: F401
from losses.distill import DistillLoss  # noqa: F401
from losses.gte import DIRECTIONS, GTELoss  # noqa: F401
from losses.infonce import InfoNCELoss  # noqa: F401
from losses.mnrl import MNRLoss  # noqa: F401
from losses.softmax_nli import SoftmaxNLILoss  # noqa: F401
from losses.registry import REGISTRY, LossSpec, build_loss, choose_tiling, loss_temperature, register, spec_of, \
    tiled_form, unregister  # noqa: F401

BUILT_IN = ("infonce", "gte", "distill", "mnrl", "softmax", "cosine")  # --help order
for _name in BUILT_IN:  # registered in this order, whatever order the imports above ran in
    REGISTRY[_name] = REGISTRY.pop(_name)
