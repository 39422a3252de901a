"""Check a test-server submission file before uploading it: every problem found, in one list.

The CIRR and CIRCO servers answer a bad file late (CIRCO by email) or with a terse error, so
`cirbench validate-submission FILE --task T` runs the structural checks the servers document
(benchmarks.md §1.5, §2.4) and, when the dataset is on disk, checks every id against the split. Each
benchmark family owns its checker (`TaskSpec.check_submission`, e.g. `cirbench.tasks.cirr`); this module
only finds it and reads the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from cirbench.core.options import did_you_mean
from cirbench.tasks._server import read_payload
from cirbench.tasks.registry import data_root, list_tasks

__all__ = ["validate_submission"]


def validate_submission(path: str | os.PathLike[str], task_name: str,
                        data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Every problem found in a test-server file for `task_name` (e.g. "cirr", "circo"); [] means OK.

    With a data directory (`data_dir`, else $CIRBENCH_DATA/<task>), ids are also checked against the
    released test split; a data directory that cannot be read is reported as a problem, not skipped.
    """
    checkers = {s.name: s.check_submission for s in list_tasks() if s.check_submission is not None}
    name = task_name.lower()
    if name not in checkers:
        raise ValueError(f"task {task_name!r} has no test-server submission format"
                         f"{did_you_mean(task_name, checkers)}; known: {', '.join(checkers)}")
    data, n_bytes, problems = read_payload(Path(path))
    if problems:
        return problems
    return checkers[name](data, n_bytes, data_root(data_dir, name))
