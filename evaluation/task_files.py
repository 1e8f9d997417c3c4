"""Readers for local evaluation files, validating everything up front.

Each reader returns plain Python data or raises exactly one error that names the file, the line when there is one,
and the problem — before any model is loaded or any text encoded, so a typo in a path costs seconds, not an
encoding pass. Formats:

- tables: `.tsv`, `.csv` or `.jsonl`, read by data/tables.py (the reader training uses too).
- STS: `sentence1, sentence2, score` (any numeric range).
- labelled texts (classification splits, clustering): `text` plus a label column (`label`, `labels` or `category`).
- pair classification (NLI): `sentence1, sentence2, gold_label` (entailment → 1, neutral/contradiction → 0)
  or a 0/1 `label` column.
- retrieval: a BEIR folder — `corpus.jsonl` (`_id`, optional `title`, `text`), `queries.jsonl` (`_id`, `text`),
  `qrels/<split>.tsv` (`query-id, corpus-id, score`).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from data.tables import TableError, iter_table, table_format

LABEL_COLUMNS = ("label", "labels", "category")
# NLI gold labels -> pair-classification labels: entailment is the positive class (training's 3-way class ids are
# data/examples.py NLI_CLASS_IDS).
NLI_IS_POSITIVE = {"entailment": 1, "neutral": 0, "contradiction": 0}
TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl")  # where a task folder's splits are looked for


class TaskDataError(TableError):
    """A task file exists but cannot be used as it is. The message reads `path[:line]: problem`."""


class TaskFileNotFoundError(FileNotFoundError):
    """A file or folder a task needs does not exist. The message names it and what it should hold."""

    def __init__(self, path: str | Path, what: str):
        self.path = str(path)
        super().__init__(f"{path}: not found ({what})")


# ------------------------------------------------------------------ generic tables
def read_table(path: str | Path, required: Sequence[str] = ()) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a TSV/CSV/JSONL file (data/tables.py) as (line number, {column: value}), checked for the
    `required` columns."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileNotFoundError(path, "a .tsv, .csv or .jsonl file" if not path.is_dir()
                                    else "expected a file, got a folder")
    try:
        rows = list(iter_table(path))
    except TableError as err:
        raise TaskDataError(err.path, err.problem, err.line) from None
    if not rows:
        raise TaskDataError(path, "has no data rows")
    for line, row in rows:
        missing = [c for c in required if c not in row]
        if missing:
            raise TaskDataError(path, f"missing column(s) {', '.join(missing)}; found {', '.join(row) or 'none'}",
                                line if table_format(path) == "jsonl" else None)
    return rows


def _text(path: Path, line: int, row: dict, column: str) -> str:
    value = row[column]
    if not isinstance(value, str):
        raise TaskDataError(path, f"column {column!r} must be text, got {value!r}", line)
    return value


def _number(path: Path, line: int, row: dict, column: str) -> float:
    value = row[column]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TaskDataError(path, f"column {column!r} must be a number, got {value!r}", line) from None
    if not math.isfinite(number):
        raise TaskDataError(path, f"column {column!r} must be finite, got {value!r}", line)
    return number


def _label_column(path: Path, row: dict, candidates: Sequence[str] = LABEL_COLUMNS) -> str:
    for column in candidates:
        if column in row:
            return column
    raise TaskDataError(path, f"label column missing: expected one of {', '.join(candidates)}; found {', '.join(row)}")


# ------------------------------------------------------------------ STS
@dataclass
class STSPairs:
    sentence1: list[str]
    sentence2: list[str]
    scores: list[float]


def read_sts(path: str | Path) -> STSPairs:
    """Sentence pairs with a gold similarity score in any numeric range."""
    path = Path(path)
    rows = read_table(path, ("sentence1", "sentence2", "score"))
    pairs = STSPairs([], [], [])
    for line, row in rows:
        pairs.sentence1.append(_text(path, line, row, "sentence1"))
        pairs.sentence2.append(_text(path, line, row, "sentence2"))
        pairs.scores.append(_number(path, line, row, "score"))
    if min(pairs.scores) == max(pairs.scores):
        raise TaskDataError(path, f"all {len(rows)} scores are {pairs.scores[0]}; a correlation needs varying scores")
    return pairs


# ------------------------------------------------------------------ labelled texts
@dataclass
class LabelledTexts:
    texts: list[str]
    labels: list[str]


def read_labelled_texts(path: str | Path) -> LabelledTexts:
    """`text` plus a label column (`label`, `labels` or `category`); labels are kept as strings."""
    path = Path(path)
    rows = read_table(path, ("text",))
    label_column = _label_column(path, rows[0][1])
    data = LabelledTexts([], [])
    for line, row in rows:
        if label_column not in row:
            raise TaskDataError(path, f"label column {label_column!r} missing", line)
        label = row[label_column]
        if label is None or (isinstance(label, str) and not label.strip()) or isinstance(label, (dict, list)):
            raise TaskDataError(path, f"empty or invalid label {label!r} in column {label_column!r}", line)
        data.texts.append(_text(path, line, row, "text"))
        data.labels.append(str(label).strip())
    return data


@dataclass
class ClassificationData:
    train: LabelledTexts
    test: LabelledTexts
    train_file: Path
    test_file: Path


def read_classification(folder: str | Path) -> ClassificationData:
    """A folder with `train` and `test` tables (.csv, .tsv or .jsonl) of labelled texts."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TaskFileNotFoundError(folder, "a classification folder with train.csv and test.csv")
    files = {split: _find_table(folder, split) for split in ("train", "test")}
    train, test = read_labelled_texts(files["train"]), read_labelled_texts(files["test"])
    if len(set(train.labels)) < 2:
        raise TaskDataError(files["train"], "needs at least 2 distinct labels to train a classifier")
    unseen = sorted(set(test.labels) - set(train.labels))
    if unseen:  # the classifier could never predict them: the score would be silently capped
        raise TaskDataError(files["test"], f"label(s) {', '.join(map(repr, unseen[:5]))}"
                                           f"{' ...' if len(unseen) > 5 else ''} never occur in {files['train'].name}")
    return ClassificationData(train, test, files["train"], files["test"])


