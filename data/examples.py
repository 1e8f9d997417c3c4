"""Training rows: read files into validated `Example`s, each remembering its file and line for error messages.

Formats (detected from the extension and the columns / keys):
- BGE JSONL `{query, pos: [..], neg: [..], pos_scores?, neg_scores?, prompt?}` (FlagEmbedding's data contract);
- pair / triplet JSONL or TSV/CSV with `anchor, positive[, negative]`;
- NLI TSV/JSONL `sentence1, sentence2, gold_label`: labelled pairs for the `softmax` loss, or turned into
  (premise, entailment, contradiction) groups for the contrastive losses;
- scored pairs TSV/JSONL `sentence1, sentence2, score` (e.g. STS): labelled pairs for the `cosine` loss;
- Parquet / Arrow files (rows numbered from 1 in place of lines);
- a folder of such files: every data file in it (subfolders too, sorted by path) is read by its own reader, rows
  named `folder/file.jsonl:line`, all one source; files may differ in columns, not in row format;
- a `datasets` folder (`save_to_disk` output) or a Hub dataset id, read by `datasets`; their rows follow any of
  the layouts above and are named `path:row`.
Bad rows stop the run with `DataError("file:line: field ...: problem")`; with `skip_bad_rows` they are
counted and reported instead, never dropped silently.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field

from data.row_kind import RowKind
from data.rows import Example  # noqa: F401  (declared in data/rows.py; callers import it from here too)
from data.tables import DataError, OptionError, file_format, iter_rows, suffixes

FLOAT32_MAX = 3.4028234663852886e38  # teacher scores become float32 tensors

# NLI gold labels -> class ids of the 3-way softmax loss (evaluation's pair classification maps them differently:
# evaluation/task_files.py NLI_IS_POSITIVE).
NLI_CLASS_IDS = {"entailment": 0, "neutral": 1, "contradiction": 2}


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
    """DataError unless `path` is a file, a folder we can read (`folder_files`), or (while online) something that can
    be a Hub dataset id."""
    if os.path.exists(path):
        if os.path.isdir(path) and not is_saved_dataset(path):
            folder_files(path)
        return
    if not looks_like_hub_id(path):
        raise DataError(f"{path}: file not found")
    if hub_offline():
        raise DataError(f"{path}: no such file or folder, and the Hub is offline (HF_HUB_OFFLINE is set), so it "
                        "cannot be a Hub dataset; pass a local path")


def check_data_paths(paths: list[str]) -> None:
    """`check_data_path` for each, and DataError when two name the same data: the same path twice, two paths of one
    file (a link, `./a` and `a`), or a file inside a folder that is also given (read whole)."""
    for path in paths:
        check_data_path(path)
    real = [os.path.realpath(p) if os.path.exists(p) else p for p in paths]
    for j in range(len(paths)):
        for i in range(j):
            if real[i] == real[j]:
                kind = "folder" if os.path.isdir(real[i]) else "file"
                same = "given twice" if paths[i] == paths[j] else f"the same {kind} as {paths[i]}"
                raise DataError(f"{paths[j]}: {same}; give each training source once (it would be read twice)")
            for inner, outer in ((i, j), (j, i)):
                if os.path.isdir(real[outer]) and real[inner].startswith(real[outer].rstrip(os.sep) + os.sep):
                    raise DataError(f"{paths[inner]}: lies inside the folder {paths[outer]}, which is also given and "
                                    "read whole; give one or the other (its rows would be read twice)")


SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
DATA_FILE_SUFFIXES = tuple(suffixes())  # data/tables.py FILE_FORMATS
HELD_OUT_WORDS = {"test", "testing", "dev", "val", "valid", "validation", "eval", "evaluation", "heldout"}


def is_saved_dataset(path: str) -> bool:
    """A `datasets` folder (`save_to_disk`): read by `datasets`, not file by file."""
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in SAVED_DATASET_MARKERS)


def _is_documentation(name: str) -> bool:
    """A dataset card or licence beside the data (README.md, LICENSE): not a data file, skipped."""
    return name.lower().endswith((".md", ".rst")) or name.upper().startswith(("LICENSE", "LICENCE", "COPYING",
                                                                               "NOTICE"))


def folder_files(path: str) -> list[str]:
    """The data files of a plain folder (not `save_to_disk`), sorted by path, subfolders included; hidden entries
    and documentation are skipped. Each is read by its own reader (`iter_raw_rows`). DataError naming the folder
    when it holds no data file, a file no reader here reads (e.g. a loading script), or a file named like a held-out
    split (`test.jsonl`, `dev/`: training reads every file of a folder)."""
    files, unreadable, seen = [], [], set()
    for root, dirs, names in os.walk(path, followlinks=True):
        if os.path.realpath(root) in seen:  # a link back to a folder already listed
            dirs[:] = []
            continue
        seen.add(os.path.realpath(root))
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if name.startswith(".") or _is_documentation(name):
                continue
            file = os.path.join(root, name)
            (files if name.lower().endswith(DATA_FILE_SUFFIXES) else unreadable).append(file)
    if unreadable:
        raise DataError(f"{path}: holds files that are not training data this code reads: "
                        f"{_listed(path, unreadable)}; a folder may hold only {', '.join(DATA_FILE_SUFFIXES)} "
                        "files (each read as one part of this source); move the others out")
    if not files:
        raise DataError(f"{path}: the folder holds no data files ({', '.join(DATA_FILE_SUFFIXES)})")
    held_out = [f for f in files if HELD_OUT_WORDS & set(re.split(r"[^a-z]+", os.path.relpath(f, path).lower()))]
    if held_out:
        raise DataError(f"{path}: holds {_listed(path, held_out)}, named like a held-out split; every file of a "
                        "folder is training data, so move it out (or give the training files themselves)")
    return sorted(files)


def _listed(folder: str, files: list[str], most: int = 5) -> str:
    names = sorted(os.path.relpath(f, folder) for f in files)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def iter_raw_rows(path: str):
    """Yield ("file:line", dict) for every row of a JSONL / TSV / CSV / Parquet / Arrow file (data/tables.py), of every
    data file of a plain folder in turn (`folder_files`; named `folder/sub/file.jsonl:line`), or of a `datasets`
    folder or Hub dataset id (named `path:row`)."""
    check_data_path(path)
    if os.path.isdir(path) and not is_saved_dataset(path):
        for file in folder_files(path):
            yield from _iter_file(file)
    elif os.path.isdir(path) or not os.path.exists(path):
        yield from _iter_dataset(path)
    else:
        yield from _iter_file(path)


def _iter_file(path: str):
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: file is empty")
    if file_format(path) is None:
        raise DataError(f"{path}: unknown file type {os.path.splitext(path)[1].lower()!r} (use "
                        f"{', '.join(DATA_FILE_SUFFIXES)}, or a datasets folder)")
    for n, row in iter_rows(path):
        yield f"{path}:{n}", row


def looks_like_hub_id(path: str) -> bool:
    return path.count("/") <= 1 and not path.startswith((".", "/")) and "." not in os.path.basename(path)


def _iter_dataset(path: str):
    """Rows of a `save_to_disk` folder or a Hub dataset id, read by `datasets`; its errors name the path."""
    import datasets

    what = "a datasets folder (save_to_disk)" if os.path.isdir(path) else "a Hub dataset"
    try:
        ds = datasets.load_from_disk(path) if os.path.isdir(path) else datasets.load_dataset(path)
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ...)
        raise DataError(f"{path}: cannot read it as {what} ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: dataset has splits {list(ds)} but no 'train' split")
        ds = ds["train"]
    rows, n = iter(ds), 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:
            raise DataError(f"{path}:{n + 1}: cannot read the row from {what} ({type(e).__name__}: {e})") from None
        n += 1
        yield f"{path}:{n}", dict(row)


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
        raise DataError(f"{where}: field '{key}' must be a list of non-empty strings, "
                        f"got {json.dumps(value, ensure_ascii=False)[:80]}")
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


def _row_format(row: dict, where: str) -> str:
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
    kind = _row_format(row, where)
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
        raise OptionError("score_max", f"{where}: field 'score' {score} is outside [0, {score_max}] "
                                       "(set {score_max})")
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


def iter_examples(paths: list[str] | str, rows: RowKind = RowKind.GROUPS, score_max: float = 5.0,
                  skip_bad_rows: bool = False, report: LoadReport | None = None):
    """Validated `Example`s of every file in order, streamed (data/prepared/ reads 100M+ rows through it).

    rows GROUPS / SCORED_GROUPS (contrastive losses, distillation): rows must be groups (BGE / anchor-positive) or
    NLI (converted; an NLI file is held in memory until its groups are formed). NLI_PAIRS (softmax loss) or
    SCORED_PAIRS (cosine loss): rows must be labelled pairs of that kind. Skipped rows and notes go to `report`.
    """
    pair_kind = rows.pair_kind
    paths = [paths] if isinstance(paths, str) else list(paths)
    check_data_paths(paths)
    report = report if report is not None else LoadReport()
    order = ("group", "nli", "scored")
    for file_index, path in enumerate(paths):
        kind, nli_pairs = None, []
        for where, row in iter_raw_rows(path):
            try:
                row_format, ex = parse_row(row, where, score_max)
            except DataError as e:
                if not skip_bad_rows:
                    raise
                report.skipped[str(e).split(": ", 1)[1]] += 1
                continue
            if kind is None:
                kind, first = row_format, where
                _check_kind(path, kind, pair_kind)
            elif row_format != kind:
                found = sorted({kind, row_format}, key=order.index)
                one = "folder (one source: one format across its files)" if os.path.isdir(path) else "file"
                raise DataError(f"{path}: mixes row formats {found} ({kind} at {first}, {row_format} at {where}); use "
                                f"one format per {one}")
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
                        "(sentence1, sentence2, score), which the cosine loss trains on")


def load_examples(paths: list[str] | str, rows: RowKind = RowKind.GROUPS, score_max: float = 5.0,
                  skip_bad_rows: bool = False) -> tuple[list[Example], LoadReport]:
    """Read and validate every row of every file before training starts (`iter_examples`, as a list)."""
    report = LoadReport()
    return list(iter_examples(paths, rows, score_max, skip_bad_rows, report)), report
