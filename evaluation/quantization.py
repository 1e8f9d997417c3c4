"""int8 and binary embeddings for evaluation: codes, search over a quantized corpus, float rescoring.

The conventions are sentence-transformers' (`sentence_transformers/util/quantization.py`, 6.2), except where said:
- int8, per dimension j: (min_j, max_j) over calibration embeddings, step_j = (max_j − min_j) / 255 (1 where 0),
  code = clip(floor((x − min_j) / step_j), 0, 255) − 128; dequantized (code + 128) · step_j + min_j, the bucket's
  lower edge, as its `_dequantize_embeddings`. Calibration: the corpus embeddings, which is what
  `quantize_embeddings(corpus, "int8")` uses when given no ranges; queries are quantized with the corpus's ranges.
  Differs: its `semantic_search_*` left without ranges calibrates the queries on the query batch itself — a served
  index has one calibration and a query arrives alone. Computed in float64 (it: float32), so a value within float32
  rounding of a bucket edge can land one bucket apart.
- binary: bit = x > 0, packed by np.packbits into ⌈d/8⌉ bytes a row (the pad bits are 0 on both sides, so they never
  count); first stage by Hamming distance with faiss `IndexBinaryFlat`, as its `semantic_search_faiss`. We report
  that stage's score as the cosine of the ±1 vectors, 1 − 2·Hamming/d.
- int8 first stage: the dot product of the signed codes (its usearch "i8" inner-product index).
- rescoring (Yamada et al. 2021, arXiv 2106.00882, as sentence-transformers does it): the top k·multiplier
  candidates of the first stage are scored again with the float query, q · dequantized code (int8) or q · s with
  s = ±1 from the bits (binary). Differs: it multiplies by the unpacked {0, 1} bits; q · s = 2·q · b − Σq, so the
  order for a query is the same and the ±1 score reads like the float one.
Ties: which of several equal first-stage scores make the cut at a list's end is numpy's argpartition's or faiss's
choice; inside a list the order does not matter, since mteb's pytrec_eval orders equal scores by document id (the
trec_eval rule).
"""
from __future__ import annotations

import numpy as np

PRECISIONS = ("int8", "binary")
_CHUNK_ELEMENTS = 1 << 24  # query chunks keep each float64 score / candidate block near 128 MiB


def int8_ranges(calibration: np.ndarray) -> np.ndarray:
    """[N, D] -> [2, D] float64: per-dimension min and max of the calibration embeddings."""
    calibration = np.asarray(calibration, dtype=np.float64)
    if calibration.ndim != 2 or len(calibration) < 2:
        raise ValueError(f"int8 ranges need at least 2 calibration embeddings, got shape {calibration.shape}")
    return np.stack([calibration.min(axis=0), calibration.max(axis=0)])


def _steps(ranges: np.ndarray) -> np.ndarray:
    steps = (ranges[1] - ranges[0]) / 255
    return np.where(steps == 0, 1.0, steps)


