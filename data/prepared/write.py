"""Writing a prepared corpus (`prepare`; the layout is in data/prepared/format.py).

Rows are streamed from the inputs (data/examples.py `iter_examples`, validated as train.py validates them) into Arrow
files, then token lengths and text hashes are added by `datasets.map` in num_proc processes (the shards), then the
index arrays are written from the shards; the manifest comes last.

Safety (storage/folders.py): the folder is built in a temporary `.<output>.XXXX.partial/` beside it and renamed into
place once complete (manifest written last), so an interrupted prepare never leaves a folder that looks complete;
the next run deletes that staging folder and starts over (a prepare that fails with an error removes it itself).
An existing output is replaced only when it is a corpus this tool wrote, holding nothing else, and overwrite is
given, and only after the new one is complete: a failing prepare loses nothing. Any other existing folder, a file,
or an output that is or holds an input is refused before any work. Re-running with the same inputs (paths, sizes,
modification times) and settings is a no-op.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import time

import numpy as np

from data.examples import LoadReport, iter_examples
from data.length_buckets import pack_length_keys, passage_key
from data.prepared.format import (FORMAT, INDEX, MANIFEST, PREPARE_TOOL, ROWS_PER_BATCH, SHARDS, LengthSettings,
                                  file_crc32, is_corpus_folder, read_manifest, row_schema, shard_features,
                                  verify_shards)
from data.row_kind import RowKind
from data.rows import CONTENT_FIELDS, Digest, stored_values
from data.sampler_inputs import token_counts
from data.tables import DataError
from data.text_ids import row_text_hashes, rows_that_can_collide
from storage.folders import OutputError, check_not_inside, check_output_folder, lies_inside, staged_folder

PREPARE_HINT_ROWS = 200_000  # raw inputs at least this big get a hint to prepare them


def _input_stamp(path: str) -> dict:
    """What identifies an input for the no-op check: path, and bytes + newest modification time of its files."""
    if os.path.isfile(path):
        st = os.stat(path)
        return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    if os.path.isdir(path):
        files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        stats = [os.stat(f) for f in files]
        return {"path": os.path.abspath(path), "bytes": sum(s.st_size for s in stats),
                "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}
    return {"path": path}  # a Hub dataset id


class Annotate:
    """datasets.map function (batched, picklable for num_proc): token lengths, text hashes, optionally token ids.

    count_tokens: (texts, max_len) -> token counts, replacing the tokenizer (the benchmark's synthetic corpus has
    lengths known by construction); None = the tokenizer, as the collator will tokenise."""

    def __init__(self, tokenizer_path: str, settings: LengthSettings, pretokenize: bool, count_tokens=None):
        self.tokenizer_path, self.s = tokenizer_path, settings
        self.pretokenize, self.count_tokens = pretokenize, count_tokens
        self._tokenizer = None

    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from models.family import add_eos

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
            if self.s.append_eos:
                add_eos(self._tokenizer)  # as the model's set-up does (models/family.py)
        return self._tokenizer

    def ids(self, texts: list[str], max_len: int) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer()(texts, truncation=True, max_length=max_len, padding=False,
                                return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    def __call__(self, batch: dict) -> dict:
        s, fmt = self.s, self.s.text_format()
        queries = [fmt.query(q, p) for q, p in zip(batch["query"], batch["prompt"])]
        groups = [pos + neg for pos, neg in zip(batch["pos"], batch["neg"])]
        passages = [fmt.passage(t, p) for g, p in zip(groups, batch["prompt"]) for t in g]
        out = {}
        if self.pretokenize:
            q_ids, p_ids = self.ids(queries, s.query_max_len), self.ids(passages, s.passage_max_len)
            q_len, p_len = [len(x) for x in q_ids], [len(x) for x in p_ids]
        elif self.count_tokens is not None:
            q_len, p_len = self.count_tokens(queries, s.query_max_len), self.count_tokens(passages, s.passage_max_len)
        else:
            tok = self.tokenizer()
            q_len, p_len = token_counts(tok, queries, s.query_max_len), token_counts(tok, passages, s.passage_max_len)
        longest, at, passage_ids = [], 0, []
        for g in groups:
            longest.append(max(p_len[at:at + len(g)]))
            if self.pretokenize:
                passage_ids.append(p_ids[at:at + len(g)])
            at += len(g)
        hashes = [row_text_hashes(q, pos, neg) for q, pos, neg in zip(batch["query"], batch["pos"], batch["neg"])]
        out.update(query_len=q_len, passage_len=longest, key_hashes=[_signed(k) for k, _ in hashes],
                   neg_hashes=[_signed(n) for _, n in hashes])
        if self.pretokenize:
            out.update(query_ids=q_ids, passage_ids=passage_ids)
        return out


def _signed(hashes: list[int]) -> list[int]:
    """uint64 hashes as the int64 with the same bits (Arrow columns are int64; readers view them as uint64)."""
    return [h - (1 << 64) if h >= 1 << 63 else h for h in hashes]


def prepare(inputs: list[str], tokenizer_path: str, output: str, *, query_max_len: int = 64,
            passage_max_len: int = 256, query_prompt: str | None = None, passage_prompt: str | None = None,
            query_instruction_format: str | None = None, query_instruction: str | None = None,
            format_passages: bool | None = None, append_eos: bool | None = None,
            rows: RowKind = RowKind.GROUPS, score_max: float = 5.0, skip_bad_rows: bool = False,
            pretokenize: bool = False, num_proc: int = 1, rows_per_shard: int = 1_000_000, progress: bool = True,
            count_tokens=None, overwrite: bool = False, log=print) -> dict:
    """Write a prepared corpus of `inputs` (any format load_examples reads) to `output`; -> its manifest.

    Lengths are those of tokenizer_path's tokenizer for these max lengths (train.py's defaults), prompts, instruction
    format and EOS (None = the model folder's saved ones, and EOS by the model's family: models/family.py), as a run
    with that model and settings will see them. rows: what the loss
    trains on (the manifest's `pair_kind`: None for query/passage groups, "nli" / "scored" for labelled pairs).
    Rows are streamed (never all in memory, except an NLI file being turned into groups); the token-length pass runs
    in num_proc processes. An existing `output` is replaced only when it
    is a corpus this tool wrote, holding nothing else, and overwrite=True (storage/folders.py); anything else there
    is refused before any work (OutputError), never deleted.
    """
    import dataclasses

    from transformers import AutoTokenizer

    from models.bi_encoder import EncoderSettings, read_settings, set_up_text

    if not inputs:
        raise DataError("no inputs to prepare")
    base = read_settings(tokenizer_path) if os.path.isdir(tokenizer_path) else EncoderSettings()
    overrides = dict(query_max_len=query_max_len, passage_max_len=passage_max_len, query_prompt=query_prompt,
                     passage_prompt=passage_prompt, query_instruction_format=query_instruction_format,
                     query_instruction=query_instruction, append_eos=append_eos)
    enc = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    enc = set_up_text(_model_config(tokenizer_path), tokenizer, enc)  # EOS as a run's model set-up decides it
    settings = LengthSettings.of(tokenizer, enc, rows.formats_passages(format_passages))
    request = {"inputs": [_input_stamp(p) for p in inputs], "settings": dataclasses.asdict(settings),
               "pair_kind": rows.pair_kind, "score_max": score_max, "skip_bad_rows": skip_bad_rows,
               "pretokenize": pretokenize, "count_tokens": None if count_tokens is None else repr(count_tokens)}
    output = os.path.normpath(output)
    if os.path.isfile(os.path.join(output, MANIFEST)):
        try:
            old = read_manifest(output)
        except DataError:
            old = {}
        if old.get("request") == request:
            verify_shards(output, old)
            log(f"{output}: already prepared from the same inputs and settings ({old['rows']} rows); nothing to do")
            return old
    # before any work: the output may not hold an input, be inside one, or be a folder this tool did not write
    check_not_inside(output, [("the input", p) for p in inputs] + [("the tokenizer folder", tokenizer_path)])
    for p in inputs:
        if os.path.exists(p) and lies_inside(p, output):
            raise OutputError(f"{output}: holds the input {p}, which replacing the folder would delete; choose "
                              "another output folder")
    folder_rule = dict(overwrite=overwrite, recognise=is_corpus_folder, own_entries=(MANIFEST, SHARDS, INDEX))
    check_output_folder(output, PREPARE_TOOL, **folder_rule)
    started = time.time()
    with staged_folder(output, PREPARE_TOOL, **folder_rule, log=log) as staging:  # renamed to output once complete
        os.makedirs(os.path.join(staging, "rows"))
        sources, digest, shards, index, lengths, report = _build(inputs, tokenizer_path, staging, settings, rows,
                                                                 score_max, skip_bad_rows, pretokenize, num_proc,
                                                                 rows_per_shard, progress, count_tokens)
        # 3. manifest last
        manifest = {
            "format": FORMAT, "request": request, "rows": sum(s["rows"] for s in sources), "content_digest": digest,
            "sources": sources, "skipped_rows": dict(report.skipped), "notes": report.notes, "shards": shards,
            "index": index, "token_lengths": lengths,
            "tokenizer": {"path": tokenizer_path, "fingerprint": settings.tokenizer},
            "settings": dataclasses.asdict(settings), "pair_kind": rows.pair_kind, "row_fields": list(CONTENT_FIELDS),
            "score_max": score_max,
            "pretokenize": pretokenize, "seconds": round(time.time() - started, 1),
        }
        with open(os.path.join(staging, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, ensure_ascii=False)
    log(f"{output}: {manifest['rows']} rows from {len(inputs)} source(s) in {len(shards)} shard(s), "
        f"{sum(s['bytes'] for s in shards) / 2**20:.0f} MiB, {manifest['seconds']:.0f}s" +
        (f"; {sum(report.skipped.values())} rows skipped" if report.skipped else ""))
    return manifest


def _model_config(path: str):
    """The model's config (an adapter folder's base's) to tell its family by, or None for a tokenizer alone."""
    from transformers import AutoConfig, PretrainedConfig

    from models.checks import config_source

    try:
        return AutoConfig.from_pretrained(config_source(path))
    except (OSError, ValueError):
        return PretrainedConfig()  # no config.json: not a decoder, unless append_eos is given


def _build(inputs, tokenizer_path, staging, settings, rows, score_max, skip_bad_rows, pretokenize, num_proc,
           rows_per_shard, progress, count_tokens):
    """Rows, then lengths and hashes, into staging/shards, then the index arrays
    -> (manifest sources, digest, shard list, index file list, token length range, report)."""
    # 1. stream validated rows into Arrow files (one process: parsing + validation, bounded memory)
    report = LoadReport()
    rows_per_source, files_per_source, digest, row_files = _write_rows(inputs, staging, rows, score_max,
                                                                       skip_bad_rows, report, rows_per_shard, progress)
    for i, n in enumerate(rows_per_source):
        if n == 0:
            raise DataError(f"{inputs[i]}: no usable rows (every row was skipped or formed no group)")
    sources = [{"path": p, "rows": int(n), "files": f} for p, n, f in zip(inputs, rows_per_source, files_per_source)]

    # 2. token lengths and text hashes, num_proc processes, written as the shards
    import datasets

    shard_dir = os.path.join(staging, SHARDS)
    os.makedirs(shard_dir)
    annotate = Annotate(tokenizer_path, settings, pretokenize, count_tokens)
    features = shard_features(pretokenize)
    for k, rows_file in enumerate(row_files):
        part = datasets.Dataset.from_file(rows_file)
        part.map(annotate, batched=True, batch_size=ROWS_PER_BATCH, num_proc=num_proc if num_proc > 1 else None,
                 features=features, cache_file_name=os.path.join(shard_dir, f"shard-{k:05d}.arrow"),
                 new_fingerprint=f"prepare-{k}-{digest}", load_from_cache_file=False,
                 writer_batch_size=ROWS_PER_BATCH, desc=f"token lengths + hashes ({k + 1}/{len(row_files)})")
        del part
        os.remove(rows_file)
    shutil.rmtree(os.path.join(staging, "rows"))
    files = sorted(glob.glob(os.path.join(shard_dir, "*.arrow")))
    index, rows_per_shard, lengths = _write_index(staging, files, progress)
    shards = [{"file": os.path.relpath(f, staging), "rows": n, "bytes": os.path.getsize(f), "crc32": file_crc32(f)}
              for f, n in zip(files, rows_per_shard)]
    return sources, digest, shards, index, lengths, report


def _record_batches(file: str):
    """(byte offset, RecordBatch) of every record batch of an Arrow IPC stream, memory-mapped (zero-copy)."""
    import pyarrow as pa

    source = pa.memory_map(file)
    reader, schema = pa.ipc.MessageReader.open_stream(source), None
    while True:
        at = source.tell()
        try:
            message = reader.read_next_message()
        except StopIteration:
            return
        if message is None:
            return
        if message.type == "schema":
            schema = pa.ipc.read_schema(message)
        elif message.type == "record batch":
            yield at, pa.ipc.read_record_batch(message, schema)
        else:
            raise DataError(f"{file}: unexpected Arrow message {message.type!r}; prepare the corpus again")


def _write_index(staging: str, shard_files: list[str], progress: bool) -> tuple[list[dict], list[int], dict]:
    """index/*.npy (module docstring) from the shards, in two passes over their record batches: count, then fill
    arrays that live on disk (`open_memmap`), so no [N] array is ever held in memory.
    -> (manifest entries of the index files, rows per shard, {"query"/"passage": [fewest, most] tokens})."""
    import pyarrow.compute as pc
    from numpy.lib.format import open_memmap
    from tqdm.auto import tqdm

    batches, rows, keys, negs = [], 0, 0, 0  # (shard, offset, first row, first key, first neg)
    for k, file in enumerate(shard_files):
        for offset, b in _record_batches(file):
            batches.append((k, offset, rows, keys, negs))
            rows += b.num_rows
            keys += len(b.column("key_hashes").flatten())
            negs += len(b.column("neg_hashes").flatten())
    folder = os.path.join(staging, INDEX)
    os.makedirs(folder)

    def array(name, dtype, shape):
        return open_memmap(os.path.join(folder, name + ".npy"), mode="w+", dtype=dtype, shape=shape)

    length_keys, source = array("length_keys", np.int64, (rows,)), array("source", np.int32, (rows,))
    neg_count, scored = array("neg_count", np.int32, (rows,)), array("scored", np.uint8, (rows,))
    csr = {name: (array(name[:3] + "_offsets", np.int64, (rows + 1,)), array(name, np.uint64, (n,)))
           for name, n in (("key_hashes", keys), ("neg_hashes", negs))}
    for offsets, _ in csr.values():
        offsets[0] = 0
    at, span = 0, {"query": [np.inf, -np.inf], "passage": [np.inf, -np.inf]}
    bar = tqdm(total=rows, desc="index arrays", unit=" rows", disable=not progress, mininterval=2)
    for file in shard_files:
        for _, b in _record_batches(file):
            _, _, r0, k0, n0 = batches[at]
            r1 = r0 + b.num_rows
            col = {c: b.column(c) for c in b.schema.names}
            query_len = col["query_len"].to_numpy().astype(np.int64)
            passage = passage_key(col["passage_len"].to_numpy().astype(np.int64))
            length_keys[r0:r1] = pack_length_keys(passage, query_len)
            for name, values in (("query", query_len), ("passage", passage)):
                span[name] = [min(span[name][0], int(values.min())), max(span[name][1], int(values.max()))]
            source[r0:r1] = col["source"].to_numpy()
            neg_count[r0:r1] = pc.list_value_length(col["neg"]).fill_null(0).to_numpy()
            scored[r0:r1] = (col["pos_scores"].is_valid().to_numpy(zero_copy_only=False).astype(np.uint8)
                             | col["neg_scores"].is_valid().to_numpy(zero_copy_only=False).astype(np.uint8) << 1)
            for name, first in (("key_hashes", k0), ("neg_hashes", n0)):
                offsets, hashes = csr[name]
                lengths = pc.list_value_length(col[name]).fill_null(0).to_numpy().astype(np.int64)
                offsets[r0 + 1:r1 + 1] = first + np.cumsum(lengths)
                values = col[name].flatten().to_numpy()
                hashes[first:first + len(values)] = values.view(np.uint64)
            at += 1
            bar.update(b.num_rows)
    bar.close()
    table = array("record_batches", np.int64, (len(batches), 3))
    table[:] = np.array([b[:3] for b in batches], dtype=np.int64).reshape(-1, 3)
    collide = array("can_collide", np.bool_, (rows,))
    collide[:] = rows_that_can_collide(*csr["key_hashes"], *csr["neg_hashes"])
    for a in (length_keys, source, neg_count, scored, table, collide, *[x for pair in csr.values() for x in pair]):
        a.flush()
    rows_per_shard = np.bincount(table[:, 0], weights=np.diff(np.append(table[:, 2], rows)),
                                 minlength=len(shard_files)).astype(int).tolist()
    entries = [{"file": os.path.join(INDEX, f), "bytes": os.path.getsize(os.path.join(folder, f)),
                "crc32": file_crc32(os.path.join(folder, f))} for f in sorted(os.listdir(folder))]
    return entries, rows_per_shard, span


def _write_rows(inputs, staging, rows, score_max, skip_bad_rows, report, rows_per_file, progress):
    """Validated rows -> Arrow files of up to rows_per_file rows
    -> (rows per source, the files of each source in order of their first row, content digest, Arrow files)."""
    import pyarrow as pa
    from tqdm.auto import tqdm

    schema = row_schema()
    columns = [f.name for f in schema]
    rows_per_source = [0] * len(inputs)
    file_ids: list[dict] = [{} for _ in inputs]  # per source: its file (a folder's file, or the path) -> number
    digest = Digest()
    files: list[str] = []
    writer, in_file, buffer = None, 0, {c: [] for c in columns}

    def flush():
        nonlocal writer, in_file
        if not buffer["query"]:
            return
        if writer is None or in_file >= rows_per_file:
            if writer is not None:
                writer.close()
            files.append(os.path.join(staging, "rows", f"rows-{len(files):05d}.arrow"))
            writer, in_file = pa.ipc.new_stream(files[-1], schema), 0
        writer.write_batch(pa.record_batch([pa.array(buffer[c], type=schema.field(c).type) for c in columns],
                                           schema=schema))
        in_file += len(buffer["query"])
        for c in columns:
            buffer[c].clear()

    bar = tqdm(desc="read + validate", unit=" rows", disable=not progress, mininterval=2)
    for ex in iter_examples(inputs, rows, score_max, skip_bad_rows, report):
        digest.update(ex)
        file, line = ex.source.rsplit(":", 1)
        ids = file_ids[ex.file_index]
        location = {"source": ex.file_index, "file": ids.setdefault(file, len(ids)),
                    "line": int(line) if line.isdigit() else -1}
        for c, v in {**stored_values(ex), **location}.items():
            buffer[c].append(v)
        rows_per_source[ex.file_index] += 1
        bar.update(1)
        if len(buffer["query"]) >= ROWS_PER_BATCH:
            flush()
    flush()
    bar.close()
    if writer is not None:
        writer.close()
    return rows_per_source, [list(ids) for ids in file_ids], digest.hexdigest(), files


def prepare_hint(num_rows: int, paths) -> str | None:
    """A note for train.py when raw inputs are big enough that preparing them once would pay."""
    if num_rows < PREPARE_HINT_ROWS:
        return None
    return (f"note: {num_rows} raw rows are read, tokenised and hashed on every start (and every resume); prepare "
            f"them once and train from the folder: python -m scripts.prepare_data --input {' '.join(paths)} "
            "--tokenizer <the model> --output DIR, then train on DIR (README: Big corpora)")
