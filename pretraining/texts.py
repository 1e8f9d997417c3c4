"""Raw text for pretraining: files -> texts, each with its file:line -> token ids, all in flat arrays.

Sources (each `--train-data` path is one source, for same-source batches and messages):
- `.txt`: one passage a line (not a table: tabs and quotes are text);
- `.jsonl` / `.json` / `.tsv` / `.csv` / `.parquet` / `.arrow` (data/tables.py): the column `text_field` (default
  `text`) of every row; a row that also has a non-empty `title` (BEIR's corpus layout) is read as
  `title + " " + text`, the way evaluation builds documents (data/document_text.py);
- a BEIR folder (holding `corpus.jsonl`): its corpus, so read.
A row without the field, or with a non-text value there, stops the run with `file:line: ...` (a malformed file). An
empty or whitespace-only text, or one that tokenises to nothing but special tokens, is skipped and counted by reason
(`TextReport`, with the first few lines named): blank lines between paragraphs are normal in text files.

`tokenize_texts` tokenises everything into `TokenizedTexts`: the ids of all texts one after another (special tokens
included, truncated to max_len) with offsets, and per text its source and line — a few bytes per token, no Python
object per text. A prepared text corpus (pretraining/prepared.py) holds the same arrays on disk, written by the same
`iter_tokenized`, so both give the same texts, ids and content digest.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from data.document_text import mteb_document_text
from data.tables import DataError, _utf8_error, file_format, iter_rows, suffixes

TABLE_SUFFIXES = tuple(s for s in suffixes() if s != ".txt")
BEIR_CORPUS = "corpus.jsonl"
CHUNK = 4096  # texts tokenised at a time


@dataclass
class TextReport:
    """Texts read and texts skipped, by reason, with the first few places of each."""

    texts: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  # reason -> ["file:line", ...] (at most 3)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        seen = self.examples.setdefault(reason, [])
        if len(seen) < 3:
            seen.append(where)

    def summary(self) -> str:
        lines = [f"{self.texts} texts read"]
        for reason, n in self.skipped.most_common():
            lines.append(f"{n} skipped: {reason} ({', '.join(self.examples[reason])}{', ...' if n > 3 else ''})")
        return "\n".join(lines)


def source_file(path: str) -> str:
    """The file a source's lines refer to: the path itself, or a BEIR folder's corpus.jsonl. DataError for a path
    that is missing or of a kind read by nothing here."""
    if os.path.isdir(path):
        corpus = os.path.join(path, BEIR_CORPUS)
        if os.path.isfile(corpus):
            return corpus
        raise DataError(f"{path}: a folder of texts must be a BEIR folder (with {BEIR_CORPUS}) or a prepared text "
                        "corpus (python -m scripts.prepare_texts); give the text files themselves")
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    if not path.lower().endswith((".txt",) + TABLE_SUFFIXES):
        raise DataError(f"{path}: unknown file type {os.path.splitext(path)[1].lower()!r} for texts (use .txt, one "
                        f"passage a line, or {', '.join(TABLE_SUFFIXES)} with a text column)")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: file is empty")
    return path


def iter_texts(path: str, text_field: str = "text") -> Iterator[tuple[int, str]]:
    """(line or row number, text) of every row of one source, as in the file (empty ones included: the caller
    counts them). DataError naming file:line for a row without a text."""
    file = source_file(path)
    if file.lower().endswith(".txt"):
        try:
            with open(file, encoding="utf-8-sig") as f:
                for n, line in enumerate(f, start=1):
                    yield n, line.rstrip("\r\n")
        except UnicodeDecodeError:
            raise _utf8_error(file) from None
        return
    assert file_format(file) is not None
    for n, row in iter_rows(file):
        text = row.get(text_field)
        if text is None:
            raise DataError(f"{file}:{n}: field {text_field!r} missing (columns: {', '.join(map(str, row))}); a text "
                            "source needs one text column (--text-field names it)")
        if not isinstance(text, str):
            raise DataError(f"{file}:{n}: field {text_field!r} must be text, got {type(text).__name__}")
        title = row.get("title")
        yield n, mteb_document_text(title, text) if isinstance(title, str) and title.strip() else text


class Digest:
    """SHA-256 over each text and its source, in order -> 16 hex digits (the sampler's resume fingerprint)."""

    def __init__(self):
        self._sha = hashlib.sha256()

    def update(self, source: int, text: str) -> None:
        self._sha.update(json.dumps([source, text], ensure_ascii=False).encode())

    def hexdigest(self) -> str:
        return self._sha.hexdigest()[:16]


def iter_tokenized(paths: list[str], tokenizer, max_len: int, text_field: str, report: TextReport,
                   digest: Digest) -> Iterator[tuple[int, np.ndarray, list[list[int]]]]:
    """(source, lines [n], token ids of each text) in chunks of CHUNK texts, skipped texts left out (counted in
    report); every kept text feeds the digest."""
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    for source, path in enumerate(paths):
        file, kept_before = source_file(path), report.texts
        pending: list[tuple[int, str]] = []

        def flush():
            ids = tokenizer([t for _, t in pending], truncation=True, max_length=max_len,
                            return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            keep = [j for j, x in enumerate(ids) if len(x) > specials]
            for j in set(range(len(ids))) - set(keep):
                report.skip("tokenises to special tokens only", f"{file}:{pending[j][0]}")
            for j in keep:
                digest.update(source, pending[j][1])
            report.texts += len(keep)
            return np.array([pending[j][0] for j in keep], dtype=np.int64), [ids[j] for j in keep]

        for n, text in iter_texts(path, text_field):
            if not text.strip():
                report.skip("empty or whitespace only", f"{file}:{n}")
                continue
            pending.append((n, text))
            if len(pending) == CHUNK:
                yield (source, *flush())
                pending = []
        if pending:
            yield (source, *flush())
        if report.texts == kept_before:
            raise DataError(f"{path}: no text to train on (every row was empty or skipped: "
                            f"{'; '.join(f'{n} × {r}' for r, n in report.skipped.items())})")


@dataclass
class TokenizedTexts:
    """Every text's token ids, one after another, and where each text came from."""

    ids: np.ndarray  # [T] token ids of all texts (special tokens included, truncated to max_len)
    offsets: np.ndarray  # [N + 1] int64: text i is ids[offsets[i]:offsets[i + 1]]
    source: np.ndarray  # [N] int32: the source (index into `paths`) of each text
    line: np.ndarray  # [N] int64: its line (row) in that source's file
    paths: list[str]  # the sources as given
    files: list[str]  # the file each source's lines refer to
    content_digest: str
    report: TextReport = field(default_factory=TextReport)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def token_ids(self, i: int) -> np.ndarray:
        return np.asarray(self.ids[self.offsets[i]:self.offsets[i + 1]], dtype=np.int64)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def where(self, i: int) -> str:
        return f"{self.files[int(self.source[i])]}:{int(self.line[i])}"


def tokenize_texts(paths: list[str], tokenizer, max_len: int, text_field: str = "text",
                   progress: bool = True) -> TokenizedTexts:
    """Read and tokenise every source in memory (`iter_tokenized`); a prepared corpus is the on-disk equivalent."""
    from tqdm.auto import tqdm

    report, digest = TextReport(), Digest()
    ids, lengths, sources, lines = [], [], [], []
    bar = tqdm(desc="tokenising texts", unit="text", disable=not progress)
    for source, line, chunk in iter_tokenized(paths, tokenizer, max_len, text_field, report, digest):
        ids.append(np.fromiter((t for x in chunk for t in x), dtype=np.int32))
        lengths.append(np.fromiter((len(x) for x in chunk), dtype=np.int64, count=len(chunk)))
        sources.append(np.full(len(chunk), source, dtype=np.int32))
        lines.append(line)
        bar.update(len(chunk))
    bar.close()
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
    return TokenizedTexts(np.concatenate(ids), offsets, np.concatenate(sources), np.concatenate(lines), list(paths),
                          [source_file(p) for p in paths], digest.hexdigest(), report)
