"""A small on-disk fixture for every registered task, in that benchmark's own released format.

The writers live beside each task's tests (tests/test_tasks_*.py, tests/test_synthetic.py); this module
only maps a task name to the writer of its data directory, so that tests over *every* registered task
(tests/test_conformance.py) run the real loaders on real files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

Writer = Callable[[Path], Path]
"""root -> the data directory to pass as --data-dir."""


def _cirr(root: Path) -> Path:
    from tests.test_tasks_cirr import write_cirr

    return write_cirr(root, "readme")


def _circo(root: Path) -> Path:
    from tests.test_tasks_circo import write_circo

    return write_circo(root)


def _edir(root: Path) -> Path:
    from tests.test_tasks_edir import write_edir

    return write_edir(root)


def _fashioniq(root: Path) -> Path:
    from tests.test_tasks_fashioniq import write_fiq

    return write_fiq(root)


def _mmlandmarks(root: Path) -> Path:
    from tests.test_tasks_mmlandmarks import write_release

    return write_release(root)


def _soft(root: Path) -> Path:
    from tests.test_tasks_soft import write_soft

    return write_soft(root)


def _webvid(root: Path) -> Path:
    from tests.test_tasks_covr import write_dataset

    root.mkdir(parents=True, exist_ok=True)
    return write_dataset(root)


def _synthetic(preset: str) -> Writer:
    def write(root: Path) -> Path:
        from cirbench.builders.synthetic import build_synthetic
        from tests.test_synthetic import _config

        return build_synthetic(_config(), root, preset=preset, seed=0, limit=12, progress=False)

    return write


WRITERS: dict[str, Writer] = {
    "cirr": _cirr,
    "circo": _circo,
    "edir": _edir,
    "fashioniq": _fashioniq,
    "mmlandmarks": _mmlandmarks,
    "soft": _soft,
    "webvid-covr": _webvid,
    "synthetic-mini": _synthetic("mini"),
    "synthetic-full": _synthetic("full"),
}


def fixture_name(task: str) -> str:
    """The writer of a task: tasks of one benchmark family share one data directory."""
    for name in WRITERS:
        if task == name or task.startswith(f"{name}-"):
            return name
    raise KeyError(f"no fixture writer for task {task!r}: add one to tests/task_fixtures.py")
