"""A clustering file: one text per row with its gold label (`text` plus `label`, `labels` or `category`).

The label is never used to sample triplets; only the evaluation and the oracle judges read it.
"""
from __future__ import annotations

from dataclasses import dataclass

from data.examples import DataError, iter_raw_rows

LABEL_COLUMNS = ("label", "labels", "category")  # the columns evaluate.py's clustering task accepts


@dataclass
class ClusteringTexts:
    texts: list[str]
    labels: list[str]
    path: str


def read_clustering_texts(path: str) -> ClusteringTexts:
    """Every row of `path` (.csv/.tsv/.jsonl); a missing or empty field stops with `file:line: field ...`."""
    texts, labels, label_column = [], [], None
    for where, row in iter_raw_rows(str(path)):
        if label_column is None:
            label_column = next((c for c in LABEL_COLUMNS if c in row), None)
            if label_column is None:
                raise DataError(f"{where}: no label column; expected one of {', '.join(LABEL_COLUMNS)} "
                                f"(found {', '.join(row) or 'none'})")
        text, label = row.get("text"), row.get(label_column)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field 'text' is missing or empty")
        if label is None or isinstance(label, (dict, list)) or not str(label).strip():
            raise DataError(f"{where}: field '{label_column}' is missing or empty")
        texts.append(text)
        labels.append(str(label).strip())
    if not texts:
        raise DataError(f"{path}: no rows")
    if len(set(labels)) < 2:
        raise DataError(f"{path}: all {len(texts)} rows have the label {labels[0]!r}; clustering needs at least "
                        "2 distinct labels")
    return ClusteringTexts(texts, labels, str(path))
