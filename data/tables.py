"""The one reader of table files (JSONL, TSV, CSV), for training data (data/examples.py) and evaluation task files
(evaluation/task_files.py), and of columnar files (Parquet, Arrow) for training data.

- `.jsonl` (also `.json`): one JSON object per line; blank lines are skipped.
- `.tsv` (also `.txt`): tab-separated with a header row, fields taken verbatim (QUOTE_NONE): STS/NLI sentences
  contain literal quote characters.
- `.csv`: comma-separated with a header row and standard CSV quoting.

Every file is decoded as UTF-8 with an optional byte-order mark (`utf-8-sig`), so a header written by a
spreadsheet program reads like any other. A line with no text is skipped; any other row must have as many
fields as the header. Problems raise `TableError("path:line: problem")` naming the file and, where there is
one, the line. The reader streams (a generator), so a caller can read files larger than memory.

- `.parquet` / `.arrow` (an Arrow IPC stream, as `datasets` writes, or file): read with pyarrow, record batch by
  record batch; a row's number (from 1) stands where a text file has its line.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Iterator

# Suffix -> format: the one map of the file types read here. Evaluation looks for task splits by the first three only
# (evaluation/task_files.py); the columnar formats are for training data only (`iter_columnar`).
FILE_FORMATS = {".jsonl": "jsonl", ".tsv": "tsv", ".csv": "csv", ".json": "jsonl", ".txt": "tsv",
                ".parquet": "parquet", ".arrow": "arrow"}
TABLE_KINDS, COLUMNAR_KINDS = ("jsonl", "tsv", "csv"), ("parquet", "arrow")
# Some STS/NLI sentences are long; the csv module's default 128 KiB field limit is not a property of the data.
FIELD_SIZE_LIMIT = min(sys.maxsize, 2**31 - 1)


class DataError(ValueError):
    """A data file or row that cannot be used; the message names the file, the line and the field."""


class OptionError(DataError):
    """An option given to data/ that cannot be used with this data. The message names options by their field
    (`sampling_alpha`), never by a command-line flag: it is written with each field as `{field}`, and a command line
    shows it with its own names, `error.text({"sampling_alpha": "--sampling-alpha"})`; str(error) = `text()`."""

    def __init__(self, fields: str | tuple[str, ...], template: str):
        self.fields = (fields,) if isinstance(fields, str) else tuple(fields)
        self.field, self.template = self.fields[0], template
        super().__init__(self.text())

    def __reduce__(self):  # a DataLoader worker's error travels pickled
        return type(self), (self.fields, self.template)

    def text(self, names: dict[str, str] | None = None) -> str:
        """The message with each field shown as names[field] (default: the field itself)."""
        out = self.template
        for f in self.fields:
            out = out.replace("{" + f + "}", (names or {}).get(f, f))
        return out


class TableError(DataError):
    """A table file that cannot be read as a table. The message reads `path[:line]: problem`."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        self.path, self.line, self.problem = str(path), line, problem
        super().__init__(f"{path}:{line}: {problem}" if line is not None else f"{path}: {problem}")


def file_format(path: str | Path) -> str | None:
    """The format of a file from its suffix (`FILE_FORMATS`); None for a suffix no reader here reads."""
    return FILE_FORMATS.get(Path(path).suffix.lower())


def table_format(path: str | Path) -> str | None:
    """"jsonl", "tsv" or "csv" from the file's suffix; None for any other suffix."""
    fmt = file_format(path)
    return fmt if fmt in TABLE_KINDS else None


def suffixes(kinds=TABLE_KINDS + COLUMNAR_KINDS) -> list[str]:
    """The suffixes of the given formats, in `FILE_FORMATS` order (for messages and folder listings)."""
    return [s for s, k in FILE_FORMATS.items() if k in kinds]


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line or row number, {column: value}) of a table or columnar file, by its suffix."""
    if file_format(path) in COLUMNAR_KINDS:
        return iter_columnar(path)
    return iter_table(path)


def iter_table(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, {column: value}) for every row of a .jsonl / .tsv / .csv file.

    The caller checks that the file exists (training and evaluation say different things when it does not).
    """
    fmt = table_format(path)
    if fmt is None:
        raise TableError(path, f"unsupported file type {Path(path).suffix.lower()!r}; use one of "
                               f"{', '.join(suffixes(TABLE_KINDS))}")
    try:
        yield from _iter_jsonl(path) if fmt == "jsonl" else _iter_delimited(path, "\t" if fmt == "tsv" else ",")
    except UnicodeDecodeError:
        raise _utf8_error(path) from None


def _utf8_error(path: str | Path) -> TableError:
    """The first undecodable line, by number (the decoder's own offset is into its read buffer, not the file)."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return TableError(path, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                                        "save the file as UTF-8", line_no)
    return TableError(path, "not valid UTF-8")


def _iter_jsonl(path: str | Path):
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TableError(path, f"invalid JSON ({err.msg}, column {err.colno})", line_no) from None
            if not isinstance(row, dict):
                raise TableError(path, f"expected a JSON object, got {type(row).__name__}", line_no)
            yield line_no, row


def _iter_delimited(path: str | Path, delimiter: str):
    """Header + rows; TSV without quoting (literal quotes stay text), CSV with standard quoting."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = _next_row(reader)
        if header is None or not any(h.strip() for h in header):
            raise TableError(path, "is empty (expected a header row)")
        header = [h.strip() for h in header]
        while (fields := _next_row(reader)) is not None:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # a line with no text
            if len(fields) != len(header):
                kind = "tab" if delimiter == "\t" else "comma"
                raise TableError(path, f"expected {len(header)} {kind}-separated fields ({', '.join(header)}), "
                                       f"found {len(fields)}", reader.line_num)
            yield reader.line_num, dict(zip(header, fields))


def iter_columnar(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (row number from 1, {column: value}) for every row of a .parquet or .arrow file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind = file_format(path)
    if kind not in COLUMNAR_KINDS:
        raise TableError(path, f"unsupported file type {Path(path).suffix.lower()!r}; use one of "
                               f"{', '.join(suffixes(COLUMNAR_KINDS))}")
    n = 0
    try:
        if kind == "parquet":
            batches = pq.ParquetFile(str(path)).iter_batches(batch_size=1000)
        else:
            try:
                batches = iter(pa.ipc.open_stream(pa.memory_map(str(path))))
            except pa.ArrowInvalid:  # not a stream: the random-access file format
                reader = pa.ipc.open_file(pa.memory_map(str(path)))
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        for batch in batches:
            batch.validate(full=True)  # offsets and UTF-8, before Python decodes the values
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except (pa.ArrowException, OSError) as err:
        past = f" past row {n}" if n else ""
        raise TableError(path, f"cannot read it as {kind}{past} ({type(err).__name__}: {err})") from None


def _next_row(reader) -> list[str] | None:
    """The reader's next row with the csv field-size limit raised only while it parses that row.

    `csv.field_size_limit` is global to the process; setting it for the duration of one parse and restoring it
    keeps this reader from changing how any other code's csv reading behaves.
    """
    previous = csv.field_size_limit(FIELD_SIZE_LIMIT)
    try:
        return next(reader, None)
    finally:
        csv.field_size_limit(previous)
