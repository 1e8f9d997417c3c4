"""One line per task: `summary.json`, the printed table, and deltas against a reference score file.

Reference files look like `/work/shared/data/reference/all-MiniLM-L6-v2.json`:
`{"tasks": {name: {"file": relative path, "split": ..., "metric": ..., "score": ...}}}`. A task matches a
reference entry by name, or — for local tasks — when its file/folder path ends with the entry's `file`.
An earlier run's own `summary.json` (`{name: {"metric", "split", "main_score"}}`) works as a reference too, which
is how before/after tables are made.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from evaluation.local_tasks import is_local_task
from evaluation.task_files import TaskDataError, TaskFileNotFoundError

EXTRA_SCORES = ("cluster_accuracy", "nmi")  # added by our local clustering task next to mteb's V-measure
PREFERRED_SPLIT = "test"


def summarize(tasks, task_results) -> dict[str, dict]:
    """{task name: {"metric", "split", "main_score"[, "file", "extra"]}} from mteb's TaskResults.

    The split is "test" when evaluated, else the first one; tasks with several subsets (languages) report the
    mean over subsets, as mteb's `TaskResult.get_score` does.
    """
    by_name = {task.metadata.name: task for task in tasks}
    summary = {}
    for result in task_results:
        task = by_name[result.task_name]
        split = PREFERRED_SPLIT if PREFERRED_SPLIT in result.scores else next(iter(result.scores))
        entry = {"metric": task.metadata.main_score, "split": split,
                 "main_score": float(result.get_score(splits=[split]))}
        if is_local_task(task):  # its file lets --compare match it to a reference entry
            entry["file"] = str(task.path)
        extra = {key: _mean_over_subsets(result, split, key) for key in EXTRA_SCORES
                 if all(key in subset for subset in result.scores[split])}
        if extra:
            entry["extra"] = extra
        summary[result.task_name] = entry
    return summary


def _mean_over_subsets(result, split: str, key: str) -> float:
    return float(np.mean([subset[key] for subset in result.scores[split]]))


def load_reference(path: str | Path) -> dict[str, dict]:
    """The `tasks` mapping of a reference score file, or an earlier summary.json read as one (validated: each
    entry needs metric, split, score)."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileNotFoundError(path, "a reference score file ({\"tasks\": {name: {metric, split, score}}})")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        tasks = content.get("tasks")
    except (json.JSONDecodeError, AttributeError) as err:
        raise TaskDataError(path, f"not a JSON object with a 'tasks' mapping ({err})") from None
    if tasks is None and content and all(isinstance(e, dict) and "main_score" in e for e in content.values()):
        tasks = {name: {**entry, "score": entry["main_score"]} for name, entry in content.items()}  # a summary.json
    if not isinstance(tasks, dict) or not tasks:
        raise TaskDataError(path, "expected a non-empty 'tasks' mapping")
    for name, entry in tasks.items():
        missing = [k for k in ("metric", "split", "score") if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise TaskDataError(path, f"reference task {name!r} lacks {', '.join(missing)}")
    return tasks


def match_reference(task_name: str, file: str | None, reference: dict[str, dict]) -> tuple[str, dict] | None:
    """(reference name, entry) for a task: same name first, else a reference `file` that ends our path."""
    if task_name in reference:
        return task_name, reference[task_name]
    if file:
        ours = Path(file).resolve().parts
        for name, entry in reference.items():
            theirs = Path(entry["file"]).parts if entry.get("file") else ()
            if theirs and ours[-len(theirs):] == theirs:
                return name, entry
    return None


def add_reference(summary: dict[str, dict], task_results, reference: dict[str, dict]) -> None:
    """Add {"reference": {"task", "metric", "score", "delta"}} to each summary entry that has a reference.

    The delta compares the reference's metric on the same split; when that is not our main metric it is looked up
    among all scores mteb reported (e.g. a reference on map_at_10 for a retrieval task).
    """
    results = {r.task_name: r for r in task_results}
    for task_name, entry in summary.items():
        match = match_reference(task_name, entry.get("file"), reference)
        if match is None:
            continue
        ref_name, ref = match
        ours = None
        if ref["split"] == entry["split"]:
            ours = entry["main_score"] if ref["metric"] == entry["metric"] else _score_of(
                results[task_name], entry["split"], ref["metric"])
        entry["reference"] = {"task": ref_name, "metric": ref["metric"], "split": ref["split"],
                              "score": float(ref["score"]),
                              "delta": None if ours is None else float(ours) - float(ref["score"])}


def _score_of(result, split: str, metric: str) -> float | None:
    subsets = result.scores.get(split, [])
    if subsets and all(metric in s for s in subsets):
        return _mean_over_subsets(result, split, metric)
    return None


def add_variants(summary: dict[str, dict], variants: list[tuple[dict, list]]) -> None:
    """Add "variants": [{variant fields..., "main_score", "retention"}] to each task's entry, from (fields naming the
    variant, its mteb TaskResults) pairs (evaluation/variants.py); retention = score / the entry's main_score, the
    full-width float32 score (None when that is 0). Scored on the entry's split, the mean over subsets as there."""
    for fields, task_results in variants:
        for result in task_results:
            entry = summary[result.task_name]
            score = float(result.get_score(splits=[entry["split"]]))
            retention = score / entry["main_score"] if entry["main_score"] else None
            entry.setdefault("variants", []).append({**fields, "main_score": score, "retention": retention})


def variant_label(fields: dict) -> str:
    """`256d int8`, `384d binary rescored ×4`."""
    label = f"{fields['dim']}d {fields['precision']}"
    return label + (f" rescored ×{fields['rescore_multiplier']}" if fields.get("rescore_multiplier") else "")


def format_table(summary: dict[str, dict]) -> str:
    """A fixed-width table: task, split, metric, score, reference/delta columns when any task has one, and a
    retention row per variant (evaluation/variants.py) when any task has them."""
    with_reference = any("reference" in entry for entry in summary.values())
    with_variants = any("variants" in entry for entry in summary.values())
    header = (["task", "split", "metric", "score"] + (["reference", "delta"] if with_reference else [])
              + (["retention"] if with_variants else []))
    blank = [""] * (len(header) - 4)
    rows = []
    for name, entry in summary.items():
        row = [name, entry["split"], entry["metric"], f"{entry['main_score']:.5f}"]
        if with_reference:
            ref = entry.get("reference")
            row += ["-", "-"] if ref is None else [
                f"{ref['score']:.5f}" + ("" if ref["metric"] == entry["metric"] else f" ({ref['metric']})"),
                "n/a" if ref["delta"] is None else f"{ref['delta']:+.5f}"]
        rows.append(row + ([""] if with_variants else []))
        for key, value in entry.get("extra", {}).items():
            rows.append([f"  {name}", entry["split"], key, f"{value:.5f}"] + blank)
        for variant in entry.get("variants", []):
            retention = "n/a" if variant["retention"] is None else f"{100 * variant['retention']:.2f}%"
            rows.append([f"  {name} {variant_label(variant)}", entry["split"], entry["metric"],
                         f"{variant['main_score']:.5f}"] + blank[:-1] + [retention])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
