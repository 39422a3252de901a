"""Conformance checks for plugin authors, as scikit-learn's `check_estimator`: does a task keep the contract?

    from cirbench.testing.conformance import check_task
    check_task("my-benchmark", "path/to/a/small/copy/of/its/files")

`check_task` loads the task from a data directory in the benchmark's own format, then checks what every
cirbench surface relies on: the spec names its splits, protocols and metrics consistently; each protocol
validates (its metrics are the ones the spec advertises, its main metric is one of them, K is deep enough,
its scorer is registered, its record is JSON); a misspelt `--task-option` is refused; the real eval flow
(the `random` baseline) writes a result.json that passes the schema and holds every advertised metric in
every group of every breakdown the protocol declares; the data card renders with the metrics. A failure
raises `ConformanceError` naming the task, the protocol and what is wrong. cirbench's own suite runs it
over every registered task (tests/test_conformance.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cirbench.core.metrics import parse_metric
from cirbench.core.options import UnknownOptionError
from cirbench.core.protocol import scorer_from_record
from cirbench.core.result import OVERALL, Result
from cirbench.core.types import Task
from cirbench.tasks.registry import TaskSpec, check_spec, get_task, get_task_spec

__all__ = ["ConformanceError", "check_protocol", "check_task"]

MISSPELT = "no_such_option_for_conformance"


class ConformanceError(AssertionError):
    """A task breaks the contract cirbench's surfaces rely on."""


def _fail(where: str, what: str) -> ConformanceError:
    return ConformanceError(f"{where}: {what}")


def check_protocol(spec: TaskSpec, task: Task, protocol: str) -> None:
    """The loaded protocol agrees with the spec and can be scored and recorded."""
    where = f"task {spec.name!r}, protocol {protocol!r}"
    p = task.protocol
    if p.name != protocol:
        raise _fail(where, f"the loader returned protocol {p.name!r}")
    advertised = spec.metrics_for(protocol)
    if tuple(p.metrics) != advertised:
        raise _fail(where, f"metrics {list(p.metrics)} differ from the advertised {list(advertised)}")
    if p.main_metric not in p.metrics:
        raise _fail(where, f"main metric {p.main_metric!r} is not among its metrics")
    for m in p.metrics:
        k = parse_metric(m).k
        if k is not None and parse_metric(m).kind != "recall_subset" and k > p.top_k:
            raise _fail(where, f"{m} needs a run of depth {k} but top_k is {p.top_k}")
    if OVERALL in p.breakdowns:
        raise _fail(where, f"{OVERALL!r} is the headline, not a breakdown kind")
    record = p.to_dict()
    try:
        json.dumps(record, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise _fail(where, f"the protocol record is not JSON: {e}") from None
    try:
        scorer_from_record(record["scorer"])
    except ValueError as e:
        raise _fail(where, str(e)) from None
    if any(not isinstance(v, str) for v in p.notes.values()):
        raise _fail(where, "notes are documentation: every value must be text")


def _check_options(spec: TaskSpec, data_dir: Path, split: str) -> None:
    where = f"task {spec.name!r}"
    for name, help_text in spec.options.items():
        if not help_text.strip():
            raise _fail(where, f"option {name!r} has no help text")
    try:
        bad: dict[str, Any] = {MISSPELT: "1"}
        get_task(spec.name, split, data_dir=data_dir, **bad)
    except UnknownOptionError as e:
        if MISSPELT not in str(e):
            raise _fail(where, f"the refusal of a misspelt option does not name it: {e}") from None
    else:
        raise _fail(where, f"a misspelt --task-option {MISSPELT}=1 was accepted")


def _check_result(spec: TaskSpec, task: Task, protocol: str, out: Path) -> Result:
    where = f"task {spec.name!r}, protocol {protocol!r}"
    result = Result.read(out)  # schema-checked on reading
    advertised = list(spec.metrics_for(protocol))
    if result.protocol.get("metrics") != advertised:
        raise _fail(where, f"result.json records metrics {result.protocol.get('metrics')}")
    if result.main_metric not in advertised:
        raise _fail(where, f"main metric {result.main_metric!r} is not advertised")
    if not task.has_labels:
        if result.overall:
            raise _fail(where, "an unlabelled split has scores")
        return result
    if list(result.overall) != advertised:
        raise _fail(where, f"overall scores {list(result.overall)} are not the advertised {advertised}")
    declared = set(task.protocol.breakdowns)
    for kind, groups in result.scores.items():
        if kind != OVERALL and kind not in declared:
            raise _fail(where, f"scores for breakdown {kind!r}, which the protocol does not declare")
        for group, scores in groups.items():
            if list(scores) != advertised:
                raise _fail(where, f"{kind} {group!r} has metrics {list(scores)}, not {advertised}")
    result.read_run()  # the run file is the one the result was computed from
    return result


def _check_card(spec: TaskSpec, split: str, task: Task) -> None:
    from cirbench.cards import render_card

    text = render_card(spec.family or spec.name, [(spec, {split: task})])
    if f"`{spec.name}`" not in text or ", ".join(spec.metrics) not in text:
        raise _fail(f"task {spec.name!r}", "its data card does not show its name and metrics")


def check_task(task: str | TaskSpec, data_dir: str | os.PathLike[str], *, split: str | None = None,
               protocols: Sequence[str] | None = None, model: str = "random",
               n_bootstrap: int = 20) -> list[Result]:
    """Check a registered task against the contract on the files in `data_dir`; the results, per protocol.

    `split` defaults to the spec's default split, `protocols` to all of the spec's. Every eval runs in a
    temporary folder with the embedding cache off, so nothing is left behind.
    """
    from cirbench.evaluation import EvalOptions, evaluate

    spec = task if isinstance(task, TaskSpec) else get_task_spec(task)
    try:
        check_spec(spec)
    except ValueError as e:
        raise ConformanceError(str(e)) from None
    root = Path(data_dir)
    split = split or spec.default_split
    chosen = list(protocols or spec.protocols)
    unknown = [p for p in chosen if p not in spec.protocols]
    if unknown:
        raise ValueError(f"task {spec.name!r} has no protocol {unknown[0]!r}; "
                         f"protocols: {list(spec.protocols)}")
    _check_options(spec, root, split)
    results = []
    loaded: Task | None = None
    with tempfile.TemporaryDirectory(prefix="cirbench-conformance-") as tmp:
        for protocol in chosen:
            loaded_p = get_task(spec.name, split, data_dir=root, protocol=protocol)
            check_protocol(spec, loaded_p, protocol)
            out = Path(tmp) / protocol
            evaluate(model, spec.name, split=split, data_dir=root, protocol=protocol, output=out,
                     options=EvalOptions(progress=False, n_bootstrap=n_bootstrap, use_cache=False))
            results.append(_check_result(spec, loaded_p, protocol, out))
            if protocol == spec.protocols[0]:
                loaded = loaded_p
    _check_card(spec, split, loaded if loaded is not None else get_task(spec.name, split, data_dir=root))
    return results
