"""Training rows: read files into validated `Example`s, each remembering its file and line for error messages.

Formats (detected from the extension and the columns / keys):
- BGE JSONL `{query, pos: [..], neg: [..], pos_scores?, neg_scores?, prompt?}` (FlagEmbedding's data contract);
- pair / triplet JSONL or TSV/CSV with `anchor, positive[, negative]`;
- NLI TSV/JSONL `sentence1, sentence2, gold_label`: labelled pairs for the `softmax` loss, or turned into
  (premise, entailment, contradiction) groups for the contrastive losses;
- scored pairs TSV/JSONL `sentence1, sentence2, score` (e.g. STS): labelled pairs for the `cosine` loss;
- a local `datasets` folder (`save_to_disk` output or a folder of data files) or a Hub dataset id, whose
  rows follow any of the layouts above.
Bad rows stop the run with `DataError("file:line: field ...: problem")`; with `skip_bad_rows` they are
counted and reported instead, never dropped silently.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field

from data.tables import DataError, iter_table, table_format

FLOAT32_MAX = 3.4028234663852886e38  # teacher scores become float32 tensors

# NLI gold labels -> class ids of the 3-way softmax loss (evaluation's pair classification maps them differently:
# evaluation/task_files.py NLI_IS_POSITIVE).
NLI_CLASS_IDS = {"entailment": 0, "neutral": 1, "contradiction": 2}


@dataclass
class Example:
    query: str
    pos: list[str]
    neg: list[str] = field(default_factory=list)
    pos_scores: list[float] | None = None
    neg_scores: list[float] | None = None
    prompt: str | None = None
    label: float | int | None = None  # NLI class id (softmax loss) or a 0-1 similarity (cosine loss)
    source: str = ""  # "file:line", for messages
    file_index: int = 0  # position of its training file in --train-data (same-file batches, per-file weights)


def examples_digest(examples: list[Example]) -> str:
    """16 hex digits of SHA-256 over every example's content and file, in order (a resumed run checks it)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.query, ex.pos, ex.neg, ex.pos_scores, ex.neg_scores, ex.prompt, ex.label, ex.file_index],
                            ensure_ascii=False).encode())
    return h.hexdigest()[:16]


@dataclass
class LoadReport:
    """What reading produced and what it left out, with the reasons counted."""

    rows: int = 0
    skipped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.rows} rows read"]
        if self.skipped:
            lines.append(f"{sum(self.skipped.values())} rows skipped: " +
                         "; ".join(f"{n} × {why}" for why, n in self.skipped.most_common()))
        return "\n".join(lines + self.notes)


# ------------------------------------------------------------------------------------------ raw rows
def hub_offline() -> bool:
    """Whether the Hugging Face libraries are told to stay offline (they read these variables)."""
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_data_path(path: str) -> None:
    """DataError unless `path` is a file, a folder, or (while online) something that can be a Hub dataset id."""
    if os.path.exists(path):
        if os.path.isdir(path):
            _folder_data_files(path)
        return
    if not looks_like_hub_id(path):
        raise DataError(f"{path}: file not found")
    if hub_offline():
        raise DataError(f"{path}: no such file or folder, and the Hub is offline (HF_HUB_OFFLINE is set), so it "
                        "cannot be a Hub dataset; pass a local path")


def _folder_data_files(path: str) -> None:
    """A plain folder is read by `datasets` with one reader, chosen from its files' extensions: refuse a folder
    whose data files have more than one format, which would silently leave the others out."""
    if any(os.path.exists(os.path.join(path, marker)) for marker in SAVED_DATASET_MARKERS):
        return
    formats: dict[str, list[str]] = {}
    for root, _, names in os.walk(path):
        for name in names:
            kind = DATA_FILE_FORMATS.get(os.path.splitext(name)[1].lower())
            if kind:
                formats.setdefault(kind, []).append(os.path.relpath(os.path.join(root, name), path))
    if len(formats) > 1:
        listed = "; ".join(f"{kind}: {', '.join(sorted(files)[:3])}{' ...' if len(files) > 3 else ''}"
                           for kind, files in sorted(formats.items()))
        raise DataError(f"{path}: the folder holds data files of {len(formats)} formats ({listed}); only one "
                        "would be read. Keep one format per folder, or pass the files as separate --train-data")


SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
DATA_FILE_FORMATS = {".jsonl": "json", ".json": "json", ".tsv": "csv/tsv", ".csv": "csv/tsv", ".txt": "text",
                     ".parquet": "parquet", ".arrow": "arrow"}


