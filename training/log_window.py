"""The numbers train.py (and pretrain.py) log every --log-steps: mean loss over the window (and over processes),
pairs/s (pretrain.py: texts/s), tokens/s.

The losses of a window not yet logged are part of a checkpoint (`pending`), so a resumed run logs the same
means as a run never killed. A non-finite loss (its step was skipped: training/step_guard.py) is left out of the
mean and counted instead, so one bad step does not turn a whole window's loss into NaN.
"""
from __future__ import annotations

import time

import torch


class LogWindow:
    def __init__(self, accelerator, pending: list[float] = (), unit: str = "pairs"):
        self.accelerator, self.unit = accelerator, unit
        self.losses = [torch.tensor(x, device=accelerator.device) for x in pending]  # one per micro-batch
        self.pairs, self.tokens, self.start = 0, 0, time.perf_counter()

    def add(self, loss: torch.Tensor, batch: dict) -> None:
        self.add_counts(loss, batch["query"]["input_ids"].shape[0],
                        int(batch["query"]["attention_mask"].sum() + batch["passage"]["attention_mask"].sum()))

    def add_counts(self, loss: torch.Tensor, items: int, tokens: int) -> None:
        """One micro-batch's loss, with the items (`unit`) and tokens it processed."""
        self.losses.append(loss.float())
        self.pairs += items
        self.tokens += tokens

    def close(self) -> dict:
        """Mean loss (a collective: every process calls it), throughput of all processes; starts a new window."""
        world, elapsed = self.accelerator.num_processes, time.perf_counter() - self.start
        losses = torch.stack(self.losses)
        finite = torch.isfinite(losses)
        total, count, bad = self.accelerator.reduce(torch.stack([torch.where(finite, losses, 0.0).sum(), finite.sum(),
                                                                 (~finite).sum()]).double(), reduction="sum").tolist()
        stats = {"loss": total / count if count else float("nan"),
                 f"{self.unit}_per_s": self.pairs * world / elapsed, "tokens_per_s": self.tokens * world / elapsed}
        if bad:
            stats["non_finite_losses"] = int(bad)
        self.losses, self.pairs, self.tokens, self.start = [], 0, 0, time.perf_counter()
        return stats

    def pending(self) -> list[float]:
        """The window's losses so far, averaged over processes (a collective), for a checkpoint."""
        if not self.losses:
            return []
        return self.accelerator.reduce(torch.stack(self.losses), reduction="mean").tolist()
