"""Per-epoch groups: each query with 1 positive and group_size-1 negatives, as BGE samples them.

Item i of epoch e is drawn from a generator seeded by (seed, epoch, i) alone, so any item can be rebuilt
exactly after a restart without replaying the ones before it (the resume path relies on this).
"""
from __future__ import annotations

import random

from torch.utils.data import Dataset

from data.examples import DataError, Example


class GroupedDataset(Dataset):
    """examples -> dicts {query, prompt, passages: [G texts, positive first], teacher_scores: [G] | None, label,
    index}."""

    def __init__(self, examples: list[Example], group_size: int = 8, seed: int = 42, needs_scores: bool = False):
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if not examples:
            raise DataError("no training examples")
        self.examples, self.group_size, self.seed, self.epoch = examples, group_size, seed, 0
        self.needs_scores = needs_scores
        if needs_scores:
            for ex in examples:
                if ex.pos_scores is None or (group_size > 1 and ex.neg_scores is None):
                    raise DataError(f"{ex.source}: field 'pos_scores'/'neg_scores' missing; the distill loss "
                                    "needs teacher scores on every row (scripts/score_with_teacher.py adds them)")
                if len(ex.neg) < group_size - 1:
                    raise DataError(f"{ex.source}: field 'neg' has {len(ex.neg)} scored negatives; distillation "
                                    f"with --group-size {group_size} needs {group_size - 1} per row")
        # Pool for random negatives when a row has too few of its own: every passage text in the data.
        self._pool = sorted({t for ex in examples for t in ex.pos + ex.neg})

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 1_000_000_007 + i)
        pos_i = rng.randrange(len(ex.pos))
        passages, scores = [ex.pos[pos_i]], [ex.pos_scores[pos_i]] if ex.pos_scores else None
        want = self.group_size - 1
        if want:
            picked = rng.sample(range(len(ex.neg)), want) if len(ex.neg) >= want else list(range(len(ex.neg)))
            passages += [ex.neg[j] for j in picked]
            if scores is not None and ex.neg_scores is not None:
                scores += [ex.neg_scores[j] for j in picked]
            passages += self._random_negatives(rng, ex, want - len(picked))
        return {"query": ex.query, "prompt": ex.prompt, "passages": passages,
                "teacher_scores": scores if self.needs_scores else None, "label": ex.label, "index": i}

    def _random_negatives(self, rng: random.Random, ex: Example, k: int) -> list[str]:
        if k <= 0:
            return []
        banned = set(ex.pos) | set(ex.neg) | {ex.query}
        if len(self._pool) - len(banned & set(self._pool)) < k:
            raise DataError(f"{ex.source}: needs {k} random negatives but the data has too few other passages")
        out: list[str] = []
        while len(out) < k:
            t = self._pool[rng.randrange(len(self._pool))]
            if t not in banned:
                banned.add(t)
                out.append(t)
        return out