def iter_raw_rows(path: str):
    """Yield (line_number, dict) from a JSONL / TSV / CSV file (data/tables.py), a datasets folder or a Hub dataset id."""
    check_data_path(path)
    if os.path.isdir(path) or not os.path.exists(path):
        yield from _iter_dataset(path)
        return
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: file is empty")
    if table_format(path) is None:
        raise DataError(f"{path}: unknown file type {os.path.splitext(path)[1].lower()!r} (use .jsonl, .tsv or .csv, "
                        "or a datasets folder)")
    yield from iter_table(path)


def looks_like_hub_id(path: str) -> bool:
    return path.count("/") <= 1 and not path.startswith((".", "/")) and "." not in os.path.basename(path)


def _iter_dataset(path: str):
    import datasets

    if os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in SAVED_DATASET_MARKERS):
        ds = datasets.load_from_disk(path)
    else:
        ds = datasets.load_dataset(path)
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: dataset has splits {list(ds)} but no 'train' split")
        ds = ds["train"]
    for n, row in enumerate(ds, start=1):
        yield n, dict(row)


# ------------------------------------------------------------------------------------------ validation
def _text(row, key, where, required=True):
    value = row.get(key)
    if value is None or value == "":
        if required:
            raise DataError(f"{where}: field '{key}' is missing or empty")
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    return value


def _text_list(row, key, where, required):
    value = row.get(key)
    if value is None:
        if required:
            raise DataError(f"{where}: field '{key}' is missing")
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise DataError(f"{where}: field '{key}' must be a list of non-empty strings, got {json.dumps(value, ensure_ascii=False)[:80]}")
    if required and not value:
        raise DataError(f"{where}: field '{key}' is an empty list")
    return value


def _score_list(row, key, length, texts_key, where):
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise DataError(f"{where}: field '{key}' must be a list of numbers")
    if len(value) != length:
        raise DataError(f"{where}: field '{key}' has {len(value)} scores but '{texts_key}' has {length} texts")
    for v in value:  # NaN / inf (JSON NaN, Infinity, 1e999) would make the loss non-finite; an all -inf group NaN
        if not math.isfinite(v) or abs(v) > FLOAT32_MAX:
            raise DataError(f"{where}: field '{key}' holds {v!r}; teacher scores must be finite numbers"
                            + (" within float32 range" if math.isfinite(v) else ""))
    return [float(v) for v in value]


def _row_kind(row: dict, where: str) -> str:
    if "query" in row:
        return "group"
    if "anchor" in row:
        return "anchor"
    if "sentence1" in row and "sentence2" in row:
        if "gold_label" in row:
            return "nli"
        if "score" in row:
            return "scored"
        if "label" in row:
            return "nli" if isinstance(row["label"], str) and row["label"] in NLI_CLASS_IDS else "scored_label"
    raise DataError(f"{where}: cannot tell the row's format from its fields {sorted(row)}; expected query/pos, "
                    "anchor/positive, sentence1/sentence2/gold_label or sentence1/sentence2/score")


def parse_row(row: dict, where: str, score_max: float = 5.0):
    """One raw row -> ("group", Example) | ("nli", Example with label) | ("scored", Example with 0-1 label)."""
    kind = _row_kind(row, where)
    if kind == "group":
        query = _text(row, "query", where)
        pos = _text_list(row, "pos", where, required=True)
        neg = _text_list(row, "neg", where, required=False)
        prompt = _text(row, "prompt", where, required=False)
        return "group", Example(query, pos, neg, _score_list(row, "pos_scores", len(pos), "pos", where),
                                _score_list(row, "neg_scores", len(neg), "neg", where), prompt, source=where)
    if kind == "anchor":
        neg = _text(row, "negative", where, required=False)
        return "group", Example(_text(row, "anchor", where), [_text(row, "positive", where)], [neg] if neg else [],
                                source=where)
    s1, s2 = _text(row, "sentence1", where), _text(row, "sentence2", where)
    if kind == "nli":
        raw = row.get("gold_label", row.get("label"))
        if raw not in NLI_CLASS_IDS:
            raise DataError(f"{where}: field 'gold_label' must be one of {sorted(NLI_CLASS_IDS)}, got {raw!r}")
        return "nli", Example(s1, [s2], label=NLI_CLASS_IDS[raw], source=where)
    raw = row.get("score", row.get("label"))
    try:
        score = float(raw)
    except (TypeError, ValueError):
        raise DataError(f"{where}: field 'score' must be a number, got {raw!r}") from None
    label = score / score_max
    if not 0.0 <= label <= 1.0:
        raise DataError(f"{where}: field 'score' {score} is outside [0, {score_max}] (set --score-max)")
    return "scored", Example(s1, [s2], label=label, source=where)


