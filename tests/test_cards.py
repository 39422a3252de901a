"""Data cards from the task itself: hub-readable header, counts, protocol, and kept hand-written notes."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from cirbench.cards import NOTES_END, NOTES_START, write_card
from cirbench.cli import app
from cirbench.core.dataset import load_native
from cirbench.core.types import TaskMetadata
from cirbench.tasks.registry import TaskSpec, register_task


def test_card_from_task_keeps_notes(tiny_dataset: Path, tmp_path: Path) -> None:
    register_task(
        TaskSpec(
            metadata=TaskMetadata(
                name="tiny-card",
                description="A <tiny> benchmark.",
                license="MIT (annotations)",
                citation="@misc{tiny, title={Tiny}}",
                pitfalls=("Reference excluded.",),
            ),
            load=lambda data_dir, split, protocol, **o: load_native(tiny_dataset, split),
            metrics=("R@1", "R@2", "R_s@1", "mAP@2", "MRR"),  # what the dataset's protocol says
            size="3 queries",
        )
    )
    out = tmp_path / "cards"
    out.mkdir()
    (out / "tiny-card.md").write_text("---\nlicense: mit\n---\n# Old card\n\nHand-written detail.\n")
    path = write_card("tiny-card", out)
    text = path.read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["license"] == "mit" and header["size_categories"] == ["n<1K"]
    assert "| tiny-card | test | 3 | 5 | yes |" in text
    assert "| Attribute | Color | 2 |" in text and "| Object | Count | 1 |" in text
    assert "Reference excluded." in text and "@misc{tiny" in text
    assert NOTES_START in text and "Hand-written detail." in text.split(NOTES_START)[1].split(NOTES_END)[0]
    # regenerating keeps the notes exactly once
    again = write_card("tiny-card", out).read_text()
    assert again == text


def test_card_command(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["card", "cirr", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "cirr.md").read_text()
    assert "`cirr`" in text and "Recall_subset" in text and "data is not on the machine" in text
