"""The task registry: benchmark metadata as data, one small loader module per benchmark family.

A loader is `load(data_dir: Path | None, split: str, protocol: str, **options) -> Task`. Each benchmark
module calls `register_task(TaskSpec(...))` at import; `cirbench/tasks/__init__.py` imports them all.
A path to a native dataset directory is also a task name. `get_task` checks the split, the protocol and
the option names against the spec before the loader runs, and the loaded protocol's metrics against the
ones the spec advertises after: the spec is the one statement of a task's metrics (`cirbench tasks`, its
data card, its results).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cirbench.core.metrics import parse_metric
from cirbench.core.options import check_options, did_you_mean
from cirbench.core.types import Task, TaskMetadata

Loader = Callable[..., Task]
SubmissionWriter = Callable[[Task, Any, Path], list[Path]]
"""(task, run, out_dir) -> files written: the file a benchmark's test server accepts."""
SubmissionChecker = Callable[[Any, int, "Path | None"], list[str]]
"""(parsed file, its size in bytes, the data directory or None) -> every problem the server would reject."""


@dataclass(frozen=True)
class TaskSpec:
    metadata: TaskMetadata
    load: Loader
    splits: tuple[str, ...] = ("test",)
    default_split: str = "test"
    protocols: tuple[str, ...] = ("official",)
    """Named protocol variants; the first is the default (the benchmark's official protocol)."""
    layout: str = ""
    """The expected on-disk layout, shown when files are missing."""
    metrics: tuple[str, ...] = ()
    """The default protocol's metrics: each one is in every result (tests/test_conformance.py checks)."""
    protocol_metrics: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Protocols whose metrics differ from `metrics` (e.g. MMLandmarks' paper-code R_s@K)."""
    size: str = ""
    """Human-readable size (queries / gallery per split) for `cirbench tasks`."""
    submission: SubmissionWriter | None = None
    check_submission: SubmissionChecker | None = None
    """Checks a test-server file before upload (`cirbench validate-submission`)."""
    options: dict[str, str] = field(default_factory=dict)
    """Task-specific options (name -> help) accepted as `--task-option name=value`."""
    family: str | None = None
    """Benchmark family that shares one data card (e.g. "mmlandmarks" for its seven tasks)."""

    @property
    def name(self) -> str:
        return self.metadata.name

    def metrics_for(self, protocol: str | None = None) -> tuple[str, ...]:
        """The metrics a result under `protocol` (default: the official one) reports."""
        return tuple(self.protocol_metrics.get(protocol or self.protocols[0], self.metrics))


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add `spec` to the registry, refusing one that contradicts itself (checked once, at import)."""
    if spec.name in _TASKS and _TASKS[spec.name] is not spec:
        raise ValueError(f"task {spec.name!r} is already registered")
    check_spec(spec)
    _TASKS[spec.name] = spec
    return spec


def check_spec(spec: TaskSpec) -> None:
    """A spec's splits, protocols and metrics must name each other consistently (ValueError otherwise)."""
    where = f"task {spec.name!r}"
    if not spec.splits or spec.default_split not in spec.splits:
        raise ValueError(f"{where}: default split {spec.default_split!r} is not among {list(spec.splits)}")
    if not spec.protocols or len(set(spec.protocols)) != len(spec.protocols):
        raise ValueError(f"{where}: protocols must be a non-empty list of distinct names")
    unknown = sorted(set(spec.protocol_metrics) - set(spec.protocols))
    if unknown:
        raise ValueError(f"{where}: protocol_metrics names unknown protocols {unknown}")
    for protocol in spec.protocols:
        metrics = spec.metrics_for(protocol)
        if not metrics:
            raise ValueError(f"{where}: protocol {protocol!r} advertises no metrics")
        for m in metrics:
            parse_metric(m)  # an unknown metric name fails here, naming the valid forms


def list_tasks() -> list[TaskSpec]:
    _import_builtin()
    return [_TASKS[k] for k in sorted(_TASKS)]


def get_task_spec(name: str) -> TaskSpec:
    """The registered task `name` (case-insensitive); KeyError with a suggestion otherwise."""
    _import_builtin()
    if name in _TASKS:
        return _TASKS[name]
    lowered = {k.lower(): k for k in _TASKS}
    if name.lower() in lowered:
        return _TASKS[lowered[name.lower()]]
    raise KeyError(f"unknown task {name!r}{did_you_mean(name, _TASKS)}; `cirbench tasks` lists the "
                   "registered tasks (or pass the path of a native dataset directory)")


def data_root(data_dir: str | os.PathLike[str] | None, task_name: str) -> Path | None:
    """--data-dir wins; else $CIRBENCH_DATA/<task family>, when set."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("CIRBENCH_DATA")
    return Path(env) / task_name if env else None


def get_task(
    name: str,
    split: str | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    protocol: str | None = None,
    limit: int | None = None,
    **options: Any,
) -> Task:
    """Load a registered task (or a native dataset directory) with its protocol, ready to evaluate."""
    from cirbench.core.dataset import MANIFEST, load_native

    path = Path(name)
    if (path / MANIFEST).is_file() or (not _is_registered(name) and _looks_like_path(name)):
        check_options(f"native dataset {name!r}", options, (), flag="--task-option")
        task = load_native(path, split or "test")  # a missing cirbench.json is named there
        if protocol is not None and protocol != task.protocol.name:
            raise ValueError(f"--protocol {protocol!r}: a native dataset has the one protocol its {MANIFEST} "
                             f"defines ({task.protocol.name!r})")
    else:
        spec = get_task_spec(name)
        name = spec.name
        split = split or spec.default_split
        if split not in spec.splits:
            raise ValueError(f"task {name!r} has no split {split!r}{did_you_mean(split, spec.splits)}; "
                             f"splits: {', '.join(spec.splits)}")
        protocol = protocol or spec.protocols[0]
        if protocol not in spec.protocols:
            hint = did_you_mean(protocol, spec.protocols)
            raise ValueError(f"task {name!r} has no protocol {protocol!r}{hint}; protocols: "
                             f"{', '.join(spec.protocols)}")
        check_options(f"task {name!r}", options, spec.options, flag="--task-option")
        task = spec.load(data_root(data_dir, name), split, protocol, **options)
        if tuple(task.protocol.metrics) != spec.metrics_for(protocol):
            raise ValueError(
                f"task {name!r} advertises metrics {list(spec.metrics_for(protocol))} for protocol "
                f"{protocol!r}, but its loader set {list(task.protocol.metrics)}: a bug in the task module"
            )
    task.validate()
    return task.limit(limit)


def _is_registered(name: str) -> bool:
    _import_builtin()
    return name.lower() in {k.lower() for k in _TASKS}


def _looks_like_path(name: str) -> bool:
    """A task name is a path when it names a directory or has a separator (no registered name does)."""
    return os.sep in name or "/" in name or name.startswith(".") or Path(name).is_dir()


def _import_builtin() -> None:
    import cirbench.tasks  # noqa: F401  (registers the built-in tasks)
