"""Length buckets: each row's length key and the bucket edges along it (data/batch_planner.py groups by them).

A key is (longest passage in tokens rounded up to 8, query tokens) packed as passage · 2³² + query in one int64
(`pack_length_keys`), so keys sort like (passage, query) tuples; data/sampler_inputs.py computes them from examples,
a prepared corpus stores them (data/prepared/). Any int (e.g. BGE's max length) is a key too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUERY_BITS = 32  # a (passage, query) length key is passage · 2³² + query as one int64


def passage_key(longest_passage: np.ndarray | int):
    """The bucket key's first part: the longest passage in tokens, rounded up to the collator's multiple of 8."""
    return -(-longest_passage // 8) * 8


def pack_length_keys(passage, query):
    """(passage key, query tokens) -> passage · 2³² + query, as int64 (arrays or ints)."""
    return (np.asarray(passage, dtype=np.int64) << QUERY_BITS) | np.asarray(query, dtype=np.int64)


def unpack_length_keys(keys) -> tuple[np.ndarray, np.ndarray]:
    """Packed keys -> (passage key, query tokens)."""
    keys = np.asarray(keys)
    return keys >> QUERY_BITS, keys & ((1 << QUERY_BITS) - 1)


@dataclass(frozen=True)
class EncodedKeys:
    """Length keys already encoded by `encode_length_keys` (e.g. memory-mapped from a prepared corpus)."""

    keys: np.ndarray  # [N] int64
    pairs: bool  # (passage, query) pairs as passage · 2³² + query

    def __len__(self) -> int:
        return len(self.keys)


def encode_length_keys(length_keys) -> tuple[np.ndarray, bool]:
    """Length keys as one sortable int64 per example -> (keys, whether they are (passage, query) pairs).

    Accepts ints (e.g. BGE's max length), (passage, query) tuples, an [N, 2] array of them, or EncodedKeys."""
    if isinstance(length_keys, EncodedKeys):
        return length_keys.keys, length_keys.pairs
    a = np.asarray(length_keys, dtype=np.int64)
    if a.ndim == 2:
        if a.shape[1] != 2 or (a < 0).any() or (a[:, 1] >= 1 << QUERY_BITS).any():
            raise ValueError("length keys must be ints or non-negative (passage, query) pairs")
        return pack_length_keys(a[:, 0], a[:, 1]), True
    return a, False


def quantile_boundaries(keys, num_buckets: int, chunk: int = 1 << 22) -> list:
    """Inclusive upper edges of up to num_buckets buckets of about equal size along the sorted keys.

    Keys are ints (encoded pairs compare like tuples); equal keys always share a bucket, so equal edges merge and a
    bucket can be larger than N / num_buckets. The last bucket is open (every key above the last edge).
    Computed from the keys' histogram, `chunk` keys at a time: memory O(distinct keys + chunk), not O(N).
    """
    if num_buckets < 1:
        raise ValueError(f"number of length buckets must be ≥ 1, got {num_buckets}")
    keys = np.asarray(keys)
    counts: dict[int, int] = {}
    for lo in range(0, len(keys), chunk):
        values, n = np.unique(keys[lo:lo + chunk], return_counts=True)
        for v, c in zip(values.tolist(), n.tolist()):
            counts[v] = counts.get(v, 0) + c
    values = np.array(sorted(counts))
    cum = np.cumsum([counts[v] for v in values.tolist()])
    edges: list = []
    for k in range(1, num_buckets):
        at = (k * len(keys) // num_buckets - 1) % len(keys)  # position in the sorted keys (-1: the last)
        edge = values[np.searchsorted(cum, at, side="right")].item()
        if (not edges or edge > edges[-1]) and edge < values[-1]:
            edges.append(edge)
    return edges



def auto_num_buckets(num_examples: int, global_batch: int, most: int = 64) -> int:
    """Default bucket count: at least 2 global batches per bucket, at most `most` buckets.

    More buckets, less padding; but each bucket must hold whole batches, and the fewer batches a bucket holds the
    less random a batch's company is (and the more leftovers go to mixed batches).
    """
    return max(1, min(most, num_examples // (2 * global_batch)))

