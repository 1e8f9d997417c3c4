"""A training row, declared once: `Example`. What else is written about a row is derived from its fields here —
the content digest (raw files and prepared corpora), the prepared corpus's Arrow columns, which fields a dataset
item carries as they are, and the teacher-score checks of distillation.

Adding a field: declare it on `Example` with its type and default, and fill it in the parser
(data/examples.py `parse_row`); README "Extending" lists the rest.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from data.row_kind import RowKind
from data.tables import DataError, OptionError

BOOKKEEPING = {"bookkeeping": True}  # a field about where a row came from, not part of its content


@dataclass
class Example:
    query: str
    pos: list[str]
    neg: list[str] = field(default_factory=list)
    pos_scores: list[float] | None = None
    neg_scores: list[float] | None = None
    prompt: str | None = None
    label: float | int | None = None  # NLI class id (softmax loss) or a 0-1 similarity (cosine loss)
    source: str = field(default="", metadata=BOOKKEEPING)  # "file:line", for messages
    # position of its training source (same-source batches, per-source weights)
    file_index: int = field(default=0, metadata=BOOKKEEPING)


CONTENT_FIELDS = tuple(f.name for f in dataclasses.fields(Example) if not f.metadata.get("bookkeeping"))
# sampled into an item's `passages` / `teacher_scores` (data/groups.py); every other content field is carried as is
GROUP_FIELDS = ("pos", "neg", "pos_scores", "neg_scores")
ITEM_FIELDS = tuple(f for f in CONTENT_FIELDS if f not in GROUP_FIELDS)


# ------------------------------------------------------------------------------------------ digest
class Digest:
    """SHA-256 over each example's content fields and source position, in order -> 16 hex digits. Raw files
    (`examples_digest`) and a prepared corpus (fed row by row while it is written) get the same value; a resumed
    run compares it (the sampler's fingerprint)."""

    def __init__(self):
        self._sha = hashlib.sha256()

    def update(self, ex: Example) -> None:
        values = [getattr(ex, f) for f in CONTENT_FIELDS] + [ex.file_index]
        self._sha.update(json.dumps(values, ensure_ascii=False).encode())

    def hexdigest(self) -> str:
        return self._sha.hexdigest()[:16]


def examples_digest(examples) -> str:
    digest = Digest()
    for ex in examples:
        digest.update(ex)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ stored columns
def _arrow_type(hint):
    """The Arrow type of a field's annotation: str -> string, list[X] -> list of X, a union of numbers -> float64
    (None is a missing value)."""
    import pyarrow as pa

    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    if float in args and set(args) <= {int, float}:
        return pa.float64()
    if len(args) != 1:
        raise TypeError(f"no Arrow type for {hint}")
    (t,) = args
    if typing.get_origin(t) is list:
        return pa.list_(_arrow_type(typing.get_args(t)[0]))
    return {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_()}[t]


def content_arrow_fields() -> list:
    """pyarrow fields of the content of a row, in declaration order (the prepared corpus's first columns)."""
    import pyarrow as pa

    hints = typing.get_type_hints(Example)
    return [pa.field(name, _arrow_type(hints[name])) for name in CONTENT_FIELDS]


def stored_values(ex: Example) -> dict:
    """An example's content as stored in Arrow columns (numbers as floats where the column is float64)."""
    out = {f: getattr(ex, f) for f in CONTENT_FIELDS}
    if out["label"] is not None:
        out["label"] = float(out["label"])
    return out


def example_from_stored(row: dict, rows: RowKind, source: str, file_index: int) -> Example:
    """The Example a stored row holds; NLI labels are class ids again."""
    values = {f: row[f] for f in CONTENT_FIELDS}
    if values["label"] is not None and rows is RowKind.NLI_PAIRS:
        values["label"] = int(values["label"])
    return Example(**values, source=source, file_index=file_index)


# ------------------------------------------------------------------------------------------ row checks
def scored_flags(ex: Example) -> int:
    """Bit 0: pos_scores present, bit 1: neg_scores present (a prepared corpus stores it: index/scored.npy)."""
    return int(ex.pos_scores is not None) | int(ex.neg_scores is not None) << 1


def check_teacher_scores(scored: np.ndarray, neg_count: np.ndarray, group_size: int,
                         where: Callable[[int], str]) -> None:
    """DataError naming the first row (where(i) = its file:line) that distillation cannot use: teacher scores
    missing (`scored_flags`: pos_scores, and neg_scores when the group has negatives), or fewer hard negatives
    than the group needs."""
    need = 3 if group_size > 1 else 1
    missing = np.flatnonzero(np.asarray(scored) & need != need)
    if len(missing):
        raise DataError(f"{where(int(missing[0]))}: field 'pos_scores'/'neg_scores' missing; the distill loss "
                        "needs teacher scores on every row (scripts/score_with_teacher.py adds them)")
    short = np.flatnonzero(np.asarray(neg_count) < group_size - 1)
    if len(short):
        i = int(short[0])
        raise OptionError("group_size", f"{where(i)}: field 'neg' has {int(neg_count[i])} scored negatives; "
                                        f"distillation with {{group_size}} {group_size} needs {group_size - 1} per row")
