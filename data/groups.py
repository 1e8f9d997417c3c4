"""Per-epoch groups: each query with 1 positive and group_size-1 negatives, as BGE samples them.

Item i of epoch e is drawn from a generator seeded by (seed, epoch, i) alone, so any item can be rebuilt
exactly after a restart without replaying the ones before it (the resume path relies on this).

`GroupedDataset` holds `Example`s (raw files); `PreparedGroupedDataset` reads rows by index from a memory-mapped
prepared corpus (data/prepared/), so DataLoader workers read only the rows of their batches. Both draw the
positive and the hard negatives the same way. They differ only for rows with fewer hard negatives than the group
needs: GroupedDataset draws the missing ones from the sorted set of every passage text in the data, which a corpus
of 100M rows cannot hold, so PreparedGroupedDataset draws a random passage of a random row instead.
"""
from __future__ import annotations

import random

import numpy as np
from torch.utils.data import Dataset

from data.row_kind import RowKind
from data.rows import ITEM_FIELDS, Example, check_teacher_scores, example_from_stored, scored_flags
from data.tables import DataError

RANDOM_NEGATIVE_TRIES = 100  # × negatives needed: draws before a prepared corpus is declared too small


class _Groups(Dataset):
    def __init__(self, group_size: int, seed: int, rows: RowKind):
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size, self.seed, self.epoch, self.rows = group_size, seed, 0, rows

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def example(self, i: int) -> Example:
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict:
        ex = self.example(i)
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
        # the row's other content fields (query, prompt, label, ...) as they are: data/rows.py ITEM_FIELDS
        return {**{f: getattr(ex, f) for f in ITEM_FIELDS}, "passages": passages,
                "teacher_scores": scores if self.rows.needs_scores else None, "index": i}

    def _random_negatives(self, rng: random.Random, ex: Example, k: int) -> list[str]:
        raise NotImplementedError


class GroupedDataset(_Groups):
    """examples -> dicts {query, prompt, label (ITEM_FIELDS), passages: [G texts, positive first], teacher_scores:
    [G] | None, index}. rows: what the loss trains on (SCORED_GROUPS: every row must carry teacher scores)."""

    def __init__(self, examples: list[Example], group_size: int = 8, seed: int = 42,
                 rows: RowKind = RowKind.GROUPS):
        super().__init__(group_size, seed, rows)
        if not examples:
            raise DataError("no training examples")
        self.examples = examples
        if rows.needs_scores:
            check_teacher_scores(np.fromiter(map(scored_flags, examples), np.uint8, len(examples)),
                                 np.fromiter((len(ex.neg) for ex in examples), np.int64, len(examples)),
                                 group_size, lambda i: examples[i].source)
        # Pool for random negatives when a row has too few of its own: every passage text in the data.
        self._pool = sorted({t for ex in examples for t in ex.pos + ex.neg})

    def __len__(self) -> int:
        return len(self.examples)

    def example(self, i: int) -> Example:
        return self.examples[i]

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


class PreparedGroupedDataset(_Groups):
    """The same items from a PreparedCorpus, row by row (memory-mapped; nothing per row is held in memory).
    With a pretokenized corpus, items also carry `query_ids` / `passage_ids` and the collator skips tokenising."""

    def __init__(self, corpus, group_size: int = 8, seed: int = 42, rows: RowKind = RowKind.GROUPS):
        super().__init__(group_size, seed, rows)
        corpus.check_rows(group_size, rows)
        self.corpus = corpus

    def __len__(self) -> int:
        return len(self.corpus)

    def _row(self, i: int) -> dict:
        return self.corpus.row(int(i))

    def example(self, i: int) -> Example:
        r = self._row(i)
        return example_from_stored(r, self.rows, source=self.corpus.location(r), file_index=r["source"])

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        if self.corpus.pretokenized:
            r, ex = self._row(i), self.example(i)
            texts = ex.pos + ex.neg
            item["query_ids"] = r["query_ids"]
            item["passage_ids"] = [r["passage_ids"][texts.index(t)] if t in texts else None
                                   for t in item["passages"]]
        return item

    def _random_negatives(self, rng: random.Random, ex: Example, k: int) -> list[str]:
        if k <= 0:
            return []
        banned = set(ex.pos) | set(ex.neg) | {ex.query}
        out: list[str] = []
        for _ in range(RANDOM_NEGATIVE_TRIES * k):
            other = self.example(rng.randrange(len(self)))
            texts = other.pos + other.neg
            t = texts[rng.randrange(len(texts))]
            if t not in banned:
                banned.add(t)
                out.append(t)
                if len(out) == k:
                    return out
        raise DataError(f"{ex.source}: needs {k} random negatives but {RANDOM_NEGATIVE_TRIES * k} random passages "
                        "of the corpus were all its own texts or already drawn; the corpus has too few other passages")
