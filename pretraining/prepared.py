"""A prepared text corpus: texts tokenised once (python -m scripts.prepare_texts), memory-mapped by pretrain.py.

    corpus/manifest.json   format, sources (path, file, texts), skipped texts by reason, tokenizer (path and
                           fingerprint), max_len, text_field, texts, tokens, content digest, and every array file
                           with its dtype, length, bytes and CRC-32
    corpus/ids.bin         [T] token ids of all texts one after another (uint16 when the vocabulary fits, else int32)
    corpus/offsets.bin     [N + 1] int64, text i = ids[offsets[i]:offsets[i + 1]]
    corpus/source.bin      [N] int32 source of each text
    corpus/line.bin        [N] int64 its line (row) in the source's file

These are `TokenizedTexts`' arrays (pretraining/texts.py), written by the same `iter_tokenized` that reads raw files,
so a run on the corpus sees the texts, ids and content digest a run on the raw files sees. Opening it reads the
manifest, compares file sizes with it and checks the offsets and source ids in one pass (linear in the texts, not the
tokens); CRC-32s are compared only by `verify(contents=True)`. A corpus prepared for another tokenizer or max_len is
refused, naming both. The folder is complete or absent (storage/folders.py: built beside the target, renamed when
complete; an existing corpus replaced only with overwrite).
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter

import numpy as np

from data.prepared.format import file_crc32, tokenizer_fingerprint
from data.tables import DataError
from pretraining.texts import Digest, TextReport, TokenizedTexts, iter_tokenized, source_file
from storage.folders import check_not_inside, check_output_folder, staged_folder

FORMAT = "prepared-text-corpus/1"
MANIFEST = "manifest.json"
TOOL = "scripts.prepare_texts"
ARRAYS = (("ids", None), ("offsets", "int64"), ("source", "int32"), ("line", "int64"))  # None: by vocabulary size


def is_prepared_texts(path: str) -> bool:
    try:
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
            return str(json.load(f).get("format", "")).startswith("prepared-text-corpus/")
    except (OSError, ValueError, AttributeError):
        return False


def prepare_texts(inputs: list[str], tokenizer_path: str, output: str, *, max_len: int = 512,
                  text_field: str = "text", overwrite: bool = False, progress: bool = True, log=print) -> dict:
    """Tokenise every text of `inputs` (each one source) into a prepared corpus at `output`; -> its manifest."""
    from transformers import AutoTokenizer

    from models.checks import MaxLengthError, check_max_lengths
    if not inputs:
        raise DataError("no inputs to prepare")
    for p in inputs:
        source_file(p)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if os.path.isfile(os.path.join(tokenizer_path, "config.json")):
        try:
            check_max_lengths(tokenizer_path, passage_max_len=max_len)
        except MaxLengthError as e:
            raise DataError(f"--max-len {e.value}: {e.reason}") from None
    output = os.path.normpath(output)
    check_not_inside(output, [("the input", p) for p in inputs] + [("the tokenizer folder", tokenizer_path)])
    own = (MANIFEST, *(f"{n}.bin" for n, _ in ARRAYS))
    rule = dict(overwrite=overwrite, recognise=is_prepared_texts, own_entries=own)
    check_output_folder(output, TOOL, **rule)
    dtype = "uint16" if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else "int32"
    started, report, digest = time.time(), TextReport(), Digest()
    from tqdm.auto import tqdm

    with staged_folder(output, TOOL, **rule, log=log) as staging:
        files = {name: open(os.path.join(staging, f"{name}.bin"), "wb") for name, _ in ARRAYS}
        texts, tokens, per_source = 0, 0, [0] * len(inputs)
        files["offsets"].write(np.zeros(1, dtype=np.int64).tobytes())
        bar = tqdm(desc="tokenising texts", unit="text", disable=not progress)
        try:
            for source, line, chunk in iter_tokenized(inputs, tokenizer, max_len, text_field, report, digest):
                lengths = np.fromiter((len(x) for x in chunk), dtype=np.int64, count=len(chunk))
                files["ids"].write(np.fromiter((t for x in chunk for t in x), dtype=dtype).tobytes())
                files["offsets"].write((tokens + np.cumsum(lengths)).tobytes())
                files["source"].write(np.full(len(chunk), source, dtype=np.int32).tobytes())
                files["line"].write(line.astype(np.int64).tobytes())
                texts, tokens = texts + len(chunk), tokens + int(lengths.sum())
                per_source[source] += len(chunk)
                bar.update(len(chunk))
        finally:
            for f in files.values():
                f.close()
            bar.close()
        lengths = {"ids": tokens, "offsets": texts + 1, "source": texts, "line": texts}
        arrays = {}
        for name, kind in ARRAYS:
            path = os.path.join(staging, f"{name}.bin")
            arrays[name] = {"file": f"{name}.bin", "dtype": kind or dtype, "length": lengths[name],
                            "bytes": os.path.getsize(path), "crc32": file_crc32(path)}
        manifest = {"format": FORMAT, "texts": texts, "tokens": tokens, "content_digest": digest.hexdigest(),
                    "sources": [{"path": p, "file": source_file(p), "texts": n} for p, n in zip(inputs, per_source)],
                    "skipped": dict(report.skipped), "skipped_examples": report.examples,
                    "tokenizer": {"path": tokenizer_path, "fingerprint": tokenizer_fingerprint(tokenizer)},
                    "max_len": max_len, "text_field": text_field, "arrays": arrays,
                    "seconds": round(time.time() - started, 1)}
        with open(os.path.join(staging, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, ensure_ascii=False)
    log(f"{output}: {texts} texts, {tokens} tokens from {len(inputs)} source(s)"
        + (f"; {sum(report.skipped.values())} texts skipped" if report.skipped else ""))
    return manifest


def read_manifest(path: str) -> dict:
    file = os.path.join(path, MANIFEST)
    try:
        with open(file, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{file}: cannot read the manifest of a prepared text corpus ({e})") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{file}: format {manifest.get('format')!r}, this code reads {FORMAT!r}; prepare it again "
                        f"(python -m {TOOL})")
    return manifest


def open_prepared_texts(path: str, tokenizer, max_len: int, text_field: str) -> TokenizedTexts:
    """The corpus's arrays, memory-mapped; DataError when it was prepared for another tokenizer, max_len or text
    field, or its files do not match the manifest (sizes; offsets and source ids checked in one pass)."""
    manifest = read_manifest(path)
    wanted = {"tokenizer": tokenizer_fingerprint(tokenizer), "max_len": max_len, "text_field": text_field}
    have = {"tokenizer": manifest["tokenizer"]["fingerprint"], "max_len": manifest["max_len"],
            "text_field": manifest["text_field"]}
    differ = [f"{k}: {have[k]!r} in the corpus, {wanted[k]!r} now" for k in wanted if have[k] != wanted[k]]
    if differ:
        raise DataError(f"{path}: prepared with other settings ({'; '.join(differ)}; tokenizer "
                        f"{manifest['tokenizer']['path']}); prepare it again for this run (python -m {TOOL} "
                        f"--tokenizer MODEL --max-len {max_len})")
    arrays = {}
    for name, _ in ARRAYS:
        entry = manifest["arrays"][name]
        file = os.path.join(path, entry["file"])
        size = os.path.getsize(file) if os.path.isfile(file) else None
        if size != entry["bytes"]:
            raise DataError(f"{file}: {'missing' if size is None else f'{size} bytes'}, {entry['bytes']} in the "
                            "manifest; prepare the corpus again")
        arrays[name] = np.memmap(file, dtype=entry["dtype"], mode="r", shape=(entry["length"],))
    offsets, source, n_sources = arrays["offsets"], arrays["source"], len(manifest["sources"])
    for lo in range(0, len(source), 1 << 22):
        hi = min(len(source), lo + (1 << 22))
        step = np.diff(offsets[lo:hi + 1])
        bad = np.flatnonzero((step < 1) | (step > max_len) | (source[lo:hi] < 0) | (source[lo:hi] >= n_sources))
        if len(bad):
            at = lo + int(bad[0])
            raise DataError(f"{path}: text {at} has offsets {offsets[at]}..{offsets[at + 1]} and source "
                            f"{source[at]}, which the manifest ({n_sources} sources, max_len {max_len}) does not "
                            "allow; prepare the corpus again")
    if offsets[0] != 0 or offsets[-1] != manifest["tokens"]:
        raise DataError(f"{path}: offsets run from {offsets[0]} to {offsets[-1]}, the manifest has "
                        f"{manifest['tokens']} tokens; prepare the corpus again")
    report = TextReport(manifest["texts"], Counter(manifest.get("skipped", {})), manifest.get("skipped_examples", {}))
    return TokenizedTexts(arrays["ids"], offsets, source, arrays["line"], [s["path"] for s in manifest["sources"]],
                          [s["file"] for s in manifest["sources"]], manifest["content_digest"], report)


def verify(path: str) -> None:
    """Compare every array file's CRC-32 with the manifest (reads every byte)."""
    manifest = read_manifest(path)
    for entry in manifest["arrays"].values():
        file = os.path.join(path, entry["file"])
        if file_crc32(file) != entry["crc32"]:
            raise DataError(f"{file}: its CRC-32 differs from the manifest's (damaged); prepare the corpus again")
