"""build_synthetic: config + preset + seed -> a native dataset directory (test, test_single, train)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cirbench.builders.core.images import png_bytes
from cirbench.builders.core.pipeline import (
    BuildRequest,
    PipelineInfo,
    check_request,
    refusal,
    register_pipeline,
)
from cirbench.builders.synthetic.card import contact_sheet, data_card
from cirbench.builders.synthetic.edits import SUBCATEGORIES, TAXONOMY
from cirbench.builders.synthetic.generate import BuiltQuery, BuiltSplit, SplitConfig, build_split
from cirbench.builders.synthetic.predicate import Op
from cirbench.builders.synthetic.render import render
from cirbench.builders.synthetic.scene import Scene
from cirbench.builders.synthetic.texts import caption
from cirbench.core.dataset import ImageRecord, QueryRecord, SplitData, check_replaceable, write_dataset
from cirbench.core.options import did_you_mean
from cirbench.core.types import Protocol
from cirbench.core.workers import process_pool
from cirbench.tasks.taxonomy import SYNTHETIC_METRICS as METRICS

SPLIT_STREAMS = {"test": 0, "train": 1}
"""Each split draws from its own random stream, seeded by (seed, this number): disjoint by construction."""

PROTOCOL = Protocol(
    name="official",
    metrics=METRICS,
    main_metric="R@1",
    top_k=50,
    ap_normaliser="min(K,|G|)",
    exclude_reference=False,
    gallery="corpus of the split (test and test_single share one gallery)",
    notes={
        "reference": "kept in the gallery as a deliberate hard negative (CIRCO's kept-reference protocol)",
        "ground_truth": "exact, from scene graphs: every gallery image satisfying the edit is relevant",
        "test_single": "refined single-target texts over the same gallery as test",
    },
)
PITFALLS = (
    "The reference image is in the gallery and is not excluded: it is a deliberate hard negative.",
    "test is multi-target (mAP@K with the min(K,|G|) normaliser); test_single has one target per query.",
)


TOP_KEYS = ("pipeline", "name", "version", "license", "description", "default_preset", "render", "presets")
RENDER_DEFAULTS = {"size": 128, "supersample": 2, "png_compress_level": 3, "workers": 1}


def _known_keys(section: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = sorted(set(section) - set(known))
    if unknown:
        hints = "".join(did_you_mean(str(u), known) for u in unknown)
        raise ValueError(f"unknown key(s) {unknown} in {where}{hints}; known: {sorted(known)}")


def _int(value: Any, where: str, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None
                                                                                 and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{where} must be an integer {bound}, not {value!r}")
    return value


def render_settings(config: Mapping[str, Any]) -> dict[str, int]:
    """The `render:` section with its defaults, each value checked (a typo or a string fails here)."""
    render_cfg = config.get("render") or {}
    if not isinstance(render_cfg, Mapping):
        raise ValueError("render must be a mapping")
    _known_keys(render_cfg, tuple(RENDER_DEFAULTS), "render")
    out = {**RENDER_DEFAULTS, **render_cfg}
    bounds = {"size": (8, None), "supersample": (1, None), "png_compress_level": (0, 9), "workers": (1, None)}
    return {k: _int(out[k], f"render.{k}", low=lo, high=hi) for k, (lo, hi) in bounds.items()}


def _render_one(args: tuple[Scene, int, int, int]) -> bytes:
    scene, size, ss, level = args
    return png_bytes(render(scene, size, ss), level)


def _render_all(scenes: Sequence[Scene], render_cfg: Mapping[str, Any], progress: bool) -> list[bytes]:
    """PNG bytes for every scene, with a progress bar; optionally over several processes."""
    size, ss = int(render_cfg.get("size", 128)), int(render_cfg.get("supersample", 2))
    level, workers = int(render_cfg.get("png_compress_level", 3)), int(render_cfg.get("workers", 1))
    jobs = [(sc, size, ss, level) for sc in scenes]
    results: Iterator[bytes]
    pool = process_pool(workers) if workers > 1 else None  # workers die with this process, even on SIGKILL
    try:
        results = pool.map(_render_one, jobs, chunksize=64) if pool else map(_render_one, jobs)
        if not progress:
            return list(results)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        out: list[bytes] = []
        columns = (TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=Console(stderr=True)) as bar:
            task = bar.add_task("render", total=len(jobs))
            for b in results:
                out.append(b)
                bar.advance(task)
        return out
    finally:
        if pool is not None:
            pool.shutdown()


def _query_meta(split: BuiltSplit, q: BuiltQuery, ops: Sequence[Op] | None = None) -> dict[str, Any]:
    d = q.draft
    return {
        "reference_scene": split.id_of(d.ref),
        "edit": d.edit.to_json(ops),
        "templates": [c.template for c in d.edit.clauses],
        "realized_targets": [split.id_of(t) for t, _ in d.targets],
    }


def _records(split: BuiltSplit, prefix: str) -> tuple[list[QueryRecord], list[QueryRecord]]:
    """(multi-target records, single-target records) of a split."""
    multi, single = [], []
    for k, q in enumerate(split.queries):
        d = q.draft
        qid = f"{prefix}-q{k:05d}"
        ref_id = split.id_of(d.ref)
        hard = [ref_id] + [split.id_of(h) for h in d.hard]
        sub = d.edit.subcategory
        multi.append(
            QueryRecord(
                id=qid,
                text=d.edit.text,
                relevant_ids=[split.ids[p] for p in q.relevant],
                reference_id=ref_id,
                category=TAXONOMY[sub],
                subcategory=sub,
                hard_negative_ids=hard,
                meta={**_query_meta(split, q), "variant": "multi"},
            )
        )
        if q.single is not None:
            s = q.single
            others = [split.ids[p] for p in q.relevant if p not in s.positions]
            meta = {
                **_query_meta(split, q, s.ops),
                "variant": "single",
                "parent": qid,
                "base_text": d.edit.text,
                "pins": [{"op": i, "field": list(path), "value": v} for i, path, v in s.pins],
            }
            single.append(
                QueryRecord(
                    id=f"{qid}-single",
                    text=s.text,
                    relevant_ids=[split.ids[p] for p in s.positions],
                    reference_id=ref_id,
                    category=TAXONOMY[sub],
                    subcategory=sub,
                    hard_negative_ids=hard + others,
                    meta=meta,
                )
            )
    return multi, single


def _scenes_jsonl(split: BuiltSplit) -> bytes:
    lines = [
        json.dumps({"id": i, **sc.to_json()}, sort_keys=True)
        for i, sc in zip(split.ids, split.gallery, strict=True)
    ]
    return ("\n".join(lines) + "\n").encode()


def _examples(split: BuiltSplit) -> list[int]:
    """One query per subcategory for the contact sheet, preferring ones with several targets."""
    picks = []
    for sub in SUBCATEGORIES:
        cands = [k for k, q in enumerate(split.queries) if q.draft.edit.subcategory == sub]
        multi = [k for k in cands if len(split.queries[k].relevant) > 1 and split.queries[k].draft.hard]
        if cands:
            picks.append((multi or cands)[0])
    return picks


def resolve(
    config: Mapping[str, Any], preset: str | None, seed: int | None, limit: int | None
) -> tuple[str, int, dict[str, SplitConfig]]:
    """The preset name, seed and per-split settings a build uses (a limit scales train along with test)."""
    if config.get("pipeline") != "synthetic":
        raise ValueError(f"not a synthetic pipeline config (pipeline: {config.get('pipeline')!r})")
    _known_keys(config, TOP_KEYS, "top level")
    render_settings(config)
    presets = config.get("presets") or {}
    if not isinstance(presets, Mapping) or not presets:
        raise ValueError("presets must be a mapping of preset name -> settings")
    name = preset or config.get("default_preset", "mini")
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}{did_you_mean(str(name), presets)}; available: "
                         f"{', '.join(sorted(presets))}")
    p = presets[name]
    if not isinstance(p, Mapping):
        raise ValueError(f"presets.{name} must be a mapping with seed, test and train")
    _known_keys(p, ("seed", "test", "train"), f"presets.{name}")
    used_seed = _int(seed if seed is not None else p.get("seed", 0), f"presets.{name}.seed", low=0)
    if limit is not None:
        _int(limit, "--limit", low=1)
    splits = {}
    for s in ("test", "train"):
        if not isinstance(p.get(s), Mapping):
            raise ValueError(f"presets.{name}.{s} must be a mapping of split settings")
        try:
            splits[s] = SplitConfig.from_mapping(p[s])
        except (TypeError, ValueError) as e:
            raise ValueError(f"presets.{name}.{s}: {e}") from None
    splits["test"] = SplitConfig(**{**splits["test"].__dict__, "single_target": True})
    if limit is not None:
        full_test = splits["test"].queries
        n_test = max(1, min(limit, full_test))
        n_train = max(len(SUBCATEGORIES), math.ceil(splits["train"].queries * n_test / full_test))
        splits["test"] = SplitConfig(**{**splits["test"].__dict__, "queries": n_test})
        splits["train"] = SplitConfig(**{**splits["train"].__dict__, "queries": n_train})
    return name, used_seed, splits


def build_synthetic(
    config: Mapping[str, Any],
    out: str | Path,
    *,
    preset: str | None = None,
    seed: int | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> Path:
    """Build the synthetic benchmark into `out` (replaced atomically) and return its path.

    config is the parsed pipelines/synthetic.yaml; preset defaults to its `default_preset`, seed to the
    preset's seed; limit caps the test queries (train shrinks in proportion) for a quick build.
    """
    name, used_seed, split_cfgs = resolve(config, preset, seed, limit)
    check_replaceable(Path(out))  # refuse a user's folder before minutes of work, not after
    render_cfg = dict(config.get("render", {}))
    recorded_render = {k: v for k, v in render_cfg.items() if k != "workers"}  # output does not depend on it
    test = build_split("test", split_cfgs["test"], np.random.default_rng([used_seed, SPLIT_STREAMS["test"]]))
    train = build_split(
        "train",
        split_cfgs["train"],
        np.random.default_rng([used_seed, SPLIT_STREAMS["train"]]),
        forbidden_refs=frozenset(test.gallery),
    )
    pngs = _render_all(test.gallery + train.gallery, render_cfg, progress)
    images = dict(zip(test.ids + train.ids, pngs, strict=True))

    def corpus(split: BuiltSplit) -> list[ImageRecord]:
        return [
            ImageRecord(id=i, image=images[i], caption=caption(sc))
            for i, sc in zip(split.ids, split.gallery, strict=True)
        ]

    test_multi, test_single = _records(test, "test")
    train_multi, _ = _records(train, "train")
    test_corpus = corpus(test)
    splits = {
        "test": SplitData(test_multi, test_corpus),
        "test_single": SplitData(test_single, test_corpus),
        "train": SplitData(train_multi, corpus(train)),
    }
    records = {s: sd.queries for s, sd in splits.items()}
    ex = _examples(test)
    sheet = contact_sheet(test, images, [test.queries[k] for k in ex], [test_multi[k].text for k in ex])
    jsonl = _scenes_jsonl(test)
    files = {
        "scenes/test.jsonl": jsonl,
        "scenes/test_single.jsonl": jsonl,
        "scenes/train.jsonl": _scenes_jsonl(train),
        "contact_sheet.png": sheet,
    }
    ds_name = f"{config.get('name', 'cirbench-synthetic')}-{name}"
    card = data_card(
        name=ds_name,
        preset=name,
        seed=used_seed,
        limit=limit,
        records=records,
        corpus_sizes={s: len(sd.corpus) for s, sd in splits.items()},
        protocol=PROTOCOL,
        license=str(config.get("license", "cc-by-4.0")),
        render=recorded_render,
        split_configs={s: {k: v for k, v in c.__dict__.items()} for s, c in split_cfgs.items()},
    )
    generator = {
        "pipeline": "synthetic",
        "preset": name,
        "seed": used_seed,
        "limit": limit,
        "render": recorded_render,
        "splits": {s: dict(c.__dict__) for s, c in split_cfgs.items()},
        "split_streams": SPLIT_STREAMS,
    }
    return write_dataset(
        out,
        splits,
        name=ds_name,
        version=str(config.get("version", "1.0")),
        description="Synthetic composed image retrieval benchmark with EDIR's taxonomy and exact "
        "multi-target ground truth computed from scene graphs.",
        license=str(config.get("license", "cc-by-4.0")),
        protocol=PROTOCOL,
        taxonomy=TAXONOMY,
        instructions={"query": "Given an image, find a similar image satisfying the modification."},
        extra={
            "generator": generator,
            "preset": name,
            "seed": used_seed,
            "pitfalls": list(PITFALLS),
            "source": "cirbench.builders.synthetic",
        },
        card=card,
        files=files,
    )


class SyntheticPipeline:
    """The synthetic benchmark as a registered pipeline: one seeded generation, no work units to shard."""

    info = PipelineInfo(
        name="synthetic",
        description="procedural scenes with EDIR's taxonomy and exact multi-target ground truth",
        accepts=("preset", "seed", "limit"),
        not_sharded_because="it is one seeded generation of the whole benchmark (every query draws from the "
        "split's single random stream and the gallery is shared), not a set of work units; build it in one "
        "run",
    )

    def resolve(self, config: Mapping[str, Any], request: BuildRequest) -> None:
        check_request(self.info, request)
        resolve(config, request.preset, request.seed, request.limit)

    def run(self, config: Mapping[str, Any], out: str | os.PathLike[str], request: BuildRequest) -> Path:
        check_request(self.info, request)
        return build_synthetic(config, Path(out), preset=request.preset, seed=request.seed,
                               limit=request.limit, progress=request.progress)

    def merge(self, out: str | os.PathLike[str], n: int) -> Path:
        raise refusal(self.info, "merge")


PIPELINE = register_pipeline(SyntheticPipeline())

__all__ = ["PIPELINE", "SyntheticPipeline", "build_synthetic", "resolve"]
