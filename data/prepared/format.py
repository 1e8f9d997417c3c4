"""A prepared corpus on disk: the layout, the manifest and the checks a reader runs on them.

Per row, `shards/*.arrow` (Arrow IPC streams, written by `datasets`, which can also read them) hold

    query, pos, neg, pos_scores, neg_scores, prompt, label   the row's content: `Example`'s fields (data/rows.py)
    source, file, line                                       its source (index into the manifest's sources), file
                                                             (index into that source's files) and line
    query_len, passage_len                                   tokens of the query (with its prompt) and of the
                                                             longest passage, for that tokenizer, prompts and max
                                                             lengths (`sampler_inputs.token_counts`)
    key_hashes, neg_hashes                                   64-bit hashes of query + positives and of the hard
                                                             negatives (`text_ids.row_text_hashes`)
    query_ids, passage_ids                                   token ids, only when prepared with pretokenize

(`shard_schema`: the content columns are derived from `Example`), and beside them, in `index/`, what train.py needs
before its first step as flat numpy arrays (`np.load(mmap_mode="r")`, nothing parsed):

    length_keys.npy                  [N] int64   bucket key: passage tokens rounded up to 8 · 2³² + query tokens
    source.npy                       [N] int32   source of each row
    key_offsets.npy, key_hashes.npy  CSR         the hashes of query + positives (`TextIds`)
    neg_offsets.npy, neg_hashes.npy  CSR         the hashes of the hard negatives
    can_collide.npy                  [N] bool    rows sharing a text with another row (`rows_that_can_collide`)
    neg_count.npy                    [N] int32   hard negatives per row (the distillation check)
    scored.npy                       [N] uint8   bit 0: pos_scores present, bit 1: neg_scores present
    record_batches.npy               [B, 3] int64  shard, byte offset and first row of every record batch

`manifest.json` holds the sources with their row counts and skipped rows, the shards and index files with their
bytes, the tokenizer (path and a fingerprint of its vocabulary and rules), the length settings, the row fields
stored, and a content digest (data/rows.py `Digest` of the rows, so a prepared corpus and the raw files it came
from have the same digest). It also holds what lets a reader check the index cheaply: a CRC-32 of every index file
and shard, and the smallest and largest query and passage lengths.

A reader refuses a corpus of another format version, one whose rows lack a field `Example` has now, shards that do
not match the manifest (missing, truncated or extra shard), and index arrays that do not hold what prepare wrote
(`check_index`, at every open, linear in the rows; benchmarks/README.md). Every file's checksum is compared only on
request (`verify_shards(contents=True)`: GBs at scale).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import zlib
from dataclasses import dataclass

import numpy as np

from data.length_buckets import passage_key, unpack_length_keys
from data.rows import CONTENT_FIELDS, content_arrow_fields
from data.tables import DataError

FORMAT = "prepared-training-corpus/3"  # /2: the index/ arrays; /3: checksums, length range, each row's file
MANIFEST = "manifest.json"
SHARDS = "shards"
INDEX = "index"
ROWS_PER_BATCH = 1000  # rows per Arrow record batch
PREPARE_TOOL = "scripts.prepare_data"  # the name in the folder's .written_by.json (storage/folders.py)
MANIFEST_FIELDS = ("rows", "sources", "shards", "index", "token_lengths", "settings", "pair_kind", "pretokenize",
                   "content_digest")  # what a reader uses, beside "format" (and "row_fields")
MANIFEST_ENTRY_FIELDS = {"sources": ("path", "rows", "files"), "shards": ("file", "rows", "bytes", "crc32"),
                         "index": ("file", "bytes", "crc32")}
# a manifest without "row_fields" (written before it was recorded) holds these
ROW_FIELDS_BEFORE_LISTED = ("query", "pos", "neg", "pos_scores", "neg_scores", "prompt", "label")
LOCATION_COLUMNS = (("source", "int32"), ("file", "int32"), ("line", "int64"))  # where the row came from
ANNOTATION_COLUMNS = (("query_len", "int32"), ("passage_len", "int32"), ("key_hashes", "list<int64>"),
                      ("neg_hashes", "list<int64>"))  # hashes: uint64 bits
PRETOKENIZED_COLUMNS = (("query_ids", "list<int32>"), ("passage_ids", "list<list<int32>>"))
ROW_COLUMNS = CONTENT_FIELDS + tuple(name for name, _ in LOCATION_COLUMNS)  # what a reader reads of a row


def _arrow(type_name: str):
    import pyarrow as pa

    if type_name.startswith("list<"):
        return pa.list_(_arrow(type_name[5:-1]))
    return getattr(pa, type_name)()


def row_schema():
    """Arrow schema of a stored row: `Example`'s content fields (data/rows.py), then its location."""
    import pyarrow as pa

    return pa.schema(content_arrow_fields() + [pa.field(n, _arrow(t)) for n, t in LOCATION_COLUMNS])


