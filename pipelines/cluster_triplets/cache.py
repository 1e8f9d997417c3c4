"""Judgements on disk: one JSON line per answer, keyed by (judge, prompt, triplet), so no run asks twice.

Lines are appended and flushed as answers arrive, so an interrupted run keeps everything answered before the
interruption. A torn last line (the process killed mid-write) is counted, ignored, and cut off before the next
write; any other unreadable line stops with `file:line`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def judgement_key(judge_name: str, prompt: str, anchor: str, a: str, b: str) -> str:
    """SHA-256 over the judge's name, the full prompt and the triplet's three texts."""
    return hashlib.sha256(json.dumps([judge_name, prompt, anchor, a, b], ensure_ascii=False).encode()).hexdigest()


class JudgementCache:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.replies: dict[str, str] = {}
        self.torn_lines = 0
        if self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").split("\n")
            for n, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    self.replies[record["key"]] = record["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    if n == len(lines):  # no newline after it: the write was cut off
                        self.torn_lines += 1
                        continue
                    raise ValueError(f"{self.path}:{n}: not a judgement record (expected JSON with key, reply)") \
                        from None
        self._file = None

    def __len__(self) -> int:
        return len(self.replies)

    def get(self, key: str) -> str | None:
        return self.replies.get(key)

    def put(self, key: str, reply: str, **info) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
            if self.torn_lines:  # cut the torn line off: it is the bytes after the last newline
                data = self.path.read_bytes()
                self._file.truncate(data.rfind(b"\n") + 1)
                self.torn_lines = 0
        self._file.write(json.dumps({"key": key, "reply": reply, **info}, ensure_ascii=False) + "\n")
        self._file.flush()
        self.replies[key] = reply

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
