"""In-process evaluation for train.py: STS Spearman without mteb's task machinery.

It encodes through `BiEncoderForMTEB.encode_texts` — the same prompts, lengths and `BiEncoder.encode` the mteb path
uses — and scores with the same functions mteb calls (sklearn's paired cosine + scipy's Spearman), so its number
equals `evaluate.py`'s for the same file. No result files, no weight hashing, no dataset objects: cheap enough to
run every few hundred steps.
"""
from __future__ import annotations

from pathlib import Path

from scipy.stats import spearmanr
from sklearn.metrics.pairwise import paired_cosine_distances

from evaluation.mteb_encoder import BiEncoderForMTEB
from evaluation.task_files import read_sts
from models.bi_encoder import BiEncoder


def sts_spearman(model: BiEncoder, path: str | Path, batch_size: int = 32) -> float:
    """Spearman correlation between gold scores and cosine similarity of the pairs in an STS file."""
    pairs = read_sts(path)
    encoder = BiEncoderForMTEB(model)
    name = Path(path).stem  # the local task's name, so task-name prompts resolve as in evaluate.py
    first, second = (encoder.encode_texts(texts, task_name=name, task_type="STS", batch_size=batch_size)
                     for texts in (pairs.sentence1, pairs.sentence2))
    cosine = 1 - paired_cosine_distances(first.numpy(), second.numpy())
    return float(spearmanr(pairs.scores, cosine)[0])
