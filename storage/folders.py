"""The one rule every tool that writes a folder follows: nothing it did not write is ever deleted or overwritten.

    check_output_folder(target, tool, overwrite=...)   before any work: refuse a target that is a file, holds
                                                        what another tool or the user put there, or is this tool's
                                                        output and --overwrite was not given
    check_not_inside(target, inputs)                    the output may not be, or lie inside, an input
    with staged_folder(target, tool, ...) as tmp:       write into a fresh temporary folder beside the target;
        ...                                             on success it is renamed into place (an earlier output of
                                                        the same tool is moved aside first and deleted only after
                                                        the rename); on error it is removed, the target untouched

A folder is "this tool's output" when its `.written_by.json` names the tool and lists every entry the folder
holds; an entry not in that list (a file the user added) makes the folder someone else's, so replacing it is
refused with the path and what is in it. A `recognise` callback lets a tool also claim folders it wrote before
the marker existed (e.g. a prepared corpus by its manifest), still only when the folder holds just `own_entries`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Callable, Iterable

MARKER = ".written_by.json"
STAGING_SUFFIX = ".partial"


class OutputError(ValueError):
    """An output path that would delete or overwrite what the tool did not write (the message says which)."""


def listing(path: str, limit: int = 6) -> str:
    """'3 entries: a.txt, sub/, x.json' (folders with a slash), for messages."""
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        return f"unreadable ({e.strerror})"
    shown = [n + ("/" if os.path.isdir(os.path.join(path, n)) else "") for n in names[:limit]]
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'}: {', '.join(shown)}{more}"


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def lies_inside(path: str, folder: str) -> bool:
    """path is folder or lies inside it (symlinks resolved)."""
    path, folder = _real(path), _real(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_not_inside(target: str, inputs: Iterable[tuple[str, str]]) -> None:
    """OutputError when target is, or lies inside, one of inputs = (name, path) pairs (e.g. the base model)."""
    for name, path in inputs:
        if path and os.path.exists(path) and lies_inside(target, path):
            where = "is" if _real(target) == _real(path) else "lies inside"
            raise OutputError(f"{target}: {where} {name} {path}; writing there would overwrite what the tool reads. "
                              "Choose another output folder")


def read_marker(path: str) -> dict | None:
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def written_by(path: str, tool: str, recognise: Callable[[str], bool] | None = None,
               own_entries: Iterable[str] = ()) -> bool:
    """path is an earlier output of `tool` and holds nothing else: its marker names the tool and lists every entry,
    or `recognise(path)` says it is one and every entry is among own_entries."""
    entries = set(os.listdir(path)) - {MARKER}
    marker = read_marker(path)
    if marker is not None and marker.get("tool") == tool:
        return entries <= set(marker.get("entries", []))
    return recognise is not None and recognise(path) and entries <= set(own_entries)


def check_output_folder(target: str, tool: str, *, overwrite: bool, flag: str = "--output",
                        recognise: Callable[[str], bool] | None = None, own_entries: Iterable[str] = ()) -> bool:
    """Before any work: may `tool` write the folder `target`? -> whether it exists (and will be replaced).
    OutputError naming the path and its contents unless it is absent, an empty folder, or this tool's own output
    with overwrite=True."""
    if not os.path.lexists(target):
        return False
    if not os.path.isdir(target) or os.path.islink(target):
        raise OutputError(f"{flag} {target}: exists and is {'a link' if os.path.islink(target) else 'a file'}, not "
                          "a folder; it is left as it is. Choose another path")
    if not os.listdir(target):
        return True
    if written_by(target, tool, recognise, own_entries):
        if overwrite:
            return True
        raise OutputError(f"{flag} {target}: holds an earlier output of {tool} ({listing(target)}); pass "
                          "--overwrite to replace it, or choose another path")
    raise OutputError(f"{flag} {target}: is a folder that {tool} did not write ({listing(target)}); nothing in it "
                      "is deleted or overwritten. Choose a new or empty folder")


def _remove_stale_staging(target: str, tool: str, log=None) -> None:
    """Delete staging folders of `tool` for this target left by a killed run (only ours: their marker says so)."""
    parent, name = os.path.split(os.path.abspath(target))
    prefix = f".{name}."
    for entry in os.listdir(parent):
        path = os.path.join(parent, entry)
        if entry.startswith(prefix) and entry.endswith(STAGING_SUFFIX) and os.path.isdir(path):
            marker = read_marker(path)
            if marker is not None and marker.get("tool") == tool and marker.get("staging_for") == name:
                if log is not None:
                    log(f"{path}: left by an interrupted run of {tool}; removed, starting over")
                shutil.rmtree(path, ignore_errors=True)


@contextmanager
def staged_folder(target: str, tool: str, *, overwrite: bool, flag: str = "--output",
                  recognise: Callable[[str], bool] | None = None, own_entries: Iterable[str] = (), log=None):
    """Yield a fresh temporary folder beside target; when the block ends normally it becomes target (checked again
    with check_output_folder, since the target may have changed meanwhile); on an exception it is removed. Staging
    folders of this tool for this target left by a killed run are removed first (named to `log`)."""
    target = os.path.normpath(target)
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    _remove_stale_staging(target, tool, log)
    name = os.path.basename(target)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=STAGING_SUFFIX)
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it 0700; the published folder gets the usual mode
    _write_marker(staging, tool, staging_for=name)
    try:
        yield staging
        publish(staging, target, tool, overwrite=overwrite, flag=flag, recognise=recognise, own_entries=own_entries)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish(staging: str, target: str, tool: str, *, overwrite: bool, flag: str = "--output",
            recognise: Callable[[str], bool] | None = None, own_entries: Iterable[str] = ()) -> None:
    """Rename the finished staging folder to target. An existing target (this tool's own output, overwrite asked
    for) is first renamed aside under a unique name and deleted only once the new folder is in place."""
    exists = check_output_folder(target, tool, overwrite=overwrite, flag=flag, recognise=recognise,
                                 own_entries=own_entries)
    _write_marker(staging, tool)
    aside = None
    if exists:
        aside = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(target)),
                                 prefix=f".{os.path.basename(target)}.", suffix=".replaced")
        os.replace(target, os.path.join(aside, "old"))
    os.replace(staging, target)
    if aside is not None:
        shutil.rmtree(aside)


def _write_marker(folder: str, tool: str, staging_for: str | None = None) -> None:
    entries = sorted(set(os.listdir(folder)) - {MARKER})
    marker = {"tool": tool, "entries": entries, **({"staging_for": staging_for} if staging_for else {})}
    with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as f:
        json.dump(marker, f, indent=1)


def apply_umask(folder: str, others_writing: bool = False) -> None:
    """Give the files under folder the mode the umask allows (0644 under umask 022): some writers (safetensors)
    create theirs 0600 whatever the umask, so another user of a shared model folder could not read them.
    others_writing: other processes may still be saving into folder, so a file listed a moment ago (their temporary
    file, renamed since) can be gone; it is skipped (each process calls this after its own writes, so every file is
    seen by its writer)."""
    mask = _umask()
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            try:
                if not os.path.islink(path):
                    os.chmod(path, 0o666 & ~mask)
            except FileNotFoundError:
                if not others_writing:
                    raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
