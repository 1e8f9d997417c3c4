"""Judged triplets -> the trainer's BGE JSONL: {query: anchor, pos: [chosen], neg: [the other choice]}.

Triplets whose reply was neither A nor B are left out (counted by `run_judge`). With `self_pairs`, every distinct
anchor also gets a row {query: anchor, pos: [anchor], neg: []}: the (anchor, anchor) self-pair variant the
project's issue 16 attributes to ClusterLLM. Under train.py's in-batch-negative losses it is SimCSE's objective
(the two encodings differ only by dropout): it keeps each anchor apart from the batch's other texts while the
judged rows pull it towards its chosen neighbour; with --group-size 2 train.py adds one random negative from the
data. (ClusterLLM's public `convert_triplet_self.py` is a different thing: there the base embedding, not the
LLM, picks the positive — `judges.EmbeddingJudge` here.)
"""
from __future__ import annotations

import os
from typing import Sequence

from pipelines.cluster_triplets.run_judge import Judgement
from storage.files import write_jsonl


def training_rows(judgements: list[Judgement], texts: Sequence[str], self_pairs: bool = False) -> list[dict]:
    rows, anchors = [], []
    for j in judgements:
        if j.choice is None:
            continue
        t = j.triplet
        chosen, other = (t.a, t.b) if j.choice == "A" else (t.b, t.a)
        rows.append({"query": texts[t.anchor], "pos": [texts[chosen]], "neg": [texts[other]]})
        anchors.append(t.anchor)
    if self_pairs:
        for anchor in dict.fromkeys(anchors):  # distinct, in first-seen order
            rows.append({"query": texts[anchor], "pos": [texts[anchor]], "neg": []})
    return rows


def write_rows(path: str | os.PathLike, rows: list[dict]) -> int:
    """JSONL written whole or not at all (storage/files.py); the chain's own file in its output folder, so an
    earlier one is replaced."""
    return write_jsonl(path, rows, overwrite=True)
