"""The loss registry: each loss module declares, beside its formula, everything train.py needs to know about it.

    register(LossSpec(
        name="gte",                       # --loss gte
        make=make_gte,                    # (options, *, temperature, dim, build) -> the dense loss (an nn.Module)
        rows=RowKind.GROUPS,              # the rows it trains on (data/row_kind.py)
        options=GTEOptions,               # its own options: a dataclass of `opt(default, help)` fields, each a flag
        default_temperature=0.01,         # its paper's τ, used when --temperature is not given (None: no τ)
        tiled=tiled_gte,                  # (dense loss, tile) -> its tiled form (losses/tiled.py), or None
        check=None))                      # (options, group_size) -> None, ConfigError before anything loads

build_loss, the loss options of train.py (LossConfig: its --help, YAML keys and checks) and the choice of a tiled
form all read this table; nothing dispatches on a loss's class, so a subclass of InfoNCE with another formula is
tiled only if it registers a tiled form of its own. A name registered twice is refused when its module is imported.
Adding a loss: README "Extending".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from cli_config import ConfigError
from data.row_kind import RowKind
from losses import tiled
from losses.tiled import DEFAULT_TILE


@dataclass(frozen=True)
class LossSpec:
    name: str
    make: Callable[..., nn.Module]
    rows: RowKind = RowKind.GROUPS
    options: type | None = None
    default_temperature: float | None = None
    tiled: Callable[[nn.Module, int], nn.Module] | None = None
    check: Callable[[Any, int], None] | None = None
    summary: str = ""  # one line for --help and the README's list


REGISTRY: dict[str, LossSpec] = {}


def register(spec: LossSpec) -> LossSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"loss {spec.name!r} is registered twice (losses/registry.py): pick another name")
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """For tests that register a loss of their own."""
    REGISTRY.pop(name, None)


def spec_of(name: str) -> LossSpec:
    if name not in REGISTRY:
        raise ConfigError("loss", f"{name}: unknown loss {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def build_loss(name: str, options: dict | None = None, *, dim: int, temperature: float | None = None,
               group_size: int | None = None, **option_values) -> nn.Module:
    """The dense loss `name` with its options and τ (None = its paper's). options: {loss name: its options
    dataclass} (LossConfig.options; missing = defaults); option_values: single options by their flat key, e.g.
    `build_loss("distill", dim=8, distill_base="gte")`. group_size, when given, is checked against what the loss
    needs (ConfigError)."""
    options = _with_values(options or {}, option_values)

    def own(n):
        s = spec_of(n)
        return options.get(n) if options.get(n) is not None else (s.options() if s.options else None)

    def build(other: str, temperature: float | None) -> nn.Module:  # a loss built inside another (distill's base)
        s = spec_of(other)
        return s.make(own(other), temperature=_or(temperature, s.default_temperature), dim=dim, build=build)

    spec = spec_of(name)
    if spec.check is not None:
        spec.check(own(name), group_size)
    return spec.make(own(name), temperature=_or(temperature, spec.default_temperature), dim=dim, build=build)


def _with_values(options: dict, values: dict) -> dict:
    """options with each flat key of `values` set in the options dataclass of the loss that declares it."""
    options = dict(options)
    for key, value in values.items():
        owner = next((n for n, s in REGISTRY.items()
                      if s.options is not None and key in s.options.__dataclass_fields__), None)
        if owner is None:
            raise TypeError(f"no registered loss has an option {key!r}")
        current = options.get(owner) or REGISTRY[owner].options()
        options[owner] = dataclasses.replace(current, **{key: value})
    return options


def loss_temperature(loss) -> float | None:
    """The τ a built loss uses (None for losses without one: softmax, cosine)."""
    return getattr(loss, "temperature", None)


def check_tile_size(tile, batch_queries: int | None = None) -> None:
    try:
        tiled.check_tile_size(tile, batch_queries)
    except ValueError as e:
        raise ConfigError("loss_tile_size", f"{tile}: {e}") from None


def tiled_form(name: str, loss: nn.Module, tile_size: int = DEFAULT_TILE) -> nn.Module:
    """The tiled counterpart `name` registered for a dense loss it built (same values and gradients); ConfigError
    when it registered none, or its tiled form refuses this configuration."""
    check_tile_size(tile_size)
    spec = spec_of(name)
    tiled = [n for n, s in REGISTRY.items() if s.tiled is not None]
    if spec.tiled is None:
        raise ConfigError("loss_tile_size", f"{tile_size}: loss {name!r} has no tiled form (it registered none: "
                                            f"losses/registry.py); tiled losses: {', '.join(tiled)}")
    try:
        return spec.tiled(loss, tile_size)
    except ValueError as e:
        raise ConfigError("loss_tile_size", f"{tile_size}: loss {name!r}: {e}") from None


def choose_tiling(name: str, loss: nn.Module, tile_size: int | None, tile_above: int, batch_queries: int) -> nn.Module:
    """train.py's choice: tile_size given → that tile (checked against the batch; a loss without a tiled form is
    refused); None → tiled with DEFAULT_TILE (at most the batch) when the global batch has more than
    `tile_above` queries and the loss has a tiled form (0 = never automatically); else the dense loss."""
    if tile_above < 0:
        raise ConfigError("loss_tile_above", f"{tile_above}: the automatic threshold must be ≥ 0 queries (0 = never "
                                             "tile automatically)")
    if tile_size is not None:
        check_tile_size(tile_size, batch_queries)
        return tiled_form(name, loss, tile_size)
    if tile_above == 0 or batch_queries <= tile_above or spec_of(name).tiled is None:
        return loss
    try:
        return tiled_form(name, loss, min(DEFAULT_TILE, batch_queries))
    except ConfigError:  # no in-batch matrix to tile in this configuration (distill kl alone): already O(n)
        return loss


def _or(value, default):
    return default if value is None else value
