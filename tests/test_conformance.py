"""Every registered task, under every one of its protocols, through the plugin authors' conformance kit
(`cirbench.testing.conformance.check_task`) on its fixture: each metric the task advertises (`cirbench
tasks`, its data card) is in its result.json, and nothing else; and the kit catches a task that breaks the
contract.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from cirbench.core.protocol import _SCORERS, Protocol, Scorer, register_scorer
from cirbench.core.types import Item, Query, Task, TaskMetadata
from cirbench.tasks import registry
from cirbench.tasks.registry import TaskSpec, get_task_spec, list_tasks
from cirbench.testing.conformance import ConformanceError, check_task

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
def test_every_registered_task_conforms(task: str, protocol: str, data_dir: Callable[[str], Path]) -> None:
    """The plugin authors' kit over every built-in task: loads, validates, every advertised metric in every
    group of the result.json the eval flow writes (schema-checked), options refused when misspelt, card."""
    (result,) = check_task(task, data_dir(task), protocols=[protocol])
    spec = get_task_spec(task)
    # what `cirbench tasks` and the data card show for the default protocol; a variant may differ
    advertised = list(spec.metrics if protocol == spec.protocols[0] else spec.metrics_for(protocol))
    assert result.protocol["name"] == protocol and list(result.overall) == advertised


# ------------------------------------------------------------------------------------------------------------
# The kit itself: a toy plugin task that conforms, and ways of breaking it that it must catch
# ------------------------------------------------------------------------------------------------------------

TOY = "conformance-toy"


def _toy_task(protocol: Protocol) -> Task:
    corpus = [Item(id=f"c{i}", text=f"doc {i}") for i in range(6)]
    queries = [Query(id=f"q{i}", item=Item(id=f"q{i}", text=f"query {i}"), relevant_ids=(f"c{i}",),
                     category="A" if i % 2 else "B") for i in range(4)]
    meta = TaskMetadata(name=TOY, query_modality="text", corpus_modality="text")
    return Task(meta, "test", queries, corpus, protocol=protocol)


def _register_toy(monkeypatch: pytest.MonkeyPatch, protocol: Protocol, options: dict[str, str] | None = None
                  ) -> TaskSpec:
    def load(data_dir: Path | None, split: str, protocol_name: str, **opts: object) -> Task:
        return _toy_task(protocol)

    spec = TaskSpec(metadata=TaskMetadata(name=TOY, query_modality="text", corpus_modality="text"), load=load,
                    metrics=("R@1", "R@5"), options=options or {})
    monkeypatch.setitem(registry._TASKS, TOY, spec)  # removed again after the test
    return spec


def test_a_conforming_plugin_task_passes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _register_toy(monkeypatch, Protocol(metrics=("R@1", "R@5"), top_k=5))
    (result,) = check_task(TOY, tmp_path)
    assert list(result.overall) == ["R@1", "R@5"] and set(result.scores["category"]) == {"A", "B"}


@pytest.mark.parametrize(("protocol", "options", "message"), [
    (Protocol(metrics=("R@1", "R@5"), main_metric="mAP@10", top_k=5), {}, "main metric 'mAP@10'"),
    (Protocol(metrics=("R@1", "R@5"), top_k=3), {}, "R@5 needs a run of depth 5"),
    (Protocol(metrics=("R@1", "R@5"), top_k=5, breakdowns={"overall": "category"}), {}, "not a breakdown"),
    (Protocol(metrics=("R@1", "R@5"), top_k=5, scorer=Scorer("unregistered", lambda *a, **k: {})), {},
     "which no loaded task registers"),
    (Protocol(metrics=("R@1", "R@5"), top_k=5, breakdowns={"region": "category"}), {"check_images": " "},
     "option 'check_images' has no help text"),
], ids=["main-metric", "depth", "overall-breakdown", "scorer", "option-help"])
def test_the_kit_catches_a_broken_task(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, protocol: Protocol,
                                       options: dict[str, str], message: str) -> None:
    _register_toy(monkeypatch, protocol, options)
    with pytest.raises(ConformanceError, match=message):
        check_task(TOY, tmp_path)


def test_the_kit_catches_a_metric_missing_from_the_result(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    """A task whose scorer never computes one of its advertised metrics is caught in the result it writes."""
    def partial(table: object, protocol: object, metrics: object) -> dict[str, object]:
        import numpy as np

        return {"R@1": np.ones(4)}  # R@5 is advertised but never computed

    scorer = register_scorer("conformance-toy-partial", partial)
    try:
        _register_toy(monkeypatch, Protocol(metrics=("R@1", "R@5"), top_k=5, scorer=scorer))
        with pytest.raises(ConformanceError, match=r"overall scores \['R@1'\] are not the advertised"):
            check_task(TOY, tmp_path)
    finally:
        _SCORERS.pop("conformance-toy-partial", None)


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
