"""Turn command-line task requests into mteb tasks: hub tasks by name, local tasks from `KIND=PATH[@SPLIT]`.

Everything is resolved and validated here, before the model is loaded: unknown task names, unknown kinds, missing
or malformed files and duplicate task names each raise one clear error; `preload_hub_data` then fetches the hub
tasks' data, so being offline also fails before any model loading or encoding.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import mteb

from evaluation.local_tasks import LOCAL_TASK_KINDS, build_local_task, is_local_task


class UnknownTaskError(ValueError):
    """A requested mteb task name does not exist (the message suggests the closest names)."""


class HubDataError(RuntimeError):
    """The data of an mteb hub task could not be loaded (offline, gated, renamed dataset, ...)."""


class TaskSpecError(ValueError):
    """A `--local-task` value is not `KIND=PATH[@SPLIT]` with a known KIND, or two tasks share a name."""


@dataclass
class LocalTaskSpec:
    kind: str
    path: str
    split: str | None = None


def parse_local_spec(spec: str) -> LocalTaskSpec:
    """`sts=data/stsb.tsv`, `retrieval=data/scifact@dev` -> LocalTaskSpec (the @SPLIT only for retrieval)."""
    kind, sep, path = spec.partition("=")
    if not sep or not kind or not path:
        raise TaskSpecError(f"--local-task {spec!r}: expected KIND=PATH with KIND one of {', '.join(LOCAL_TASK_KINDS)}")
    if kind not in LOCAL_TASK_KINDS:
        raise TaskSpecError(f"--local-task {spec!r}: unknown kind {kind!r}; "
                            f"choose one of {', '.join(LOCAL_TASK_KINDS)}")
    split = None
    if kind == "retrieval" and "@" in path:
        path, split = path.rsplit("@", 1)
    return LocalTaskSpec(kind, path, split)


def hub_task(name: str):
    """The mteb task called `name` (its data is downloaded from the Hugging Face Hub when evaluated)."""
    try:
        return mteb.get_task(name)
    except KeyError:
        close = difflib.get_close_matches(name, [t.metadata.name for t in mteb.get_tasks(exclude_superseded=False)])
        hint = f"; did you mean {', '.join(close)}?" if close else " (see `mteb.get_tasks()` for the list)"
        raise UnknownTaskError(f"unknown mteb task {name!r}{hint}") from None


def build_tasks(hub_names: list[str], local_specs: list[str]) -> list:
    """All requested tasks, hub ones first; raises before any encoding if one of them cannot be built."""
    tasks = [hub_task(name) for name in hub_names]
    for spec in local_specs:
        parsed = parse_local_spec(spec)
        tasks.append(build_local_task(parsed.kind, parsed.path, parsed.split))
    seen: dict[str, str] = {}
    for task in tasks:
        name = task.metadata.name
        source = task.metadata.dataset["path"]
        if name in seen:
            raise TaskSpecError(f"two tasks are named {name!r} ({seen[name]} and {source}); "
                                "rename a file or folder so each task name is unique")
        seen[name] = source
    if not tasks:
        raise TaskSpecError("no tasks given: use --tasks NAME ... and/or --local-task KIND=PATH ...")
    return tasks


def preload_hub_data(tasks) -> None:
    """Load (download) the data of the hub tasks now, so a network problem stops the run before the model loads."""
    for task in tasks:
        if is_local_task(task):
            continue  # already parsed and validated when built
        try:
            task.load_data()
        except Exception as err:  # datasets raises ConnectionError, FileNotFoundError, HfHubHTTPError, ...
            raise HubDataError(f"could not load the data of mteb task {task.metadata.name!r} "
                               f"({task.metadata.dataset['path']}): {type(err).__name__}: {err}") from err
