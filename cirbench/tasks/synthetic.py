"""The embedded synthetic benchmark as tasks: built on first use into the cache, then read natively.

`synthetic-mini` and `synthetic-full` run with no download: the first eval builds the dataset from
`pipelines/synthetic.yaml` (shipped inside the package as well) into `$CIRBENCH_CACHE/datasets/`, atomically,
so an interrupted build never leaves a half-written dataset behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cirbench.core.cache import default_cache_dir
from cirbench.core.dataset import MANIFEST, load_native, read_manifest
from cirbench.core.options import as_bool, as_int
from cirbench.core.types import Task, TaskMetadata
from cirbench.tasks._files import check_options
from cirbench.tasks.registry import TaskSpec, register_task
from cirbench.tasks.taxonomy import SYNTHETIC_METRICS

SPLITS = ("test", "test_single", "train")
METRICS = SYNTHETIC_METRICS
OPTIONS = {
    "seed": "build seed (default: the preset's)",
    "progress": "true (default) or false: show the progress of the first build",
}


def pipeline_config() -> dict[str, Any]:
    """The synthetic pipeline config shipped inside the package (cirbench/pipelines/synthetic.yaml; the
    repo's pipelines/synthetic.yaml points at it), so an installed wheel finds it too."""
    from cirbench.builders.core.shipped import shipped_pipeline_text

    return yaml.safe_load(shipped_pipeline_text("synthetic"))


def ensure_built(
    preset: str, data_dir: Path | None = None, *, seed: int | None = None, progress: bool = True
) -> Path:
    """The dataset directory of a preset, building it if it is not there yet."""
    from cirbench.builders.synthetic import build_synthetic

    config = pipeline_config()
    seed = seed if seed is not None else int(config["presets"][preset]["seed"])
    root = (
        data_dir if data_dir is not None else default_cache_dir() / "datasets" / f"synthetic-{preset}-{seed}"
    )
    if (root / MANIFEST).is_file():
        manifest = read_manifest(root)
        if manifest.get("preset", preset) == preset:
            return root
    build_synthetic(config, root, preset=preset, seed=seed, progress=progress)
    return root


def _loader(preset: str):
    def load(data_dir: Path | None, split: str, protocol: str, **options: Any) -> Task:
        check_options(options, OPTIONS, f"synthetic-{preset}")
        seed = options.get("seed")
        root = ensure_built(
            preset,
            data_dir,
            seed=as_int(seed, "seed", low=0) if seed is not None else None,
            progress=as_bool(options.get("progress", True), "progress"),
        )
        return load_native(root, split)

    return load


for _preset, _size in (("mini", "test ~1k queries / ~4k gallery"), ("full", "test ~10k queries")):
    register_task(
        TaskSpec(
            metadata=TaskMetadata(
                name=f"synthetic-{_preset}",
                description="Procedural scenes edited along EDIR's 15 subcategories; exact multi-target "
                "ground truth from the scene graph, with single-target variants and hard negatives.",
                source="built by cirbench (pipelines/synthetic.yaml)",
                instructions={"query": "Given an image, find a similar image satisfying the query."},
                license="CC-BY-4.0 (generated data)",
            ),
            load=_loader(_preset),
            splits=SPLITS,
            default_split="test",
            metrics=METRICS,
            size=_size,
            layout="a native cirbench dataset (cirbench.json + <split>/queries.parquet + corpus.parquet); "
            "built automatically when missing",
            options=OPTIONS,
            family="synthetic",
        )
    )
