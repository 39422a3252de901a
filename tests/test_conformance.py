"""Every registered task, under every one of its protocols, through the real eval flow on its fixture:
each metric the task advertises (`cirbench tasks`, its data card) is in its result.json, and nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import cirbench
from cirbench.evaluation import EvalOptions
from cirbench.tasks.registry import TaskSpec, get_task_spec, list_tasks

from .task_fixtures import WRITERS, fixture_name

ROOT = Path(__file__).resolve().parents[1]
CASES = [(spec.name, p) for spec in list_tasks() for p in spec.protocols]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    made: dict[str, Path] = {}

    def get(task: str) -> Path:
        key = fixture_name(task)
        if key not in made:
            made[key] = WRITERS[key](tmp_path_factory.mktemp(key) / "data")
        return made[key]

    return get


@pytest.mark.parametrize(("task", "protocol"), CASES, ids=[f"{t}:{p}" for t, p in CASES])
def test_every_advertised_metric_is_in_the_result(task: str, protocol: str, data_dir: Callable[[str], Path],
                                                 tmp_path: Path) -> None:
    spec = get_task_spec(task)
    out = tmp_path / "out"
    cirbench.evaluate("random", task, data_dir=data_dir(task), protocol=protocol, output=out,
                      options=EvalOptions(progress=False, n_bootstrap=20))
    result = json.loads((out / "result.json").read_text())
    # what `cirbench tasks` and the data card show for the default protocol; a variant may differ
    advertised = list(spec.metrics if protocol == spec.protocols[0] else spec.metrics_for(protocol))
    assert result["protocol"]["name"] == protocol
    assert result["protocol"]["metrics"] == advertised
    assert list(result["scores"]["overall"]) == advertised
    for kind, groups in result["scores"].items():
        if kind != "overall":
            for group, scores in groups.items():
                assert list(scores) == advertised, (kind, group)
    assert result["main_metric"] in advertised


@pytest.mark.parametrize("spec", list_tasks(), ids=lambda s: s.name)
def test_the_data_card_lists_the_advertised_metrics(spec: TaskSpec) -> None:
    card = (ROOT / "data_cards" / f"{spec.family or spec.name}.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith(f"| `{spec.name}` |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4].split("; ")[0] == ", ".join(spec.metrics)
    for p in spec.protocols[1:]:
        if spec.metrics_for(p) != tuple(spec.metrics):
            assert f"`{p}`: {', '.join(spec.metrics_for(p))}" in cells[4]


def test_edir_names_its_map_the_same_in_readme_card_and_result() -> None:
    """The EDIR evaluator that can be read (mteb's EDIRIT2IRetrieval) reports map_at_10: cirbench's mAP@10."""
    spec = get_task_spec("edir")
    assert "mAP@10" in spec.metrics and not any(m.lower() in ("map", "mrr") for m in spec.metrics)
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `edir` |"))
    assert "mAP@10" in row and not re.search(r"\bmAP\b(?!@)", row), row
    card = (ROOT / "data_cards" / "edir.md").read_text()
    assert not re.search(r"\bmAP\b(?!@)", card.split("<!-- cirbench:notes:start")[0])
