"""A prepared training corpus: Arrow shards written once by scripts/prepare_data.py, memory-mapped by train.py.

Raw files are read into Python `Example`s and every text is tokenised on every start to build the length buckets
and the duplicate ids: fine for a quick experiment, impossible at pretraining scale (100M+ pairs). Preparing does
that work once and stores per row

    query, pos, neg, pos_scores, neg_scores, prompt, label   the row itself (as `Example`)
    source, file, line                                       its source (index into the manifest's sources), file
                                                             (index into that source's files) and line
    query_len, passage_len                                   tokens of the query (with its prompt) and of the
                                                             longest passage, for that tokenizer, prompts and max
                                                             lengths (`sampler_inputs.token_counts`)
    key_hashes, neg_hashes                                   64-bit hashes of query + positives and of the hard
                                                             negatives (`sampler_inputs.row_text_hashes`)
    query_ids, passage_ids                                   token ids, only with --pretokenize

in `shards/*.arrow` (Arrow IPC streams, written by `datasets`, which can also read them), and beside them, in
`index/`, what train.py needs before its first step as flat numpy arrays (`np.load(mmap_mode="r")`, nothing parsed):

    length_keys.npy                  [N] int64   bucket key: passage tokens rounded up to 8 · 2³² + query tokens
    source.npy                       [N] int32   source of each row
    key_offsets.npy, key_hashes.npy  CSR         the hashes of query + positives (`TextIds`)
    neg_offsets.npy, neg_hashes.npy  CSR         the hashes of the hard negatives
    can_collide.npy                  [N] bool    rows sharing a text with another row (`rows_that_can_collide`)
    neg_count.npy                    [N] int32   hard negatives per row (the distillation check)
    scored.npy                       [N] uint8   bit 0: pos_scores present, bit 1: neg_scores present
    record_batches.npy               [B, 3] int64  shard, byte offset and first row of every record batch

so opening a corpus reads a manifest and maps files: no shard is opened, no column is read, and memory and time
before the first step grow only with what the planner itself keeps (benchmarks/README.md). A row is read by
seeking to its record batch (`record_batches.npy`) and decoding that one batch. `manifest.json` holds the sources
with their row counts and skipped rows, the shards and index files with their bytes, the tokenizer (path and a
fingerprint of its vocabulary and rules), the length settings, and a content digest (`examples_digest` of the rows,
so a prepared corpus and the raw files it came from have the same digest). It also holds what lets a reader check the
index cheaply: a CRC-32 of every index file and shard, and the smallest and largest query and passage lengths.

Safety (storage/folders.py): the folder is built in a temporary `.<output>.XXXX.partial/` beside it and renamed into
place once complete (manifest written last), so an interrupted prepare never leaves a folder that looks complete;
the next run deletes that staging folder and starts over (a prepare that fails with an error removes it itself).
An existing --output is replaced only when it is a corpus this tool wrote, holding nothing else, and --overwrite is
given, and only after the new one is complete: a failing prepare loses nothing. Any other existing folder, a file,
or an output that is or holds an input is refused before any work. Re-running with the same inputs (paths, sizes,
modification times) and settings is a no-op.
train.py refuses a corpus whose shards do not match the manifest (missing, truncated or extra shard), whose index
arrays do not hold what prepare wrote (`check_index`, at every open, linear in the rows; benchmarks/README.md), or
that was made with another tokenizer, prompts or max lengths than the run uses (the differences are named). A row
that cannot be decoded (a shard damaged in place, at the same size) raises DataError naming the shard, the row and
its file:line. Every file's checksum is compared only on request (`verify_shards(contents=True)`: GBs at scale).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
import zlib
from dataclasses import dataclass

import numpy as np

from data.bucket_sampler import EncodedKeys, TextIds
from data.examples import DataError, LoadReport, iter_examples
from data.sampler_inputs import passage_key, row_text_hashes, token_counts
from storage.folders import OutputError, check_not_inside, check_output_folder, lies_inside, staged_folder

FORMAT = "prepared-training-corpus/3"  # /2: the index/ arrays; /3: checksums, length range, each row's file
MANIFEST = "manifest.json"
SHARDS = "shards"
INDEX = "index"
ROWS_PER_BATCH = 1000  # rows per Arrow record batch
PREPARE_HINT_ROWS = 200_000  # raw inputs at least this big get a hint to prepare them
PREPARE_TOOL = "scripts.prepare_data"  # the name in the folder's .written_by.json (storage/folders.py)
MANIFEST_FIELDS = ("rows", "sources", "shards", "index", "token_lengths", "settings", "pair_kind", "pretokenize",
                   "content_digest")  # what a reader uses, beside "format"
MANIFEST_ENTRY_FIELDS = {"sources": ("path", "rows", "files"), "shards": ("file", "rows", "bytes", "crc32"),
                         "index": ("file", "bytes", "crc32")}


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class LengthSettings:
    """What the stored token lengths depend on; a run must use the same (train.py compares them)."""

    tokenizer: str  # fingerprint (`tokenizer_fingerprint`)
    query_max_len: int
    passage_max_len: int
    query_prompt: str
    passage_prompt: str

    @classmethod
    def of(cls, tokenizer, settings) -> "LengthSettings":
        """From a tokenizer and EncoderSettings (a model's, or read_settings of a folder plus overrides)."""
        return cls(tokenizer_fingerprint(tokenizer), int(settings.query_max_len), int(settings.passage_max_len),
                   settings.query_prompt or "", settings.passage_prompt or "")


def tokenizer_fingerprint(tokenizer) -> str:
    """16 hex digits of SHA-256 over the fast tokenizer's definition (vocabulary, normaliser, pre-tokeniser, model,
    post-processor), without its truncation / padding state, which calls change."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def is_prepared(path: str) -> bool:
    """A prepared corpus folder (has a manifest), or one left half-written by an interrupted prepare."""
    return os.path.isfile(os.path.join(path, MANIFEST)) or os.path.isdir(os.path.join(path, SHARDS))


def _is_corpus_folder(path: str) -> bool:
    """A prepared corpus written before folders carried a .written_by.json marker: its manifest says so."""
    try:
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
            return str(json.load(f).get("format", "")).startswith("prepared-training-corpus/")
    except (OSError, ValueError, AttributeError):
        return False


def read_manifest(path: str) -> dict:
    file = os.path.join(path, MANIFEST)
    if not os.path.isfile(file):
        raise DataError(f"{path}: no {MANIFEST}: not a complete prepared corpus (a prepare that was interrupted "
                        "leaves <output>.partial, never a folder without a manifest); run scripts/prepare_data.py")
    try:
        with open(file, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{file}: cannot read the manifest: {e}") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{file}: format {manifest.get('format')!r}, this code reads {FORMAT!r}; prepare it again "
                        f"(python -m {PREPARE_TOOL})")
    missing = [k for k in MANIFEST_FIELDS if k not in manifest] + [
        f"{part}[{i}].{k}" for part, keys in MANIFEST_ENTRY_FIELDS.items()
        for i, entry in enumerate(manifest.get(part, [])) for k in keys if k not in entry]
    if missing:
        raise DataError(f"{file}: the manifest lacks {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                        f"prepare the corpus again (python -m {PREPARE_TOOL})")
    return manifest


# ------------------------------------------------------------------------------------------ prepare
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


def _row_schema(pretokenize: bool):
    import pyarrow as pa

    fields = [("query", pa.string()), ("pos", pa.list_(pa.string())), ("neg", pa.list_(pa.string())),
              ("pos_scores", pa.list_(pa.float64())), ("neg_scores", pa.list_(pa.float64())),
              ("prompt", pa.string()), ("label", pa.float64()), ("source", pa.int32()), ("file", pa.int32()),
              ("line", pa.int64())]
    return pa.schema(fields)


def _annotation_features(pretokenize: bool):
    """datasets Features of a shard: the row columns plus lengths, hashes (and token ids)."""
    from datasets import Features, Sequence, Value

    f = {"query": Value("string"), "pos": Sequence(Value("string")), "neg": Sequence(Value("string")),
         "pos_scores": Sequence(Value("float64")), "neg_scores": Sequence(Value("float64")),
         "prompt": Value("string"), "label": Value("float64"), "source": Value("int32"), "file": Value("int32"),
         "line": Value("int64"),
         "query_len": Value("int32"), "passage_len": Value("int32"),
         "key_hashes": Sequence(Value("int64")), "neg_hashes": Sequence(Value("int64"))}  # uint64 bits
    if pretokenize:
        f["query_ids"] = Sequence(Value("int32"))
        f["passage_ids"] = Sequence(Sequence(Value("int32")))
    return Features(f)


class Annotate:
    """datasets.map function (batched, picklable for num_proc): token lengths, text hashes, optionally token ids.

    count_tokens: (texts, max_len) -> token counts, replacing the tokenizer (the benchmark's synthetic corpus has
    lengths known by construction); None = the tokenizer, as the collator will tokenise."""

    def __init__(self, tokenizer_path: str, settings: LengthSettings, pretokenize: bool, count_tokens=None):
        self.tokenizer_path, self.s, self.pretokenize, self.count_tokens = tokenizer_path, settings, pretokenize, count_tokens
        self._tokenizer = None

    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        return self._tokenizer

    def ids(self, texts: list[str], max_len: int) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer()(texts, truncation=True, max_length=max_len, padding=False,
                                return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    def __call__(self, batch: dict) -> dict:
        s = self.s
        queries = [(p if p is not None else s.query_prompt) + q for q, p in zip(batch["query"], batch["prompt"])]
        groups = [pos + neg for pos, neg in zip(batch["pos"], batch["neg"])]
        passages = [s.passage_prompt + t for g in groups for t in g]
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
            pair_kind: str | None = None, score_max: float = 5.0, skip_bad_rows: bool = False,
            pretokenize: bool = False, num_proc: int = 1, rows_per_shard: int = 1_000_000, progress: bool = True,
            count_tokens=None, overwrite: bool = False, log=print) -> dict:
    """Write a prepared corpus of `inputs` (any format load_examples reads) to `output`; -> its manifest.

    Lengths are those of tokenizer_path's tokenizer for these max lengths (train.py's defaults) and prompts (None =
    the model folder's saved prompts) — as train.py's --model and flags set them. pair_kind: None = query/passage groups (contrastive losses), "nli" / "scored" =
    labelled pairs (softmax / cosine loss). Rows are streamed (never all in memory, except an NLI file being turned
    into groups); the token-length pass runs in num_proc processes. An existing `output` is replaced only when it
    is a corpus this tool wrote, holding nothing else, and overwrite=True (storage/folders.py); anything else there
    is refused before any work (OutputError), never deleted.
    """
    import dataclasses

    from transformers import AutoTokenizer

    from models.bi_encoder import EncoderSettings, read_settings

    if not inputs:
        raise DataError("no inputs to prepare")
    base = read_settings(tokenizer_path) if os.path.isdir(tokenizer_path) else EncoderSettings()
    overrides = dict(query_max_len=query_max_len, passage_max_len=passage_max_len, query_prompt=query_prompt,
                     passage_prompt=passage_prompt)
    enc = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    settings = LengthSettings.of(tokenizer, enc)
    request = {"inputs": [_input_stamp(p) for p in inputs], "settings": dataclasses.asdict(settings),
               "pair_kind": pair_kind, "score_max": score_max, "skip_bad_rows": skip_bad_rows,
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
            raise OutputError(f"--output {output}: holds the input {p}, which replacing the folder would delete; "
                              "choose another output folder")
    folder_rule = dict(overwrite=overwrite, recognise=_is_corpus_folder, own_entries=(MANIFEST, SHARDS, INDEX))
    check_output_folder(output, PREPARE_TOOL, **folder_rule)
    started = time.time()
    with staged_folder(output, PREPARE_TOOL, **folder_rule, log=log) as staging:  # renamed to output once complete
        os.makedirs(os.path.join(staging, "rows"))
        sources, digest, shards, index, lengths, report = _build(inputs, tokenizer_path, staging, settings, pair_kind,
                                                                 score_max, skip_bad_rows, pretokenize, num_proc,
                                                                 rows_per_shard, progress, count_tokens)
        # 3. manifest last
        manifest = {
            "format": FORMAT, "request": request, "rows": sum(s["rows"] for s in sources), "content_digest": digest,
            "sources": sources, "skipped_rows": dict(report.skipped), "notes": report.notes, "shards": shards,
            "index": index, "token_lengths": lengths,
            "tokenizer": {"path": tokenizer_path, "fingerprint": settings.tokenizer},
            "settings": dataclasses.asdict(settings), "pair_kind": pair_kind, "score_max": score_max,
            "pretokenize": pretokenize, "seconds": round(time.time() - started, 1),
        }
        with open(os.path.join(staging, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, ensure_ascii=False)
    log(f"{output}: {manifest['rows']} rows from {len(inputs)} source(s) in {len(shards)} shard(s), "
        f"{sum(s['bytes'] for s in shards) / 2**20:.0f} MiB, {manifest['seconds']:.0f}s" +
        (f"; {sum(report.skipped.values())} rows skipped" if report.skipped else ""))
    return manifest


def _build(inputs, tokenizer_path, staging, settings, pair_kind, score_max, skip_bad_rows, pretokenize, num_proc,
           rows_per_shard, progress, count_tokens):
    """Rows, then lengths and hashes, into staging/shards, then the index arrays
    -> (manifest sources, digest, shard list, index file list, token length range, report)."""
    # 1. stream validated rows into Arrow files (one process: parsing + validation, bounded memory)
    report = LoadReport()
    rows_per_source, files_per_source, digest, row_files = _write_rows(inputs, staging, pair_kind, score_max,
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
    features = _annotation_features(pretokenize)
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

    from data.bucket_sampler import rows_that_can_collide

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
            length_keys[r0:r1] = (passage << 32) | query_len
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


def _write_rows(inputs, staging, pair_kind, score_max, skip_bad_rows, report, rows_per_file, progress):
    """Validated rows -> Arrow files of up to rows_per_file rows
    -> (rows per source, the files of each source in order of their first row, content digest, Arrow files)."""
    import pyarrow as pa
    from tqdm.auto import tqdm

    schema = _row_schema(False)
    columns = [f.name for f in schema]
    rows_per_source = [0] * len(inputs)
    file_ids: list[dict] = [{} for _ in inputs]  # per source: its file (a folder's file, or the path) -> number
    h = hashlib.sha256()
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
    for ex in iter_examples(inputs, pair_kind, score_max, skip_bad_rows, report):
        h.update(json.dumps([ex.query, ex.pos, ex.neg, ex.pos_scores, ex.neg_scores, ex.prompt, ex.label,
                             ex.file_index], ensure_ascii=False).encode())  # = examples_digest
        file, line = ex.source.rsplit(":", 1)
        ids = file_ids[ex.file_index]
        for c, v in (("query", ex.query), ("pos", ex.pos), ("neg", ex.neg), ("pos_scores", ex.pos_scores),
                     ("neg_scores", ex.neg_scores), ("prompt", ex.prompt),
                     ("label", None if ex.label is None else float(ex.label)), ("source", ex.file_index),
                     ("file", ids.setdefault(file, len(ids))), ("line", int(line) if line.isdigit() else -1)):
            buffer[c].append(v)
        rows_per_source[ex.file_index] += 1
        bar.update(1)
        if len(buffer["query"]) >= ROWS_PER_BATCH:
            flush()
    flush()
    bar.close()
    if writer is not None:
        writer.close()
    return rows_per_source, [list(ids) for ids in file_ids], h.hexdigest()[:16], files


def file_crc32(file: str) -> str:
    """CRC-32 of a file's bytes, 8 hex digits: a check against damage (zlib's, the fastest digest at hand), not
    against tampering."""
    crc, buffer = 0, bytearray(1 << 24)
    view = memoryview(buffer)
    with open(file, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            crc = zlib.crc32(view[:n], crc)
    return f"{crc:08x}"


# ------------------------------------------------------------------------------------------ read
def verify_shards(path: str, manifest: dict, contents: bool = False) -> None:
    """The shards and index files on disk are the manifest's: none missing, none truncated or grown, none extra.
    contents=True also compares every index file's and shard's CRC-32 with the manifest's: a read of every byte
    (GBs at scale), so opening a corpus does not ask for it (`check_index` checks the index's values instead)."""
    for kind, folder, listed_files in (("shard", SHARDS, manifest["shards"]), ("index file", INDEX, manifest["index"])):
        for s in listed_files:
            file = os.path.join(path, s["file"])
            if not os.path.isfile(file):
                raise DataError(f"{path}: {kind} {s['file']} of the manifest is missing; prepare the corpus again")
            size = os.path.getsize(file)
            if size != s["bytes"]:
                raise DataError(f"{path}: {kind} {s['file']} has {size} bytes, the manifest says {s['bytes']} "
                                "(truncated or changed); prepare the corpus again")
        listed = {s["file"] for s in listed_files}
        extra = sorted(os.path.relpath(f, path) for f in glob.glob(os.path.join(path, folder, "*"))
                       if os.path.relpath(f, path) not in listed)
        if extra:
            raise DataError(f"{path}: {', '.join(extra)} not in the manifest (extra {kind}); remove it or prepare "
                            "the corpus again")
    if contents:
        for kind, entries in (("index file", manifest["index"]), ("shard", manifest["shards"])):
            for entry in entries:
                _check_crc32(path, kind, entry)


def _check_crc32(path: str, kind: str, entry: dict) -> None:
    crc = file_crc32(os.path.join(path, entry["file"]))
    if crc != entry["crc32"]:
        raise DataError(f"{path}: {kind} {entry['file']} has CRC-32 {crc}, the manifest says {entry['crc32']} "
                        "(changed in place since it was prepared); prepare the corpus again")


# index/<name>.npy: dtype, and entries per row (0: one, 1: one more than the rows, None: any number)
INDEX_ARRAYS = {"length_keys": (np.int64, 0), "source": (np.int32, 0), "can_collide": (np.bool_, 0),
                "neg_count": (np.int32, 0), "scored": (np.uint8, 0), "key_offsets": (np.int64, 1),
                "neg_offsets": (np.int64, 1), "key_hashes": (np.uint64, None), "neg_hashes": (np.uint64, None)}
CHECK_CHUNK = 1 << 20  # rows per step of check_index: its temporaries stay a few MiB at any corpus size
CHECKSUMMED_AT_OPEN = (f"{INDEX}/record_batches.npy",)  # the small array; the [N] ones cost a read of every byte


def check_index(path: str, manifest: dict) -> np.ndarray:
    """DataError naming the file and row unless the index arrays hold what prepare wrote -> record_batches.npy.

    Checked at every open: each array's type and length; record batches in shard order, their first rows rising
    from 0, their byte offsets inside their shard and each shard's rows as the manifest says; source ids in range,
    each source's row count the manifest's; length keys within the corpus's max lengths (passages rounded up to 8)
    and spanning exactly the range the manifest records; key and negative offsets rising from 0 to their hash
    arrays' lengths, at least one key and at most `neg_count` negative hashes per row; `scored` and `can_collide`
    only the values prepare writes; the CRC-32 of the small record_batches.npy. One pass over the per-row arrays
    (not the hashes) in chunks: time linear in the rows, memory bounded (benchmarks/README.md). The per-row arrays'
    checksums, which alone would see a changed hash or an in-range change of a value, are compared only on request
    (`verify_shards(contents=True)`): a read of every index byte, about as long again as these checks."""
    rows, sources, settings = manifest["rows"], manifest["sources"], manifest["settings"]

    def refuse(name: str, problem: str) -> DataError:
        return DataError(f"{path}: {INDEX}/{name}.npy {problem}; prepare the corpus again")

    if sum(s["rows"] for s in manifest["shards"]) != rows:
        raise DataError(f"{path}: shards hold {sum(s['rows'] for s in manifest['shards'])} rows, the manifest says "
                        f"{rows}")
    arrays = {}
    for name, (dtype, extra) in INDEX_ARRAYS.items():
        try:
            a = np.load(os.path.join(path, INDEX, name + ".npy"), mmap_mode="r")
        except (OSError, ValueError) as e:
            raise refuse(name, f"cannot be read ({e})") from None
        want = None if extra is None else rows + extra
        if a.dtype != dtype or a.ndim != 1 or (want is not None and len(a) != want):
            raise refuse(name, f"holds {a.dtype} {list(a.shape)} for {rows} rows; prepare writes {np.dtype(dtype)} "
                               f"[{want if want is not None else 'any'}]")
        arrays[name] = a
    table = _check_record_batches(path, manifest, refuse)

    q_max, p_max = settings["query_max_len"], int(passage_key(settings["passage_max_len"]))
    counts = np.zeros(len(sources), dtype=np.int64)
    span = {"query": [np.inf, -np.inf], "passage": [np.inf, -np.inf]}
    for r0 in range(0, rows, CHECK_CHUNK):
        r1 = min(r0 + CHECK_CHUNK, rows)
        chunk = {name: np.asarray(a[r0:r1 + (name.endswith("offsets"))]) for name, a in arrays.items()
                 if not name.endswith("hashes")}

        def first(bad) -> int:  # only once a cheap test (min, max, any) failed: the chunk's first bad row
            return int(np.flatnonzero(bad)[0])

        src = chunk["source"]
        if src.min() < 0 or src.max() >= len(sources):
            r = first((src < 0) | (src >= len(sources)))
            raise refuse("source", f"row {r0 + r}: source id {src[r]}, but the manifest has {len(sources)} "
                                   f"source(s) (ids 0–{len(sources) - 1})")
        counts += np.bincount(src, minlength=len(sources))
        keys = chunk["length_keys"]
        q, p = keys & 0xFFFFFFFF, keys >> 32
        lows, highs = {"query": int(q.min()), "passage": int(p.min())}, {"query": int(q.max()), "passage": int(p.max())}
        if highs["query"] > q_max or lows["passage"] < 0 or highs["passage"] > p_max or (p & 7).any():
            r = first((q > q_max) | (p < 0) | (p > p_max) | (p & 7 != 0))
            raise refuse("length_keys", f"row {r0 + r}: key {keys[r]} decodes to {q[r]} query and {p[r]} passage "
                                        f"tokens; the corpus allows query ≤ {q_max} and passage ≤ {p_max}, a "
                                        "multiple of 8")
        span = {k: [min(span[k][0], lows[k]), max(span[k][1], highs[k])] for k in span}
        per_row = np.diff(chunk["key_offsets"])
        if per_row.min() < 1:
            r = first(per_row < 1)
            raise refuse("key_offsets", f"row {r0 + r}: {per_row[r]} hashes of the query and positives (at least 1)")
        negs, neg_count = np.diff(chunk["neg_offsets"]), chunk["neg_count"]
        if negs.min() < 0 or (negs > neg_count).any():
            r = first((negs < 0) | (negs > neg_count))
            raise refuse("neg_offsets", f"row {r0 + r}: {negs[r]} negative hashes for {neg_count[r]} hard negatives "
                                        f"({INDEX}/neg_count.npy)")
        scored, collide = chunk["scored"], chunk["can_collide"].view(np.uint8)
        if scored.max() > 3:
            r = first(scored > 3)
            raise refuse("scored", f"row {r0 + r}: {scored[r]}, not two flag bits (0–3)")
        if collide.max() > 1:
            r = first(collide > 1)
            raise refuse("can_collide", f"row {r0 + r}: byte {collide[r]}, not a bool (0 or 1)")
    for name in ("key", "neg"):
        offsets, hashes = arrays[name + "_offsets"], arrays[name + "_hashes"]
        if offsets[0] != 0 or offsets[-1] != len(hashes):
            raise refuse(name + "_offsets", f"runs from {offsets[0]} to {offsets[-1]}, not from 0 to the "
                                            f"{len(hashes)} hashes of {INDEX}/{name}_hashes.npy")
    for k, (n, s) in enumerate(zip(counts, sources)):
        if n != s["rows"]:
            raise refuse("source", f"gives {n} rows to source {k} ({s['path']}), the manifest {s['rows']}")
    if span != manifest["token_lengths"]:
        raise refuse("length_keys", f"spans {span['query']} query and {span['passage']} passage tokens, the "
                                    f"manifest records {manifest['token_lengths']['query']} and "
                                    f"{manifest['token_lengths']['passage']}")
    for entry in manifest["index"]:
        if entry["file"] in CHECKSUMMED_AT_OPEN:
            _check_crc32(path, "index file", entry)
    return table


def _check_record_batches(path: str, manifest: dict, refuse) -> np.ndarray:
    """index/record_batches.npy, [B, 3] (shard, byte offset, first row), against the manifest's shards."""
    try:
        table = np.load(os.path.join(path, INDEX, "record_batches.npy"))  # small (one entry per 1000 rows): in memory
    except (OSError, ValueError) as e:
        raise refuse("record_batches", f"cannot be read ({e})") from None
    rows, shards = manifest["rows"], manifest["shards"]
    if table.dtype != np.int64 or table.ndim != 2 or table.shape[1] != 3 or len(table) == 0:
        raise refuse("record_batches", f"holds {table.dtype} {list(table.shape)}; prepare writes int64 [batches, 3]")
    shard, offset, first = table[:, 0], table[:, 1], table[:, 2]
    if shard.min() < 0 or shard.max() >= len(shards) or (np.diff(shard) < 0).any():
        raise refuse("record_batches", f"names shards outside 0–{len(shards) - 1} or out of order")
    if first[0] != 0 or (np.diff(first) <= 0).any() or first[-1] >= rows:
        raise refuse("record_batches", f"has first rows that do not rise from 0 below the {rows} rows")
    sizes = np.array([s["bytes"] for s in shards])
    same_shard = np.diff(shard) == 0
    if (offset < 0).any() or (offset >= sizes[shard]).any() or (np.diff(offset)[same_shard] <= 0).any():
        raise refuse("record_batches", "has byte offsets outside their shard or out of order")
    per_shard = np.bincount(shard, weights=np.diff(np.append(first, rows)), minlength=len(shards)).astype(int)
    for n, s in zip(per_shard, shards):
        if n != s["rows"]:
            raise refuse("record_batches", f"gives {n} rows to shard {s['file']}, the manifest {s['rows']}")
    return table


def _offset_checks(schema, columns) -> list[tuple[int, object]]:
    """(position, type with strings as bytes) of each of `columns` that has offsets, for `_check_offsets`."""
    checks = [(schema.get_field_index(c), _bytes_type(schema.field(c).type)) for c in columns if c in schema.names]
    return [(i, t) for i, t in checks if t is not None]


def _check_offsets(batch, checks) -> None:
    """ArrowInvalid unless every offset of the checked columns of a record batch rises inside its values: pyarrow
    aborts the whole process on decoding a string whose offsets run backwards. Strings are viewed as bytes, so only
    the offsets are read (a row's invalid UTF-8 raises when that row is decoded)."""
    for i, as_bytes in checks:
        batch.column(i).view(as_bytes).validate(full=True)


def _bytes_type(t):
    """The type with strings as binary (the same layout), or None for a type without offsets."""
    import pyarrow as pa

    if pa.types.is_string(t):
        return pa.binary()
    if pa.types.is_list(t):
        return pa.list_(_bytes_type(t.value_type) or t.value_type)
    return None


def _check_value(values) -> None:
    """ArrowInvalid unless a slice of an Arrow array can be decoded: list offsets inside their values, string
    offsets and UTF-8. Reads only the slice's own bytes (validate(full=True) of a list reads its whole child)."""
    import pyarrow as pa

    t = values.type
    if pa.types.is_list(t):
        offsets = values.offsets.to_numpy()
        if offsets[0] < 0 or (np.diff(offsets) < 0).any() or offsets[-1] > len(values.values):
            raise pa.ArrowInvalid(f"list offsets {offsets.tolist()} outside the {len(values.values)} values")
        _check_value(values.values.slice(offsets[0], offsets[-1] - offsets[0]))
    elif pa.types.is_string(t):
        values.validate(full=True)


def _decodes(batch, r: int) -> bool:
    """Whether row r of a record batch can be decoded (`_check_value` of each column), to name a damaged row."""
    import pyarrow as pa

    try:
        for column in batch.columns:
            _check_value(column.slice(r, 1))
        return True
    except pa.ArrowInvalid:
        return False


ROW_COLUMNS = ("query", "pos", "neg", "pos_scores", "neg_scores", "prompt", "label", "source", "file", "line")
BATCHES_KEPT = 16  # decoded record batches kept per process (an item reads its row more than once)


class PreparedCorpus:
    """A prepared folder: the planner's inputs as memory-mapped arrays, rows read by index from the shards.

    Opening it reads the manifest, checks the index arrays against it (`check_index`: one pass over them) and maps
    them; the shards are opened by the first row read, in the process that reads it (a DataLoader worker maps them
    itself)."""

    def __init__(self, path: str):
        self.path = os.path.normpath(path)
        self.manifest = read_manifest(self.path)
        verify_shards(self.path, self.manifest)
        self._table = check_index(self.path, self.manifest)  # [B, 3] record batches, small: in memory
        self.source_names = [s["path"] for s in self.manifest["sources"]]
        self.pretokenized = bool(self.manifest["pretokenize"])
        self.column_names = list(ROW_COLUMNS) + (["query_ids", "passage_ids"] if self.pretokenized else [])
        self._maps: dict = {}  # shard -> (memory map, schema, offset checks), opened by its first read here
        self._batches: dict = {}  # record batch -> decoded RecordBatch, the last BATCHES_KEPT

    def __len__(self) -> int:
        return self.manifest["rows"]

    def __getstate__(self) -> dict:  # to a spawned worker: paths, not maps (they are reopened there)
        return {**self.__dict__, "_maps": {}, "_batches": {}}

    @property
    def content_digest(self) -> str:
        return self.manifest["content_digest"]

    def array(self, name: str) -> np.ndarray:
        """index/<name>.npy, memory-mapped read-only (a header read; pages load when touched)."""
        return np.load(os.path.join(self.path, INDEX, name + ".npy"), mmap_mode="r")

    def check_settings(self, tokenizer, settings, pair_kind: str | None) -> None:
        """Refuse a corpus whose lengths were computed for another tokenizer, prompts or max lengths, or for
        another kind of rows, naming each difference."""
        want = LengthSettings.of(tokenizer, settings).__dict__
        have = self.manifest["settings"]
        names = {"tokenizer": "tokenizer (fingerprint)", "query_max_len": "--query-max-len",
                 "passage_max_len": "--passage-max-len", "query_prompt": "--query-prompt",
                 "passage_prompt": "--passage-prompt"}
        diff = [f"{names[k]}: {have.get(k)!r} in the corpus, {want[k]!r} in this run" for k in names
                if have.get(k) != want[k]]
        if self.manifest["pair_kind"] != pair_kind:
            diff.append(f"rows: {self.manifest['pair_kind'] or 'query/passage groups'} in the corpus, "
                        f"{pair_kind or 'query/passage groups'} for this loss (scripts/prepare_data.py --pair-kind)")
        if diff:
            raise DataError(f"{self.path} was prepared with other settings than this run uses, so its token lengths "
                            "(length buckets) would be wrong:\n  " + "\n  ".join(diff) + "\nprepare it again with "
                            "--tokenizer <this run's --model> and the run's settings, or change the run's settings")

    # ---------------------------------------------------------- the planner's inputs (memory-mapped)
    def length_keys(self) -> EncodedKeys:
        """Per row passage tokens rounded up to 8 · 2³² + query tokens: sampler_inputs.length_keys, encoded."""
        return EncodedKeys(self.array("length_keys"), pairs=True)

    def text_ids(self) -> TextIds:
        return TextIds(self.array("key_offsets"), self.array("key_hashes"), self.array("neg_offsets"),
                       self.array("neg_hashes"), can_collide=self.array("can_collide"))

    def file_index(self) -> np.ndarray:
        return self.array("source")

    # ---------------------------------------------------------- rows
    def row(self, i: int, columns=None) -> dict:
        """Row i as a dict of the given columns (default: all), decoded from its record batch alone. DataError naming
        the shard, the row and its file:line when the row's bytes cannot be decoded (the shard was damaged)."""
        import pyarrow as pa

        if not 0 <= i < len(self):
            raise IndexError(f"row {i} of a corpus of {len(self)} rows")
        table = self._table
        b = int(np.searchsorted(table[:, 2], i, side="right")) - 1
        batch = self._batch(b, i)
        r = int(i - table[b, 2])
        try:
            return {c: batch.column(c)[r].as_py() for c in (columns or self.column_names)}
        except (pa.ArrowException, KeyError, ValueError) as e:  # invalid UTF-8: UnicodeDecodeError, a ValueError
            raise self._damaged(b, i, r, batch, f"cannot be decoded ({type(e).__name__}: {e})") from None

    def _batch(self, b: int, i: int):
        """Record batch b, decoded (zero-copy) and its offsets checked, for reading row i."""
        import pyarrow as pa

        if b in self._batches:
            self._batches[b] = self._batches.pop(b)  # most recently used last
            return self._batches[b]
        shard, offset = int(self._table[b, 0]), int(self._table[b, 1])
        try:
            if shard not in self._maps:
                source = pa.memory_map(os.path.join(self.path, self.manifest["shards"][shard]["file"]))
                schema = pa.ipc.read_schema(pa.ipc.read_message(source))
                self._maps[shard] = (source, schema, _offset_checks(schema, self.column_names))
            source, schema, checks = self._maps[shard]
            source.seek(offset)
            batch = pa.ipc.read_record_batch(pa.ipc.read_message(source), schema)
            batch.validate()  # buffer sizes against lengths; reads no values
        except (pa.ArrowException, OSError, ValueError) as e:
            raise self._damaged(b, i, i - int(self._table[b, 2]), None, f"cannot be read: its record batch at byte "
                                f"{offset} fails ({type(e).__name__}: {e})") from None
        try:
            _check_offsets(batch, checks)
        except pa.ArrowInvalid as e:  # name the damaged row (on this path only: a check per row of the batch)
            first = int(self._table[b, 2])
            bad = next((r for r in range(batch.num_rows) if not _decodes(batch, r)), i - first)
            problem = f"cannot be decoded ({type(e).__name__}: {e})"
            if first + bad != i:
                problem += f", found reading row {i} from the same record batch"
            raise self._damaged(b, first + bad, bad, batch, problem) from None
        self._batches[b] = batch
        if len(self._batches) > BATCHES_KEPT:
            del self._batches[next(iter(self._batches))]
        return batch

    def _damaged(self, b: int, i: int, r: int, batch, problem: str) -> DataError:
        """DataError for row i (row r of record batch b, decoded or None) of a shard damaged after it was written."""
        file = os.path.join(self.path, self.manifest["shards"][int(self._table[b, 0])]["file"])
        where = ""
        if batch is not None:  # its file:line, if those fixed-width columns still make sense
            try:
                row = {c: batch.column(c)[r].as_py() for c in ("source", "file", "line")}
                if row["source"] >= 0 and row["file"] >= 0:
                    where = f" ({self.location(row)})"
            except (KeyError, IndexError, TypeError, ValueError):
                pass
        return DataError(f"{file}: row {i} of the corpus{where} {problem}; the shard was changed after it was "
                         "written: prepare the corpus again")

    def location(self, row: dict) -> str:
        """file:line of a row read with its source, file and line columns."""
        return f"{self.manifest['sources'][row['source']]['files'][row['file']]}:{row['line']}"

    def where(self, i: int) -> str:
        """file:line of row i, for messages."""
        return self.location(self.row(int(i), ["source", "file", "line"]))

    def check_rows(self, group_size: int, needs_scores: bool) -> None:
        """What GroupedDataset checks on every example, from the index arrays: teacher scores present and enough
        negatives for distillation; the first bad row is named by file and line."""
        if not needs_scores:
            return
        scored = self.array("scored")
        need = 3 if group_size > 1 else 1  # pos_scores (bit 0), and neg_scores (bit 1) with negatives
        missing = np.flatnonzero(scored & need != need)
        if len(missing):
            raise DataError(f"{self.where(missing[0])}: field 'pos_scores'/'neg_scores' missing; the distill loss "
                            "needs teacher scores on every row (scripts/score_with_teacher.py adds them)")
        negs = self.array("neg_count")
        short = np.flatnonzero(negs < group_size - 1)
        if len(short):
            raise DataError(f"{self.where(short[0])}: field 'neg' has {negs[short[0]]} scored negatives; "
                            f"distillation with --group-size {group_size} needs {group_size - 1} per row")


def prepare_hint(num_rows: int, paths) -> str | None:
    """A note for train.py when raw inputs are big enough that preparing them once would pay."""
    if num_rows < PREPARE_HINT_ROWS:
        return None
    return (f"note: {num_rows} raw rows are read, tokenised and hashed on every start (and every resume); prepare "
            f"them once and train from the folder: python -m scripts.prepare_data --input {' '.join(paths)} "
            "--tokenizer <--model> --output DIR, then --train-data DIR (README: Big corpora)")