# ------------------------------------------------------------------------------------------ conversion
def nli_to_groups(pairs: list[Example], report: LoadReport) -> list[Example]:
    """NLI pairs -> one group per premise: entailments are positives, contradictions hard negatives.

    Neutral hypotheses are not used; premises with no entailment cannot form a group and are reported.
    """
    by_premise: dict[str, Example] = {}
    for ex in pairs:
        group = by_premise.setdefault(ex.query, Example(ex.query, [], [], source=ex.source, file_index=ex.file_index))
        if ex.label == NLI_CLASS_IDS["entailment"]:
            group.pos.append(ex.pos[0])
        elif ex.label == NLI_CLASS_IDS["contradiction"]:
            group.neg.append(ex.pos[0])
    groups = [g for g in by_premise.values() if g.pos]
    if len(groups) < len(by_premise):
        report.notes.append(f"NLI → groups: {len(by_premise) - len(groups)} premises have no entailment "
                            "hypothesis and form no group")
    report.notes.append(f"NLI → groups: {len(pairs)} pairs became {len(groups)} (premise, entailments, "
                        "contradictions) groups; neutral pairs are not used")
    return groups


def pair_kind_for(needs) -> str | None:
    """The labelled-pair rows a loss's `needs` asks for ("nli" / "scored"), or None for query / passage groups."""
    kinds = {"nli_label": "nli", "similarity_score": "scored"}
    found = [kinds[f] for f in needs if f in kinds]
    return found[0] if found else None


def iter_examples(paths: list[str] | str, pair_kind: str | None = None, score_max: float = 5.0,
                  skip_bad_rows: bool = False, report: LoadReport | None = None):
    """Validated `Example`s of every file in order, streamed (data/prepared.py reads 100M+ rows through it).

    pair_kind=None (contrastive losses): rows must be groups (BGE / anchor-positive) or NLI (converted; an NLI file
    is held in memory until its groups are formed). pair_kind="nli" (softmax loss) or "scored" (cosine loss): rows
    must be labelled pairs of that kind. Skipped rows and notes go to `report`.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    report = report if report is not None else LoadReport()
    order = ("group", "nli", "scored")
    for file_index, path in enumerate(paths):
        kind, nli_pairs = None, []
        for n, row in iter_raw_rows(path):
            where = f"{path}:{n}"
            try:
                row_kind, ex = parse_row(row, where, score_max)
            except DataError as e:
                if not skip_bad_rows:
                    raise
                report.skipped[str(e).split(": ", 1)[1]] += 1
                continue
            if kind is None:
                kind = row_kind
                _check_kind(path, kind, pair_kind)
            elif row_kind != kind:
                found = sorted({kind, row_kind}, key=order.index)
                raise DataError(f"{path}: mixes row formats {found}; use one format per file")
            ex.file_index = file_index
            report.rows += 1
            if kind == "nli" and not pair_kind:
                nli_pairs.append(ex)
            else:
                yield ex
        if kind is None:
            raise DataError(f"{path}: no usable rows")
        if nli_pairs:
            yield from nli_to_groups(nli_pairs, report)


def _check_kind(path: str, kind: str, pair_kind: str | None) -> None:
    if pair_kind:
        if kind != pair_kind:
            need = "sentence1, sentence2, gold_label" if pair_kind == "nli" else "sentence1, sentence2, score"
            raise DataError(f"{path}: this loss trains on labelled pairs ({need}); the file holds {kind} rows")
    elif kind == "scored":
        raise DataError(f"{path}: contrastive losses need query/positive data; the file holds scored pairs "
                        "(train it with --loss cosine)")


def load_examples(paths: list[str] | str, pair_kind: str | None = None, score_max: float = 5.0,
                  skip_bad_rows: bool = False) -> tuple[list[Example], LoadReport]:
    """Read and validate every row of every file before training starts (`iter_examples`, as a list)."""
    report = LoadReport()
    return list(iter_examples(paths, pair_kind, score_max, skip_bad_rows, report)), report
