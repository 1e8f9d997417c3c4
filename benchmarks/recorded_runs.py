"""What the multi-run experiments (matryoshka_curve.py, retromae_experiment.py) share: the output folder claimed
before anything is written (storage/folders.py's rule), a step run once and recorded (its exact command, wall time and
load average, so a rerun continues where a stopped one ended), a fixed SciFact corpus subset, and the mean ± std over
seeds."""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from storage.folders import MARKER, listing, read_marker

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SCIFACT = SHARED / "retrieval" / "scifact"


def claim_output_dir(out: Path, tool: str, own: Callable[[str], bool]) -> None:
    """Before anything is written: SystemExit unless OUT is absent, empty, or this runner's own folder — its
    .written_by.json names TOOL and every entry is one this runner writes (`own(name)`), so a rerun continues there.
    A folder of anything else (a user's files, another tool's output) is refused, nothing in it touched; a claimed
    folder gets the marker. (The runner adds entries run by run, so the marker names the tool, not a list.)"""
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise SystemExit(f"--output-dir {out}: exists and is not a folder; it is left as it is. Choose another "
                             "path")
        entries = set(os.listdir(out)) - {MARKER}
        strangers = sorted(n for n in entries if not own(n))
        if entries and ((read_marker(str(out)) or {}).get("tool") != tool or strangers):
            raise SystemExit(f"--output-dir {out}: is a folder that {tool} did not write ({listing(str(out))}"
                             + (f"; not its own: {', '.join(strangers[:3])}" if strangers else "")
                             + "); nothing in it is deleted or overwritten. Choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"tool": tool}) + "\n", encoding="utf-8")


def run_once(command: list[str], out: Path, name: str) -> dict:
    """Run `command` (output in OUT/NAME.log) unless OUT/NAME.done.json records this exact command as finished
    -> that record: {command, seconds, load average at start and end, finished (UTC)}."""
    done, log = out / f"{name}.done.json", out / f"{name}.log"
    if done.is_file() and json.loads(done.read_text())["command"] == command:
        return json.loads(done.read_text())
    done.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    load_start, start = os.getloadavg(), time.time()
    print(f"{out.name}/{name}: running ({' '.join(command[1:4])[:100]} ...), log {log}", flush=True)
    with log.open("w", encoding="utf-8") as f:
        code = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
    if code:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise SystemExit(f"{name} failed (exit {code}); log {log}:\n{tail}")
    record = {"command": command, "seconds": round(time.time() - start, 1), "load_start": load_start[0],
              "load_end": os.getloadavg()[0],
              "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    done.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{out.name}/{name}: {record['seconds']:.0f} s, load {load_start[0]:.1f} → {record['load_end']:.1f}",
          flush=True)
    return record


def scifact_subset(out: Path, docs: int) -> Path:
    """A SciFact folder whose corpus is every document judged in the test qrels plus unjudged ones drawn with seed 0,
    `docs` in all, in the corpus's order (queries and qrels as they are); written once, reused by every model."""
    folder = out / f"scifact-{docs}docs"
    if (folder / "corpus.jsonl").is_file():
        return folder
    rows = (SCIFACT / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    ids = [json.loads(r)["_id"] for r in rows]
    qrels = (SCIFACT / "qrels" / "test.tsv").read_text(encoding="utf-8")
    judged = {line.split("\t")[1] for line in qrels.splitlines()[1:] if line.strip()}
    others = [i for i in ids if i not in judged]
    if not len(judged) <= docs <= len(ids):
        raise SystemExit(f"--scifact-docs {docs}: must lie between the {len(judged)} judged documents and {len(ids)}")
    keep = judged | set(np.random.default_rng(0).choice(others, docs - len(judged), replace=False).tolist())
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    (folder / "queries.jsonl").write_bytes((SCIFACT / "queries.jsonl").read_bytes())
    partial = folder / "corpus.jsonl.partial"
    partial.write_text("".join(r + "\n" for r, i in zip(rows, ids) if i in keep), encoding="utf-8")
    partial.rename(folder / "corpus.jsonl")
    return folder


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
