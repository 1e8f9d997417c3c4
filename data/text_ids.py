"""Texts as 64-bit hashes, for keeping duplicate texts out of a batch (data/batch_planner.py) by comparing ints.

`text_hash` of a text is the same in every process, run and machine; a row's hashes are those of its query and
positives (`keys`) and of its hard negatives (`negs`), held for all rows as CSR arrays (`TextIds`), computed from
examples (data/sampler_inputs.py) or memory-mapped from a prepared corpus (data/prepared/). Two different texts share
a hash with probability about 2⁻⁶⁴ per pair; such a collision can only defer a row needlessly, never let a duplicate
into a batch. `rows_that_can_collide` flags the few rows the planner ever has to look at.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def text_hash(text: str) -> int:
    """64-bit hash of a text (BLAKE2b, 8 bytes, little-endian): the same in every process, run and machine."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass
class TextIds:
    """Per example, the 64-bit hashes of its query and positives (`keys`) and of its hard negatives (`negs`), as
    CSR arrays: example i's keys are key_hashes[key_offsets[i]:key_offsets[i+1]]. Each example's keys are
    distinct, and its negatives are distinct and not among its own keys (an example never collides with itself).
    The arrays may be memory-mapped (a prepared corpus); the planner reads them only for rows that can collide."""

    key_offsets: np.ndarray  # [N+1] int64
    key_hashes: np.ndarray  # [K] uint64
    neg_offsets: np.ndarray  # [N+1] int64
    neg_hashes: np.ndarray  # [M] uint64
    can_collide: np.ndarray | None = None  # [N] bool, `rows_that_can_collide`; None = computed on first use

    def __len__(self) -> int:
        return len(self.key_offsets) - 1

    @classmethod
    def from_lists(cls, keys: Sequence[Sequence[int]], negs: Sequence[Sequence[int]]) -> "TextIds":
        key_rows = [list(dict.fromkeys(k)) for k in keys]
        neg_rows = []
        for k, n in zip(key_rows, negs):
            own = set(k)
            neg_rows.append([t for t in dict.fromkeys(n) if t not in own])

        def csr(rows):
            offsets = np.zeros(len(rows) + 1, dtype=np.int64)
            np.cumsum([len(r) for r in rows], out=offsets[1:])
            return offsets, np.fromiter((t for r in rows for t in r), dtype=np.uint64, count=int(offsets[-1]))

        return cls(*csr(key_rows), *csr(neg_rows))

    def keys(self, i: int) -> list[int]:
        return self.key_hashes[self.key_offsets[i]:self.key_offsets[i + 1]].tolist()

    def negs(self, i: int) -> list[int]:
        return self.neg_hashes[self.neg_offsets[i]:self.neg_offsets[i + 1]].tolist()

    def collision_rows(self) -> np.ndarray:
        if self.can_collide is None:
            self.can_collide = rows_that_can_collide(self.key_offsets, self.key_hashes, self.neg_offsets,
                                                     self.neg_hashes)
        return self.can_collide

    def gather(self, items: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(position in `items`, hash) of every key / neg hash of the given examples, in order of `items`."""
        offsets, hashes = ((self.key_offsets, self.key_hashes) if which == "keys"
                           else (self.neg_offsets, self.neg_hashes))
        start, count = offsets[items], offsets[items + 1] - offsets[items]
        pos = np.repeat(np.arange(len(items)), count)
        within = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        return pos, hashes[np.repeat(start, count) + within]


def conflicting_groups(hashes: np.ndarray, is_key: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
    """Which entries (hash, is_key) share a hash with another example in a way a batch may not hold: two keys (a
    query or positive twice), or a key and a hard negative. Entries are grouped by hash (and by `group`, e.g. the
    batch, when given); -> [entries] bool, True for every entry of a conflicting group. Hard negatives may repeat
    among themselves; an example's own texts never conflict (`TextIds` keeps them distinct)."""
    order = np.argsort(hashes) if group is None else np.lexsort((hashes, group))
    h = hashes[order]
    new = np.ones(len(h), dtype=bool)
    new[1:] = h[1:] != h[:-1]
    if group is not None:
        g = group[order]
        new[1:] |= g[1:] != g[:-1]
    starts = np.flatnonzero(new)
    keys = np.add.reduceat(is_key[order].astype(np.int64), starts) if len(h) else np.zeros(0, np.int64)
    total = np.diff(np.append(starts, len(h)))
    bad = (keys >= 2) | ((keys >= 1) & (total > keys))
    out = np.zeros(len(h), dtype=bool)
    out[order] = np.repeat(bad, total)
    return out


def rows_that_can_collide(key_offsets: np.ndarray, key_hashes: np.ndarray, neg_offsets: np.ndarray,
                          neg_hashes: np.ndarray, entries_per_part: int = 1 << 24) -> np.ndarray:
    """[N] bool: the rows some text of which another row also holds, as a key where either side is a key (the
    only rows that can ever be deferred). Most rows of a real corpus are distinct; the planner checks only the
    flagged ones, so planning a clean epoch costs a few array passes instead of a sort of every batch's hashes.
    Hashes are split into parts by value (each part at most entries_per_part entries: bounded memory at 100M+
    rows, arrays may be memory-mapped); O(H log H) time for H hashes."""
    n = len(key_offsets) - 1
    out = np.zeros(n, dtype=bool)
    parts = max(1, -(-(len(key_hashes) + len(neg_hashes)) // entries_per_part))
    for part in range(parts):
        rows, hashes, is_key = [], [], []
        for offsets, values, key in ((key_offsets, key_hashes, True), (neg_offsets, neg_hashes, False)):
            at = np.flatnonzero(values % np.uint64(parts) == part) if parts > 1 else np.arange(len(values))
            rows.append(np.searchsorted(offsets, at, side="right") - 1)
            hashes.append(np.asarray(values[at]))
            is_key.append(np.full(len(at), key))
        rows_p = np.concatenate(rows)
        out[rows_p[conflicting_groups(np.concatenate(hashes), np.concatenate(is_key))]] = True
    return out



def row_text_hashes(query: str, pos: list[str], neg: list[str]) -> tuple[list[int], list[int]]:
    """(hashes of the query and positives, hashes of the hard negatives that are not among them), each distinct."""
    keys = list(dict.fromkeys([text_hash(query), *map(text_hash, pos)]))
    own = set(keys)
    return keys, [h for h in dict.fromkeys(map(text_hash, neg)) if h not in own]
