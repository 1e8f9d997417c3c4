"""A prepared training corpus: Arrow shards written once by scripts/prepare_data.py, memory-mapped by train.py.

Raw files are read into Python `Example`s and every text is tokenised on every start to build the length buckets
and the duplicate ids: fine for a quick experiment, impossible at pretraining scale (100M+ pairs). Preparing does
that work once and stores per row

    query, pos, neg, pos_scores, neg_scores, prompt, label   the row itself (as `Example`)
    source, line                                             its source (index into the manifest's sources), line
    query_len, passage_len                                   tokens of the query (with its prompt) and of the
                                                             longest passage, for that tokenizer, prompts and max
                                                             lengths (`sampler_inputs.token_counts`)
    key_hashes, neg_hashes                                   64-bit hashes of query + positives and of the hard
                                                             negatives (`sampler_inputs.row_text_hashes`)
    query_ids, passage_ids                                   token ids, only with --pretokenize

in `shards/*.arrow` (Arrow IPC streams, the files `datasets` memory-maps), and `manifest.json`: the sources with
their row counts and skipped rows, the shards with rows and bytes, the tokenizer (path and a fingerprint of its
vocabulary and rules), the length settings, and a content digest (`examples_digest` of the rows, so a prepared
corpus and the raw files it came from have the same digest).

Safety: the folder is built as `<output>.partial/` and renamed into place once complete (manifest written last),
so an interrupted prepare never leaves a folder that looks complete; the next run deletes the partial folder and
starts over (a prepare that fails with an error removes it itself). An existing corpus at <output> is replaced only
after the new one is complete: a failing prepare loses nothing. Re-running with the same inputs (paths, sizes,
modification times) and settings is a no-op.
train.py refuses a corpus whose shards do not match the manifest (missing, truncated or extra shard), or that was
made with another tokenizer, prompts or max lengths than the run uses (the differences are named).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass

import numpy as np

from data.bucket_sampler import TextIds
from data.examples import DataError, LoadReport, iter_examples
from data.sampler_inputs import passage_key, row_text_hashes, token_counts

FORMAT = "prepared-training-corpus/1"
MANIFEST = "manifest.json"
SHARDS = "shards"
ROWS_PER_BATCH = 1000  # rows per Arrow record batch
PREPARE_HINT_ROWS = 200_000  # raw inputs at least this big get a hint to prepare them


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
        raise DataError(f"{file}: format {manifest.get('format')!r}, this code reads {FORMAT!r}; prepare it again")
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
              ("prompt", pa.string()), ("label", pa.float64()), ("source", pa.int32()), ("line", pa.int64())]
    return pa.schema(fields)


def _annotation_features(pretokenize: bool):
    """datasets Features of a shard: the row columns plus lengths, hashes (and token ids)."""
    from datasets import Features, Sequence, Value

    f = {"query": Value("string"), "pos": Sequence(Value("string")), "neg": Sequence(Value("string")),
         "pos_scores": Sequence(Value("float64")), "neg_scores": Sequence(Value("float64")),
         "prompt": Value("string"), "label": Value("float64"), "source": Value("int32"), "line": Value("int64"),
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
            count_tokens=None, log=print) -> dict:
    """Write a prepared corpus of `inputs` (any format load_examples reads) to `output`; -> its manifest.

    Lengths are those of tokenizer_path's tokenizer for these max lengths (train.py's defaults) and prompts (None =
    the model folder's saved prompts) — as train.py's --model and flags set them. pair_kind: None = query/passage groups (contrastive losses), "nli" / "scored" =
    labelled pairs (softmax / cosine loss). Rows are streamed (never all in memory, except an NLI file being turned
    into groups); the token-length pass runs in num_proc processes.
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
    staging = output + ".partial"
    if os.path.exists(staging):
        log(f"{staging}: left by an interrupted prepare; starting over")
        shutil.rmtree(staging)
    os.makedirs(os.path.join(staging, "rows"))
    started = time.time()
    try:
        rows_per_source, digest, shards, report = _build(inputs, tokenizer_path, staging, settings, pair_kind,
                                                         score_max, skip_bad_rows, pretokenize, num_proc,
                                                         rows_per_shard, progress, count_tokens)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed prepare leaves nothing (a killed one: .partial)
        raise

    # 3. manifest last, then into place
    manifest = {
        "format": FORMAT, "request": request, "rows": int(sum(rows_per_source)), "content_digest": digest,
        "sources": [{"path": p, "rows": int(n)} for p, n in zip(inputs, rows_per_source)],
        "skipped_rows": dict(report.skipped), "notes": report.notes, "shards": shards,
        "tokenizer": {"path": tokenizer_path, "fingerprint": settings.tokenizer},
        "settings": dataclasses.asdict(settings), "pair_kind": pair_kind, "score_max": score_max,
        "pretokenize": pretokenize, "seconds": round(time.time() - started, 1),
    }
    with open(os.path.join(staging, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
    old = output + ".old"
    if os.path.exists(old):
        shutil.rmtree(old)
    if os.path.exists(output):
        os.replace(output, old)
    os.replace(staging, output)
    if os.path.exists(old):
        shutil.rmtree(old)
    log(f"{output}: {manifest['rows']} rows from {len(inputs)} source(s) in {len(shards)} shard(s), "
        f"{sum(s['bytes'] for s in shards) / 2**20:.0f} MiB, {manifest['seconds']:.0f}s" +
        (f"; {sum(report.skipped.values())} rows skipped" if report.skipped else ""))
    return manifest


def _build(inputs, tokenizer_path, staging, settings, pair_kind, score_max, skip_bad_rows, pretokenize, num_proc,
           rows_per_shard, progress, count_tokens):
    """Rows, then lengths and hashes, into staging/shards; -> (rows per source, digest, shard list, report)."""
    # 1. stream validated rows into Arrow files (one process: parsing + validation, bounded memory)
    report = LoadReport()
    rows_per_source, digest, row_files = _write_rows(inputs, staging, pair_kind, score_max, skip_bad_rows, report,
                                                     rows_per_shard, progress)
    for i, n in enumerate(rows_per_source):
        if n == 0:
            raise DataError(f"{inputs[i]}: no usable rows (every row was skipped or formed no group)")

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
    shards = [{"file": os.path.relpath(f, staging), "rows": len(datasets.Dataset.from_file(f)),
               "bytes": os.path.getsize(f)} for f in sorted(glob.glob(os.path.join(shard_dir, "*.arrow")))]
    return rows_per_source, digest, shards, report


def _write_rows(inputs, staging, pair_kind, score_max, skip_bad_rows, report, rows_per_file, progress):
    """Validated rows -> Arrow files of up to rows_per_file rows; -> (rows per source, content digest, files)."""
    import pyarrow as pa
    from tqdm.auto import tqdm

    schema = _row_schema(False)
    columns = [f.name for f in schema]
    rows_per_source = [0] * len(inputs)
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
        line = ex.source.rsplit(":", 1)[1]
        for c, v in (("query", ex.query), ("pos", ex.pos), ("neg", ex.neg), ("pos_scores", ex.pos_scores),
                     ("neg_scores", ex.neg_scores), ("prompt", ex.prompt),
                     ("label", None if ex.label is None else float(ex.label)), ("source", ex.file_index),
                     ("line", int(line) if line.isdigit() else -1)):
            buffer[c].append(v)
        rows_per_source[ex.file_index] += 1
        bar.update(1)
        if len(buffer["query"]) >= ROWS_PER_BATCH:
            flush()
    flush()
    bar.close()
    if writer is not None:
        writer.close()
    return rows_per_source, h.hexdigest()[:16], files


# ------------------------------------------------------------------------------------------ read
def verify_shards(path: str, manifest: dict) -> None:
    """The shards on disk are the manifest's: none missing, none truncated or grown, none extra."""
    listed = {s["file"] for s in manifest["shards"]}
    for s in manifest["shards"]:
        file = os.path.join(path, s["file"])
        if not os.path.isfile(file):
            raise DataError(f"{path}: shard {s['file']} of the manifest is missing; prepare the corpus again")
        size = os.path.getsize(file)
        if size != s["bytes"]:
            raise DataError(f"{path}: shard {s['file']} has {size} bytes, the manifest says {s['bytes']} "
                            "(truncated or changed); prepare the corpus again")
    extra = sorted(os.path.relpath(f, path) for f in glob.glob(os.path.join(path, SHARDS, "*"))
                   if os.path.relpath(f, path) not in listed)
    if extra:
        raise DataError(f"{path}: {', '.join(extra)} not in the manifest (extra shard); remove it or prepare the "
                        "corpus again")


class PreparedCorpus:
    """A prepared folder, memory-mapped: rows by index, and the planner's inputs as numpy arrays."""

    def __init__(self, path: str):
        import datasets

        self.path = os.path.normpath(path)
        self.manifest = read_manifest(self.path)
        verify_shards(self.path, self.manifest)
        parts = []
        for s in self.manifest["shards"]:
            part = datasets.Dataset.from_file(os.path.join(self.path, s["file"]))  # memory-mapped
            if len(part) != s["rows"]:
                raise DataError(f"{self.path}: shard {s['file']} has {len(part)} rows, the manifest says {s['rows']}")
            parts.append(part)
        self.rows = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        if len(self.rows) != self.manifest["rows"]:
            raise DataError(f"{self.path}: shards hold {len(self.rows)} rows, the manifest says {self.manifest['rows']}")
        self.source_names = [s["path"] for s in self.manifest["sources"]]
        self.pretokenized = bool(self.manifest["pretokenize"])

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def content_digest(self) -> str:
        return self.manifest["content_digest"]

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

    def _column(self, name: str) -> np.ndarray:
        col = self.rows.data.column(name)
        return np.concatenate([c.to_numpy(zero_copy_only=False) for c in col.chunks]) if col.num_chunks else np.empty(0)

    def _csr(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        import pyarrow.compute as pc

        col = self.rows.data.column(name)
        lengths = np.concatenate([pc.list_value_length(c).to_numpy(zero_copy_only=False) for c in col.chunks])
        values = np.concatenate([c.flatten().to_numpy(zero_copy_only=False) for c in col.chunks])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return offsets, values.astype(np.int64, copy=False).view(np.uint64)

    def length_keys(self) -> np.ndarray:
        """[N, 2]: (longest passage rounded up to 8, query tokens), as sampler_inputs.length_keys computes them."""
        return np.stack([passage_key(self._column("passage_len").astype(np.int64)),
                         self._column("query_len").astype(np.int64)], axis=1)

    def text_ids(self) -> TextIds:
        return TextIds(*self._csr("key_hashes"), *self._csr("neg_hashes"))

    def file_index(self) -> np.ndarray:
        return self._column("source").astype(np.int32)

    def where(self, i: int) -> str:
        """file:line of row i, for messages."""
        row = self.rows.select_columns(["source", "line"])[int(i)]
        return f"{self.source_names[row['source']]}:{row['line']}"

    def check_rows(self, group_size: int, needs_scores: bool) -> None:
        """What GroupedDataset checks on every example, vectorised: teacher scores present and enough negatives
        for distillation; the first bad row is named by file and line."""
        if not needs_scores:
            return
        import pyarrow.compute as pc

        for col in ("pos_scores", "neg_scores") if group_size > 1 else ("pos_scores",):
            nulls = np.concatenate([c.is_null().to_numpy(zero_copy_only=False) for c in self.rows.data.column(col).chunks])
            if nulls.any():
                raise DataError(f"{self.where(np.flatnonzero(nulls)[0])}: field 'pos_scores'/'neg_scores' missing; "
                                "the distill loss needs teacher scores on every row (scripts/score_with_teacher.py "
                                "adds them)")
        negs = np.concatenate([pc.list_value_length(c).to_numpy(zero_copy_only=False)
                               for c in self.rows.data.column("neg").chunks])
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