def shard_schema(pretokenize: bool):
    """Arrow schema of a shard: the row, its token lengths and text hashes (and token ids)."""
    import pyarrow as pa

    extra = ANNOTATION_COLUMNS + (PRETOKENIZED_COLUMNS if pretokenize else ())
    return pa.schema(list(row_schema()) + [pa.field(n, _arrow(t)) for n, t in extra])


def shard_features(pretokenize: bool):
    """`datasets` Features of a shard (`shard_schema`)."""
    from datasets import Features

    return Features.from_arrow_schema(shard_schema(pretokenize))


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class LengthSettings:
    """What the stored token lengths depend on; a run must use the same (train.py compares them). The fields after
    passage_prompt were added by issue 27; a manifest written before holds their defaults (no format, no EOS)."""

    tokenizer: str  # fingerprint (`tokenizer_fingerprint`)
    query_max_len: int
    passage_max_len: int
    query_prompt: str
    passage_prompt: str
    query_instruction_format: str = ""
    query_instruction: str = ""
    format_passages: bool = False  # passages written with the instruction format (symmetric data)
    append_eos: bool = False  # the tokenizer appended EOS to every text

    @classmethod
    def of(cls, tokenizer, settings, format_passages: bool = False) -> "LengthSettings":
        """From a tokenizer and EncoderSettings (a model's, or read_settings of a folder plus overrides), after the
        model's set-up (models/bi_encoder.py `set_up_text`: append_eos decided, EOS in the tokenizer)."""
        return cls(tokenizer_fingerprint(tokenizer), int(settings.query_max_len), int(settings.passage_max_len),
                   settings.query_prompt or "", settings.passage_prompt or "", settings.query_instruction_format or "",
                   settings.query_instruction or "", bool(format_passages and settings.query_instruction_format),
                   bool(settings.append_eos))

    @classmethod
    def from_manifest(cls, recorded: dict) -> "LengthSettings":
        """The settings a manifest records, with the defaults of fields added since it was written."""
        return cls(**{f: recorded[f] for f in cls.__dataclass_fields__ if f in recorded})

    def text_format(self):
        """How the texts were written (models/text_format.py)."""
        from models.text_format import TextFormat

        return TextFormat(self.query_prompt, self.passage_prompt, self.query_instruction_format,
                          self.query_instruction, self.format_passages)


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


def is_corpus_folder(path: str) -> bool:
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
    lacking = [f for f in CONTENT_FIELDS if f not in manifest.get("row_fields", ROW_FIELDS_BEFORE_LISTED)]
    if lacking:
        raise DataError(f"{file}: its rows were prepared without the field(s) {', '.join(lacking)} that rows have "
                        f"now (data/rows.py); prepare it again (python -m {PREPARE_TOOL})")
    return manifest


def file_crc32(file: str) -> str:
    """CRC-32 of a file's bytes, 8 hex digits: a check against damage (zlib's, the fastest digest at hand), not
    against tampering."""
    crc, buffer = 0, bytearray(1 << 24)
    view = memoryview(buffer)
    with open(file, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            crc = zlib.crc32(view[:n], crc)
    return f"{crc:08x}"


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
        p, q = unpack_length_keys(keys)
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