def _find_table(folder: Path, stem: str) -> Path:
    for suffix in TABLE_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise TaskFileNotFoundError(folder / f"{stem}.csv", f"the {stem} split ({stem}.csv, {stem}.tsv or {stem}.jsonl)")


# ------------------------------------------------------------------ pair classification
@dataclass
class LabelledPairs:
    sentence1: list[str]
    sentence2: list[str]
    labels: list[int]  # 1 = positive (entailment / paraphrase), 0 = negative


def read_pair_classification(path: str | Path) -> LabelledPairs:
    """NLI pairs (`gold_label`: entailment is positive, neutral and contradiction negative) or 0/1 `label`s."""
    path = Path(path)
    rows = read_table(path, ("sentence1", "sentence2"))
    label_column = _label_column(path, rows[0][1], ("gold_label", "label"))
    pairs = LabelledPairs([], [], [])
    for line, row in rows:
        if label_column not in row:
            raise TaskDataError(path, f"label column {label_column!r} missing", line)
        raw = str(row[label_column]).strip()
        if label_column == "gold_label":
            if raw.lower() not in NLI_IS_POSITIVE:
                raise TaskDataError(path, f"gold_label must be one of {', '.join(NLI_IS_POSITIVE)}, got {raw!r}", line)
            label = NLI_IS_POSITIVE[raw.lower()]
        else:
            if raw not in ("0", "1"):
                raise TaskDataError(path, f"label must be 0 or 1, got {raw!r}", line)
            label = int(raw)
        pairs.sentence1.append(_text(path, line, row, "sentence1"))
        pairs.sentence2.append(_text(path, line, row, "sentence2"))
        pairs.labels.append(label)
    if len(set(pairs.labels)) < 2:
        raise TaskDataError(path, "needs both positive and negative pairs for average precision")
    return pairs


# ------------------------------------------------------------------ retrieval (BEIR)
@dataclass
class RetrievalData:
    corpus: dict[str, tuple[str, str]]  # doc id -> (title, text)
    queries: dict[str, str]  # query id -> text, only queries that have judgements
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}
    files: list[Path]


def qrels_splits(folder: str | Path) -> list[str]:
    """Split names for which `folder/qrels/<split>.tsv` exists."""
    return sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv"))


def read_beir(folder: str | Path, split: str = "test") -> RetrievalData:
    """A BEIR folder; every judged query and document must exist, and the split must have judgements."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TaskFileNotFoundError(folder, "a BEIR folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv")
    corpus_file, queries_file = folder / "corpus.jsonl", folder / "queries.jsonl"
    qrels_file = folder / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        available = qrels_splits(folder)
        raise TaskFileNotFoundError(qrels_file, f"judgements of split {split!r}; available splits: "
                                                f"{', '.join(available) or 'none'}")
    corpus = {}
    for line, row in read_table(corpus_file, ("_id", "text")):
        doc_id = str(row["_id"])
        if doc_id in corpus:
            raise TaskDataError(corpus_file, f"duplicate _id {doc_id!r}", line)
        title = row.get("title") or ""
        if not isinstance(title, str):
            raise TaskDataError(corpus_file, f"column 'title' must be text, got {title!r}", line)
        corpus[doc_id] = (title, _text(corpus_file, line, row, "text"))
    all_queries = {}
    for line, row in read_table(queries_file, ("_id", "text")):
        query_id = str(row["_id"])
        if query_id in all_queries:
            raise TaskDataError(queries_file, f"duplicate _id {query_id!r}", line)
        all_queries[query_id] = _text(queries_file, line, row, "text")
    qrels: dict[str, dict[str, int]] = {}
    for line, row in read_table(qrels_file, ("query-id", "corpus-id", "score")):
        query_id, doc_id = str(row["query-id"]), str(row["corpus-id"])
        if query_id not in all_queries:
            raise TaskDataError(qrels_file, f"query-id {query_id!r} is not in {queries_file.name}", line)
        if doc_id not in corpus:
            raise TaskDataError(qrels_file, f"corpus-id {doc_id!r} is not in {corpus_file.name}", line)
        score = _number(qrels_file, line, row, "score")
        if score != int(score):
            raise TaskDataError(qrels_file, f"score must be an integer relevance, got {row['score']!r}", line)
        qrels.setdefault(query_id, {})[doc_id] = int(score)
    if not any(score > 0 for docs in qrels.values() for score in docs.values()):
        raise TaskDataError(qrels_file, "has no positive judgements (score > 0)")
    queries = {qid: all_queries[qid] for qid in all_queries if qid in qrels}
    return RetrievalData(corpus, queries, qrels, [corpus_file, queries_file, qrels_file])


# ------------------------------------------------------------------ content hash
def content_hash(paths: Iterable[str | Path], length: int = 16) -> str:
    """Hex digest over the bytes of `paths` (in the given order): a dataset revision that changes with the data."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:length]
