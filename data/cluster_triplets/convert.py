"""Judged triplets -> the trainer's BGE JSONL: {query: anchor, pos: [chosen], neg: [the other choice]}.

Triplets whose reply was neither A nor B are left out (counted by `judging`). With `self_pairs`, every distinct
anchor also gets a row {query: anchor, pos: [anchor], neg: []}: the (anchor, anchor) self-pair variant the
project's issue 16 attributes to ClusterLLM. Under train.py's in-batch-negative losses it is SimCSE's objective
(the two encodings differ only by dropout): it keeps each anchor apart from the batch's other texts while the
judged rows pull it towards its chosen neighbour; with --group-size 2 train.py adds one random negative from the
data. (ClusterLLM's public `convert_triplet_self.py` is a different thing: there the base embedding, not the
LLM, picks the positive — `judges.EmbeddingJudge` here.)
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

from data.cluster_triplets.judging import Judgement


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
    """JSONL written to a temporary file and renamed into place: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return len(rows)
