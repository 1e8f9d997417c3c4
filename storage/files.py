"""The folder rule (storage/folders.py) for a tool that writes one file, and where an output may go: checked before
any work starts.

    check_output_file(path, inputs, overwrite=..., flag="--output")
    check_output_place(folder, inputs, flag)        an output folder: not an input nor inside one, parent writable
    with atomic_outputs(paths, overwrite=...) as files: / write_jsonl(path, rows)
                                                    files written beside their targets, renamed in when complete

refuses an output that is a folder, whose parent cannot be created or written, that is or lies inside one of the
tool's inputs (`--input x.jsonl --output x.jsonl` would overwrite what it reads), or that exists while
`overwrite` is False (a file is replaced only when the user asks, and then only once the new one is complete:
the tools write a temporary file beside it and rename it).
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

from storage.disk import existing_parent
from storage.folders import OutputError, check_not_inside, lies_inside


def check_writable_parent(path: str, flag: str) -> None:
    """OutputError unless the folder that will hold `path` exists or can be created, and can be written."""
    parent = os.path.dirname(os.path.abspath(path))
    nearest = existing_parent(parent)
    if not os.path.isdir(nearest):
        raise OutputError(f"{flag} {path}: {nearest} is a file, so the folder {parent} cannot be created")
    if not os.access(nearest, os.W_OK | os.X_OK):
        what = "the folder" if nearest == parent else f"{parent} cannot be created: its parent"
        raise OutputError(f"{flag} {path}: cannot write there ({what} {nearest} is not writable)")


def check_output_place(target: str, inputs: Iterable[tuple[str, str | None]], flag: str) -> None:
    """For an output folder (with check_output_folder): not an input nor inside one (check_not_inside, its message
    led by the flag), and a writable parent to build it in. OutputError otherwise."""
    try:
        check_not_inside(target, [(name, path) for name, path in inputs if path])
    except OutputError as e:
        raise OutputError(f"{flag} {e}") from None
    check_writable_parent(target, flag)


def check_output_file(path: str, inputs: Iterable[tuple[str, str | None]] = (), *, overwrite: bool,
                      flag: str = "--output") -> bool:
    """Before any work: may a tool write the file `path`? inputs = (name, path) pairs of what it reads (files or
    folders; None entries are skipped). -> whether the file exists (and will be replaced). OutputError otherwise."""
    for name, source in inputs:
        if source and os.path.exists(source) and lies_inside(path, source):
            where = "is" if os.path.realpath(path) == os.path.realpath(source) else "lies inside"
            raise OutputError(f"{flag} {path}: {where} the input {name} {source}; writing it would overwrite what "
                              "the tool reads. Choose another output path")
    if os.path.isdir(path):
        raise OutputError(f"{flag} {path}: is a folder, not a file; it is left as it is. Name a file to write")
    check_writable_parent(path, flag)
    if os.path.lexists(path):
        if not overwrite:
            raise OutputError(f"{flag} {path}: exists; pass --overwrite to replace it, or choose another path")
        return True
    return False


@contextmanager
def atomic_outputs(paths: list[str | Path], *, overwrite: bool = False):
    """Yield one open text file per path; all are renamed into place together on success, removed on error.
    An existing path is replaced only with overwrite=True (checked again here: it may have appeared meanwhile)."""
    handles = []
    try:
        for path in paths:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            handles.append((os.fdopen(fd, "w", encoding="utf-8"), tmp, path))
        yield [f for f, _, _ in handles]
        existing = [str(path) for _, _, path in handles if os.path.lexists(path)]
        if existing and not overwrite:
            raise OutputError(f"{', '.join(existing)}: appeared while the tool ran; not replaced (pass --overwrite)")
        for f, tmp, path in handles:
            f.close()
            os.replace(tmp, path)
    finally:
        for f, tmp, _ in handles:
            f.close()
            if os.path.exists(tmp):
                os.unlink(tmp)


def write_jsonl(path: str | Path, rows, *, overwrite: bool = False) -> int:
    """Write dict rows as JSONL atomically; returns the number written. An existing file is replaced only with
    overwrite=True."""
    n = 0
    with atomic_outputs([path], overwrite=overwrite) as (f,):
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
