"""Free space: checked before a save, and a save that fails for lack of it said in those words.

A full disk shows up as OSError(ENOSPC) from Python, as safetensors' "No space left on device (os error 28)", or as
torch.save's `inline_container.cc ... unexpected pos` RuntimeError that never says "disk"; `no_space_message`
recognises all three (and any failure while the disk is nearly full) and names the device, what the save needed
and what is free.
"""
from __future__ import annotations

import errno
import os
import shutil

MARGIN = 1.10  # a save needs its estimate plus this share (file-system overhead, JSON, tokenizer files)
SLACK = 64 * 2**20  # bytes kept free beyond the estimate


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def existing_parent(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def free_bytes(path: str) -> int:
    return shutil.disk_usage(existing_parent(path)).free


def device_of(path: str) -> str:
    """'/dev/vda (mounted at /)' for the file system holding path; the mount point alone when /proc is absent."""
    path = os.path.realpath(existing_parent(path))
    best = ("", "")
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    point = parts[1].replace("\\040", " ")
                    inside = path == point or path.startswith(point.rstrip("/") + "/")
                    if inside and len(point) >= len(best[1]):
                        best = (parts[0], point)
    except OSError:
        pass
    if best[1]:
        return f"{best[0]} (mounted at {best[1]})"
    mount = path
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    return mount


def needed_bytes(estimate: int) -> int:
    return int(estimate * MARGIN) + SLACK


def check_free_space(path: str, estimate: int, what: str) -> str | None:
    """None when the file system holding path has room for a save of about `estimate` bytes, else the message."""
    free, need = free_bytes(path), needed_bytes(estimate)
    if free >= need:
        return None
    return (f"no space left on {device_of(path)} for {what}: needed about {human(need)}, free {human(free)}; "
            "nothing was written")


def is_no_space(error: BaseException) -> bool:
    """An exception raised by a write that ran out of space (see the module docstring for its forms)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    return ("No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text
            or ("inline_container" in text and ("unexpected pos" in text or "write failed" in text)))


def no_space_message(error: BaseException, path: str, estimate: int, what: str) -> str | None:
    """The "no space left" message for an exception a save of `what` raised, or None when it is another failure
    (a write error while less than the estimate is free counts as no space too: torch's message hides errno)."""
    if not (is_no_space(error) or free_bytes(path) < needed_bytes(estimate)):
        return None
    return (f"no space left on {device_of(path)} while writing {what}: needed about {human(needed_bytes(estimate))}, "
            f"free {human(free_bytes(path))}")
