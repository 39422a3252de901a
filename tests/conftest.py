"""Test setup: no hub access (fail fast instead of retrying), a private cache, small shared fixtures."""

from __future__ import annotations

import io
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["CIRBENCH_CACHE"] = str(tmp_path_factory.mktemp("cirbench-cache"))


def png(color: tuple[int, int, int], size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A 5-image, 3-query native dataset with categories, a multi-target query and a candidate subset."""
    from cirbench.core.dataset import ImageRecord, QueryRecord, SplitData, write_dataset
    from cirbench.core.types import Protocol

    colors = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255), "d": (255, 255, 0), "e": (0, 255, 255)}
    corpus = [ImageRecord(id=k, image=png(v), caption=f"a {k} square") for k, v in colors.items()]
    queries = [
        QueryRecord(
            id="q1",
            reference_id="a",
            text="make it green",
            relevant_ids=["b"],
            category="Attribute",
            subcategory="Color",
            candidate_ids=["a", "b", "c"],
        ),
        QueryRecord(
            id="q2",
            reference_id="b",
            text="make it blue or yellow",
            relevant_ids=["c", "d"],
            category="Attribute",
            subcategory="Color",
            candidate_ids=["b", "c", "d"],
        ),
        QueryRecord(
            id="q3",
            reference_id="c",
            text="make it cyan",
            relevant_ids=["e"],
            category="Object",
            subcategory="Count",
            candidate_ids=["c", "d", "e"],
        ),
    ]
    protocol = Protocol(
        metrics=("R@1", "R@2", "R_s@1", "mAP@2", "MRR"), main_metric="R@1", top_k=4, exclude_reference=True
    )
    return write_dataset(
        tmp_path / "tiny",
        {"test": SplitData(queries=queries, corpus=corpus)},
        name="tiny",
        protocol=protocol,
        taxonomy={"Color": "Attribute", "Count": "Object"},
    )
