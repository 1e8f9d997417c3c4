"""Matryoshka Representation Learning: one loss at several embedding widths (Kusupati et al. 2022, arXiv:2205.13147).

    L = Σ_k w_k · L_inner( shrink(q, d_k), shrink(p, d_k) ),    shrink(x, d) = x[:, :d] / ‖x[:, :d]‖

d_k are the widths trained (`--matryoshka-dims 384 256 128 64 32`), w_k their weights (`--matryoshka-weights`,
default 1 each). L_inner is the run's loss (infonce, gte, mnrl, distill, cosine, or a registered one) at its own τ,
with the same rows, labels and teacher scores at every width (distill's teacher scores are per passage: they have no
width). After training, the first d_k coordinates re-normalised are an embedding of their own; the model keeps all
of them in one vector.

Inputs: what L_inner takes (q [N, D], p [N*G, D], ...). Use it when the vectors will be stored or searched at fewer
dimensions than the model has (vector databases price by bytes); include the model's full width among the d_k, or the
full vector is trained only through its prefixes.

Composes with the rest unchanged: the gathered batch (training/gather.py) is truncated like a local one (rows
pass through), GradCache (training/grad_cache.py) sees one loss of the embeddings, and the tiled form is this wrapper
around the inner loss's registered tiled form (losses/config.py), so no width builds a batch × batch matrix; the
extra memory is one re-normalised copy of the embeddings per width (Σ_k d_k / D copies).

sentence-transformers' MatryoshkaLoss (6.2, read from its source), and where we differ:
  same: `shrink` truncates to the first d coordinates and L2-renormalises; weights default to 1 each; the loss is the
        weighted sum (not a mean); widths are sorted largest first, weights following; a width ≤ 0 or beyond the
        model's is refused.
  differ: it allows a width given twice (counted twice); we refuse it (a weight says it plainly). It only warns when
        the full width is missing; we say so in the log too. Its `n_dims_per_step` (a random subset of widths per
        step) is not offered: every step trains every width. It truncates labels shaped like embeddings (MSE
        distillation to teacher embeddings); no loss here takes such labels. It has no default widths (its docs use
        768 512 256 128 64); neither do we (no --matryoshka-dims: off).
Losses whose input width is fixed cannot be wrapped: softmax's classifier reads [u; v; |u − v|] through a Linear of
3·D inputs, so it is refused by name (its registration says why: `LossSpec.full_width_only`). cosine is allowed:
the cosine of truncated pairs is defined at any width.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cli_config import ConfigError


def shrink(x: torch.Tensor, dim: int) -> torch.Tensor:
    """[n, D] -> [n, dim]: the first `dim` coordinates, re-normalised to unit length (fp32, or float64 when given)."""
    cut = x[..., :dim]
    return F.normalize(cut.to(torch.promote_types(cut.dtype, torch.float32)), dim=-1)


def widths(dims, weights=None) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(dims, weights) largest width first, each weight with its width; weights default to 1 each."""
    weights = [1.0] * len(dims) if not weights else [float(w) for w in weights]
    if len(weights) != len(dims):
        raise ValueError(f"{len(weights)} Matryoshka weights for {len(dims)} dimensions")
    pairs = sorted(zip(dims, weights), key=lambda dw: -dw[0])
    return tuple(int(d) for d, _ in pairs), tuple(w for _, w in pairs)


class MatryoshkaLoss(nn.Module):
    def __init__(self, inner: nn.Module, dims, weights=None):
        super().__init__()
        self.inner = inner
        self.dims, self.weights = widths(dims, weights)
        self.in_batch = inner.in_batch
        self.temperature = getattr(inner, "temperature", None)  # the log's τ; every width uses the inner loss's
        if hasattr(inner, "tile_size"):
            self.tile_size = inner.tile_size

    def forward(self, q, p, **inputs) -> torch.Tensor:
        total = 0.0
        for dim, weight in zip(self.dims, self.weights):
            total = total + weight * self.inner(shrink(q, dim), shrink(p, dim), **inputs)
        return total


def check_matryoshka(dims: list, weights: list, width: int | None = None, loss: str | None = None,
                     full_width_only: str | None = None) -> None:
    """ConfigError naming matryoshka_dims / matryoshka_weights: whole widths ≥ 1, each once, at most `width` (the
    model's, when known); one finite weight ≥ 0 per width, not all 0; no weights without widths; a loss that needs
    the full width (`full_width_only`: why) refused by name."""
    shown, shown_w = _shown(dims), _shown(weights)
    if not dims:
        if weights:
            raise ConfigError("matryoshka_weights", f"{shown_w}: weights the Matryoshka dimensions, which are not set")
        return
    bad = [d for d in dims if isinstance(d, bool) or not isinstance(d, int) or d < 1]
    if bad:
        raise ConfigError("matryoshka_dims", f"{shown}: must be whole numbers of dimensions ≥ 1 ({bad[0]} is not)")
    twice = sorted({d for d in dims if dims.count(d) > 1}, reverse=True)
    if twice:
        raise ConfigError("matryoshka_dims", f"{shown}: each dimension once ({', '.join(map(str, twice))} given more "
                                             "than once); weigh a dimension with matryoshka_weights instead")
    if width is not None and max(dims) > width:
        raise ConfigError("matryoshka_dims", f"{shown}: must be at most the model's {width} dimensions "
                                             f"({max(dims)} is more)")
    if weights:
        if len(weights) != len(dims):
            raise ConfigError("matryoshka_weights", f"{shown_w}: must be one weight per Matryoshka dimension "
                                                    f"({len(weights)} weight{'s' if len(weights) > 1 else ''} for "
                                                    f"{len(dims)} dimensions: {shown})")
        if not all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
            raise ConfigError("matryoshka_weights", f"{shown_w}: must be finite numbers ≥ 0, at least one > 0")
    if full_width_only:
        raise ConfigError("matryoshka_dims", f"{shown}: the {loss} loss cannot score truncated embeddings: "
                                             f"{full_width_only}")


def _shown(values: list) -> str:
    """Values as typed on a command line: `32 16`, `1 0.5`."""
    return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
