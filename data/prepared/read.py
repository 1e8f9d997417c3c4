"""Reading a prepared corpus: `PreparedCorpus` (the layout is in data/prepared/format.py).

Opening a corpus reads the manifest and maps the index arrays: no shard is opened, no column is read, and memory
and time before the first step grow only with what the planner itself keeps (benchmarks/README.md). A row is read by
seeking to its record batch (`record_batches.npy`) and decoding that one batch. A row that cannot be decoded (a
shard damaged in place, at the same size) raises DataError naming the shard, the row and its file:line.
"""
from __future__ import annotations

import os

import numpy as np

from data.length_buckets import EncodedKeys
from data.prepared.format import (INDEX, PREPARE_TOOL, PRETOKENIZED_COLUMNS, ROW_COLUMNS, LengthSettings,
                                  check_index, read_manifest, verify_shards)
from data.row_kind import RowKind
from data.rows import check_teacher_scores
from data.tables import DataError, OptionError
from data.text_ids import TextIds


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
        self.column_names = list(ROW_COLUMNS) + ([n for n, _ in PRETOKENIZED_COLUMNS] if self.pretokenized else [])
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

    def check_settings(self, tokenizer, settings, rows: RowKind, format_passages: bool | None = None) -> None:
        """Refuse a corpus whose lengths were computed for another tokenizer, prompts, instruction format, EOS or max
        lengths (OptionError naming the differing settings' fields), or for another kind of rows, naming each
        difference. format_passages: the run's option (None = by the kind of rows)."""
        want = LengthSettings.of(tokenizer, settings, rows.formats_passages(format_passages)).__dict__
        have = LengthSettings.from_manifest(self.manifest["settings"]).__dict__
        fields = [k for k in want if k != "tokenizer" and have.get(k) != want[k]]
        diff = []
        if have.get("tokenizer") != want["tokenizer"]:
            diff.append(f"tokenizer (fingerprint): {have.get('tokenizer')!r} in the corpus, {want['tokenizer']!r} in "
                        "this run")
        diff += [f"{{{k}}}: {have.get(k)!r} in the corpus, {want[k]!r} in this run" for k in fields]
        pair_kind = rows.pair_kind
        if self.manifest["pair_kind"] != pair_kind:
            diff.append(f"rows: {self.manifest['pair_kind'] or 'query/passage groups'} in the corpus, "
                        f"{pair_kind or 'query/passage groups'} for this loss (python -m {PREPARE_TOOL} --pair-kind)")
        if diff:
            message = (f"{self.path} was prepared with other settings than this run uses, so its token lengths "
                       "(length buckets) would be wrong:\n  " + "\n  ".join(diff) + "\nprepare it again for this "
                       f"run's tokenizer and settings (python -m {PREPARE_TOOL}), or change the run's settings")
            raise OptionError(fields, message) if fields else DataError(message)

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

    def check_rows(self, group_size: int, rows: RowKind) -> None:
        """What GroupedDataset checks on every example (data/rows.py `check_teacher_scores`), from the index arrays:
        for SCORED_GROUPS, teacher scores present and enough negatives; the first bad row is named by file and
        line."""
        if rows.needs_scores:
            check_teacher_scores(self.array("scored"), self.array("neg_count"), group_size, self.where)