def quantize_int8(embeddings: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """[N, D] float -> [N, D] int8 codes with `ranges` from `int8_ranges` (values outside them are clipped)."""
    x = np.asarray(embeddings, dtype=np.float64)
    buckets = np.clip(np.floor((x - ranges[0]) / _steps(ranges)), 0, 255)
    return (buckets - 128).astype(np.int8)


def dequantize_int8(codes: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """int8 codes [..., D] -> float64 [..., D]: each code's bucket lower edge."""
    return (codes.astype(np.float64) + 128) * _steps(ranges) + ranges[0]


def pack_signs(embeddings: np.ndarray) -> np.ndarray:
    """[N, D] float -> [N, ⌈D/8⌉] uint8: bit = value > 0, packed big-endian by np.packbits."""
    return np.packbits(np.asarray(embeddings) > 0, axis=-1)


def unpack_signs(bits: np.ndarray, dim: int) -> np.ndarray:
    """Packed bits [..., ⌈D/8⌉] -> float64 ±1 [..., D] (+1 where the value was > 0)."""
    return np.unpackbits(bits, axis=-1)[..., :dim].astype(np.float64) * 2 - 1


def quantized_view(embeddings: np.ndarray, precision: str, calibration: np.ndarray) -> np.ndarray:
    """What a pair's similarity sees after quantization -> float32 [N, D]: the dequantized int8 vectors (ranges from
    `calibration`), or the ±1 sign vectors for binary, whose cosine is 1 − 2·Hamming/d."""
    x = np.asarray(embeddings)
    if precision == "int8":
        ranges = int8_ranges(calibration)
        return dequantize_int8(quantize_int8(x, ranges), ranges).astype(np.float32)
    if precision == "binary":
        return unpack_signs(pack_signs(x), x.shape[-1]).astype(np.float32)
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def binary_first_stage(query_bits: np.ndarray, corpus_bits: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming search (faiss IndexBinaryFlat) -> (distances [Q, n] int, corpus indices [Q, n]), nearest first."""
    import faiss

    index = faiss.IndexBinaryFlat(corpus_bits.shape[1] * 8)
    index.add(np.ascontiguousarray(corpus_bits))
    distances, indices = index.search(np.ascontiguousarray(query_bits), min(n, len(corpus_bits)))
    return distances.astype(np.int64), indices.astype(np.int64)


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n highest scores of each row, highest first, ties by position."""
    if n >= scores.shape[1]:
        return np.argsort(-scores, axis=1, kind="stable")
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)), axis=-1)
    return np.take_along_axis(part, order, axis=1)


def quantized_search(queries: np.ndarray, corpus: np.ndarray, precision: str, top_k: int,
                     rescore_multiplier: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Float queries [Q, D] against a corpus [N, D] quantized to `precision` -> (scores [Q, k], indices [Q, k]),
    best first, k = min(top_k, N).

    The corpus is calibrated (int8) and quantized, each query quantized the same way for the first stage (int8: dot
    product of the codes; binary: Hamming). With `rescore_multiplier` m, that stage's top k·m are re-scored by the
    float query against the dequantized / ±1 corpus vectors and the best k of them returned.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if rescore_multiplier is not None and rescore_multiplier < 1:
        raise ValueError(f"rescore_multiplier {rescore_multiplier}: must be ≥ 1")
    queries = np.asarray(queries, dtype=np.float64)
    corpus = np.asarray(corpus, dtype=np.float64)
    n_docs, dim = corpus.shape
    k = min(top_k, n_docs)
    depth = min(k * rescore_multiplier, n_docs) if rescore_multiplier else k
    if precision == "int8":
        ranges = int8_ranges(corpus)
        corpus_codes = quantize_int8(corpus, ranges)
        corpus_codes64 = corpus_codes.astype(np.float64)  # products of codes are exact integers in float64
        query_codes = quantize_int8(queries, ranges)
    else:
        corpus_bits = pack_signs(corpus)
        query_bits = pack_signs(queries)
    chunk = max(1, _CHUNK_ELEMENTS // (max(n_docs, depth * dim)))
    all_scores, all_indices = [], []
    for s in range(0, len(queries), chunk):
        if precision == "int8":
            first = query_codes[s:s + chunk].astype(np.float64) @ corpus_codes64.T  # [q, N]
            candidates = _top(first, depth)  # [q, depth]
            scores = np.take_along_axis(first, candidates, axis=1)
        else:
            hamming, candidates = binary_first_stage(query_bits[s:s + chunk], corpus_bits, depth)  # [q, depth]
            scores = 1 - 2 * hamming / dim
        if rescore_multiplier:
            vectors = (dequantize_int8(corpus_codes[candidates], ranges) if precision == "int8"
                       else unpack_signs(corpus_bits[candidates], dim))  # [q, depth, D]
            scores = np.einsum("qd,qnd->qn", queries[s:s + chunk], vectors)  # [q, depth]
            order = np.argsort(-scores, axis=1, kind="stable")
            candidates = np.take_along_axis(candidates, order, axis=1)
            scores = np.take_along_axis(scores, order, axis=1)
        all_scores.append(scores[:, :k])
        all_indices.append(candidates[:, :k])
    return np.concatenate(all_scores), np.concatenate(all_indices)
