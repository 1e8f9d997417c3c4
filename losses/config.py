"""The loss options of train.py: which loss, its τ, each registered loss's own options (a part per loss, from
losses/registry.py), the cross-process gather and the tiling. Flags and YAML keys are the field names."""
from __future__ import annotations

import math
from dataclasses import dataclass

from cli_config import ConfigError, opt, part
from losses import REGISTRY, build_loss, choose_tiling, loss_temperature, spec_of
from losses.registry import DEFAULT_TILE


def loss_options() -> dict:
    """{loss name: its options dataclass, defaults} of every registered loss that has options."""
    return {name: spec.options() for name, spec in REGISTRY.items() if spec.options is not None}


@dataclass
class LossConfig:
    name: str = opt("infonce", f"one of {', '.join(REGISTRY)}", key="loss")
    temperature: float = opt(None, "τ in s = cos/τ (infonce, gte, mnrl, distill); default: the loss's paper value "
                                   "(gte 0.01 GTE, infonce 0.02 BGE, mnrl 0.05 = sentence-transformers' scale 20, "
                                   "distill its base's, 0.02 without one); an ST scale s is τ = 1/s")
    options: dict = part(loss_options, each=True)  # one part per registered loss with options
    cross_device: bool = opt(True, "gather in-batch negatives from all processes (exact gradients)")
    loss_tile_size: int = opt(None, "compute the in-batch loss in tiles of N × N similarities (losses/tiled.py: "
                                    "same values and gradients, never the whole batch × batch matrix); default: "
                                    "automatic, see --loss-tile-above")
    loss_tile_above: int = opt(16384, f"without --loss-tile-size: tile the loss (tiles of {DEFAULT_TILE}) once the "
                                      "global batch has more queries than this (0 = never automatically)")

    @property
    def spec(self):
        return spec_of(self.name)

    def check(self, group_size: int | None) -> None:
        """ConfigError naming the key: the loss is registered, τ is valid, its own options pass its own check."""
        spec_of(self.name)  # a registered loss, or ConfigError listing them
        t = self.temperature
        if t is not None and not (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)
                                  and t > 0):
            raise ConfigError("temperature", f"{t}: must be a finite number > 0")
        for name, other in REGISTRY.items():  # every loss's own options are checked, used or not (a typo is a typo)
            if other.check is not None:
                other.check(self.options.get(name), group_size if name == self.name else None)

    def build(self, dim: int, group_size: int | None, batch_queries: int):
        """-> (the loss, tiled when asked or above loss_tile_above queries; its dense form)."""
        dense = build_loss(self.name, self.options, dim=dim, temperature=self.temperature, group_size=group_size)
        return choose_tiling(self.name, dense, self.loss_tile_size, self.loss_tile_above, batch_queries), dense

    def temperature_note(self, loss) -> str | None:
        """'loss gte: τ = 0.01 (its default)' for the log; None for a loss without τ."""
        if loss_temperature(loss) is None:
            return None
        return f"loss {self.name}: τ = {loss_temperature(loss):g}{' (its default)' if self.temperature is None else ''}"
