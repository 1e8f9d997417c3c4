"""Hard-negative mining, BGE style: the core of scripts/mine_hard_negatives.py (also timed by
benchmarks/bench_mining.py). The script's docstring describes the method."""
from __future__ import annotations

import random
from collections import Counter

import torch

from data.examples import DataError, Example
from pipelines.corpus_search import Corpus, encode_passages_cached, passage_embeddings, query_texts, search


def mine(model, examples: list[Example], corpus: Corpus, *, start: int, end: int, negative_number: int,
         max_pos_ratio: float | None = None, seed: int = 42, cache_dir: str | None = None, batch_size: int = 64,
         backend: str = "auto", report: Counter | None = None, corpus_emb: torch.Tensor | None = None) -> list[Example]:
    """Examples with `neg` replaced by mined negatives (and teacher scores dropped); counts go into `report`.

    corpus_emb: precomputed passage embeddings [N, D] of corpus.texts (default: encoded, or read from the cache).
    """
    report = Counter() if report is None else report
    if start >= len(corpus):
        raise DataError(f"--range {start}-{end} starts at rank {start} but the corpus has only {len(corpus)} passages")
    if end > len(corpus):
        report[f"range end {end} beyond the corpus: searched all {len(corpus)} passages"] += 1
        end = len(corpus)
    if len(corpus) <= negative_number:
        raise DataError(f"the corpus has {len(corpus)} passages; --negative-number {negative_number} needs more "
                        "than that (positives are excluded)")
    s = model.settings
    if corpus_emb is None:
        corpus_emb = encode_passages_cached(model, corpus.texts, cache_dir, batch_size)  # [N, D]
    elif corpus_emb.shape[0] != len(corpus):
        raise ValueError(f"corpus_emb has {corpus_emb.shape[0]} rows for {len(corpus)} passages")
    q_emb = model.encode(query_texts(examples, s), batch_size, "", s.query_max_len, show_progress=True)
    scores, ids = search(q_emb, corpus_emb, end, backend)  # [Q, end]
    pos_scores = None
    if max_pos_ratio is not None:
        pos_texts = [t for ex in examples for t in ex.pos]
        pos_emb = passage_embeddings(model, pos_texts, corpus, corpus_emb, batch_size)  # [P, D]
        offsets = [0]
        for ex in examples:
            offsets.append(offsets[-1] + len(ex.pos))
        pos_scores = [(q_emb[i] @ pos_emb[offsets[i]:offsets[i + 1]].T).min().item() for i in range(len(examples))]

    rng = random.Random(seed)
    out = []
    for i, ex in enumerate(examples):
        banned = {corpus.index[t] for t in ex.pos + [ex.query] if t in corpus.index}
        cands = [(int(j), float(sc)) for j, sc in zip(ids[i, start:end], scores[i, start:end]) if int(j) not in banned]
        if pos_scores is not None:
            limit = max_pos_ratio * pos_scores[i]
            kept = [(j, sc) for j, sc in cands if sc <= limit]
            report["candidates dropped by --max-pos-ratio (scored too close to the positive)"] += len(cands) - len(kept)
            cands = kept
        picked = [j for j, _ in cands]
        if len(picked) > negative_number:
            picked = rng.sample(picked, negative_number)
        elif len(picked) < negative_number:
            extra = random_passages(rng, len(corpus), banned | set(picked), negative_number - len(picked))
            report["rows topped up with random corpus passages"] += 1
            report["random passages added"] += len(extra)
            if len(picked) + len(extra) < negative_number:
                report[f"rows with fewer than {negative_number} negatives (corpus exhausted)"] += 1
            picked += extra
        out.append(Example(ex.query, ex.pos, [corpus.texts[j] for j in picked], prompt=ex.prompt, source=ex.source))
    return out


def random_passages(rng: random.Random, n: int, banned: set[int], k: int) -> list[int]:
    """k distinct random corpus rows outside `banned` (fewer only when the corpus has no more)."""
    available = n - len(banned)
    if available <= k:
        return [j for j in range(n) if j not in banned]
    picked: list[int] = []
    taken = set(banned)
    while len(picked) < k:
        j = rng.randrange(n)
        if j not in taken:
            taken.add(j)
            picked.append(j)
    return picked
