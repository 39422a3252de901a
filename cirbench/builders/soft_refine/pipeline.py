"""The SoFT refinement pipeline: an existing benchmark -> multi-target and single-target variants.

    run_soft_refine(yaml.safe_load(open("pipelines/soft-refine-cirr.yaml")), Path("out/cirr-soft"),
                    sources="cirr@val")

One work unit per query (describe -> mine -> score -> multi-target set -> single-target rewrite), written
atomically to `<out>.work/` like the EDIR build (see cirbench/builders/core/workdir.py): reruns resume,
`--shard i/n` splits the queries, `merge_soft_shards` exports the union. Sources: a native dataset directory
(`dataset:PATH[@SPLIT]` or the bare path) or a registered task (`task:NAME[@SPLIT]` or `NAME@SPLIT`, e.g.
`cirr@val`, `fashioniq@val`; `sources.data_dir` and `sources.options` are passed to its loader).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cirbench.builders.core.pipeline import PipelineInfo, UnitPipeline, register_pipeline
from cirbench.builders.core.units import rejection, seed_for
from cirbench.builders.core.workdir import (
    WorkDir,
    run_units,
    shard_slice,
    start_build,
)
from cirbench.builders.soft_refine.config import STAGES_WITH_LMM, identity, resolve, stage_lmm_config
from cirbench.builders.soft_refine.export import export_soft, image_bytes
from cirbench.builders.soft_refine.mining import Miner
from cirbench.builders.soft_refine.stages import describe, score_lists, single_target
from cirbench.core.types import Item, Query, Task
from cirbench.llm import LMM, lmm_fingerprint, make_stage_lmms


def load_source(spec: str, cfg: Mapping[str, Any]) -> Task:
    """The benchmark split a source spec names (see the module docstring)."""
    from cirbench.core.dataset import MANIFEST
    from cirbench.tasks import get_task

    scfg = cfg["sources"]
    kind, sep, rest = spec.partition(":")
    target = rest if sep and kind in ("dataset", "task") and not (Path(spec) / MANIFEST).is_file() else spec
    name, split = target.rsplit("@", 1) if "@" in target else (target, None)
    return get_task(
        name, split or scfg.get("split"), data_dir=scfg.get("data_dir"), **dict(scfg.get("options") or {})
    )


@dataclass
class Context:
    cfg: dict[str, Any]
    task: Task
    miner: Miner
    lmms: dict[str, LMM | None]
    models_key: str

    def item(self, iid: str) -> Item:
        return self.task.corpus[self.task.corpus_positions[iid]]

    def png(self, iid: str) -> bytes:
        return image_bytes(self.item(iid))


def load_context(cfg: dict[str, Any], task: Task, work: WorkDir, progress: bool) -> Context:
    from cirbench.core.cache import default_cache_dir
    from cirbench.models import get_model

    lmms = make_stage_lmms({s: stage_lmm_config(cfg, s) for s in STAGES_WITH_LMM},
                           cache_dir=default_cache_dir() / "lmm")
    m = cfg["mining"]
    encoder = get_model(str(m["model"]), **dict(m["options"] or {}))
    miner = Miner(
        encoder,
        task,
        top_k=int(m["top_k"]),
        exclude_reference=bool(m["exclude_reference"]),
        batch_size=int(m["batch_size"]),
        progress=progress,
    )
    models = {"mining": miner.fingerprint(), "lmm": {s: lmm_fingerprint(x) for s, x in lmms.items()}}
    return Context(cfg, task, miner, lmms, work.record_models(models))


def captions_of(q: Query) -> list[str]:
    caps = q.meta.get("captions") if isinstance(q.meta, Mapping) else None
    if isinstance(caps, list) and caps and all(isinstance(c, str) for c in caps):
        return list(caps)
    return [q.item.text or ""]


def refine_query(ctx: Context, q: Query) -> dict[str, Any]:
    """One query through every stage; the record of what was found and decided."""
    cfg = ctx.cfg
    captions = captions_of(q)
    ref_png = image_bytes(q.item) if q.item.image is not None else None
    rejected: list[dict[str, Any]] = []
    record: dict[str, Any] = {
        "query": q.id,
        "reference": q.reference_id,
        "gallery": q.gallery,
        "original_targets": list(q.relevant_ids),
        "captions": captions,
        "models": ctx.models_key,
        "multi": None,
        "single": None,
    }
    desc, rej = describe(ctx.lmms["describe"], ref_png, captions, cfg["describe"], cfg["prompts"]["describe"])
    rejected += rej
    record["description"] = desc
    if desc is None:
        return {**record, "rejections": rejected}
    types = list(cfg["mining"]["query_types"])
    lists: dict[str, list[tuple[str, float]]] = {}
    texts = [
        t
        for t in ("caption", "joined")
        if t in types and (t == "caption" or desc["joined"] != desc["caption"])
    ]
    vecs = ctx.miner.texts([desc[t] for t in texts]) if texts else np.zeros((0, 1))
    for t, v in zip(texts, vecs, strict=True):
        lists[t] = ctx.miner.rank(v, q.gallery, q.reference_id)
    if "target_image" in types and q.relevant_ids:
        lists["target_image"] = ctx.miner.rank(
            ctx.miner.target_vector(q.relevant_ids[0]), q.gallery, q.reference_id
        )
    record["candidates"] = {k: [[c, s] for c, s in v] for k, v in lists.items()}
    n = int(cfg["scoring"]["top_n"])
    images = (
        {c: ctx.png(c) for v in lists.values() for c, _ in v[:n]} if ctx.lmms["score"] is not None else {}
    )
    scores, rej = score_lists(
        ctx.lmms["score"], ref_png, captions, lists, images, cfg["scoring"], cfg["prompts"]["score"]
    )
    rejected += rej
    record["scores"] = scores
    thr = float(cfg["scoring"]["threshold"])
    multi: dict[str, float] = {}
    for sc in scores.values():
        for c, v in sc.items():
            if v >= thr and v > multi.get(c, -1.0):
                multi[c] = v
    if not multi:
        rejected.append(rejection("score", f"no candidate reached the threshold {thr}"))
        return {**record, "rejections": rejected}
    ranked = sorted(multi, key=lambda c: (-multi[c], c))
    record["multi"] = {c: multi[c] for c in ranked}
    if cfg["single"]["enabled"]:
        record["single"], rej = _single(ctx, q, ranked, ref_png, captions)
        rejected += rej
    return {**record, "rejections": rejected}


def _single(
    ctx: Context, q: Query, ranked: list[str], ref_png: bytes | None, captions: list[str]
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    cfg = ctx.cfg
    rng = np.random.default_rng(seed_for(int(cfg["seed"]), "single", q.id))
    target = ranked[int(rng.integers(len(ranked)))]
    others = [c for c in ranked if c != target]
    if not others:
        if cfg["single"]["keep_unambiguous"]:
            return {"target": target, "comparisons": [], "text": q.item.text, "rewritten": False}, []
        return None, [
            rejection("single", "only one target: nothing to refine (single.keep_unambiguous: false)")
        ]
    comps = others[: int(cfg["single"]["max_comparisons"])]
    lmm = ctx.lmms["single"]
    images = {c: ctx.png(c) for c in [target, *comps]} if lmm is not None else {}
    text, rej = single_target(
        lmm,
        ref_png,
        target,
        comps,
        captions,
        images,
        ctx.item(target).caption,
        cfg["single"],
        cfg["prompts"]["single"],
    )
    if text is None:
        return None, rej
    return {"target": target, "comparisons": others, "text": text, "rewritten": True}, rej


def run_soft_refine(
    config: Mapping[str, Any],
    out: str | os.PathLike[str],
    *,
    sources: str | None = None,
    shard: tuple[int, int] | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> Path:
    """Refine a benchmark into multi-target and single-target variants in `out`; returns the dataset directory
    (or, for shard i/n with n > 1, the work dir: run `merge_soft_shards(out, n)` when every shard is done).
    limit: the first N queries of the source split."""
    # keys sorted, as merge_shards reads them back from the work dir: the same card and manifest either way
    cfg = json.loads(json.dumps(resolve(config), sort_keys=True))
    spec, (i, n), work = start_build(
        cfg, out, sources, shard,
        source_forms="a native dataset dir, dataset:PATH[@SPLIT] or task:NAME[@SPLIT]",
    )
    work.bind(identity(cfg, spec), settings={**cfg, "_sources": spec})
    task = load_source(spec, cfg)
    queries = task.queries[:limit] if limit is not None else list(task.queries)
    mine = shard_slice(queries, (i, n))
    todo = [q for q in mine if not work.has_unit(q.id)]
    if todo:
        ctx = load_context(cfg, task, work, progress)
        run_units(
            work,
            todo,
            lambda q: q.id,
            lambda q: (refine_query(ctx, q), {}),
            progress=progress,
            label=f"refining {len(todo)} queries",
            give_up_after=int(cfg["work"]["give_up_after"]),
            noun="queries",
        )
    work.mark_shard((i, n), {"limit": limit, "units": [q.id for q in mine]})
    if n > 1:
        return work.root
    return export_soft(work, Path(out), cfg, task, [q.id for q in queries], spec=spec, limit=limit)


def merge_soft_shards(out: str | os.PathLike[str], n: int) -> Path:
    """Export the union of shards 0..n-1 (the source benchmark must be readable here)."""
    out = Path(out)
    work = WorkDir(out)
    settings = dict(work.identity()["settings"])
    spec = settings.pop("_sources")
    markers = work.collect_shards(n)
    task = load_source(spec, settings)
    done = {u for m in markers for u in m["units"]}
    order = [q.id for q in task.queries if q.id in done]
    return export_soft(work, out, settings, task, order, spec=spec, limit=markers[0].get("limit"))


PIPELINE = register_pipeline(UnitPipeline(
    PipelineInfo(
        name="soft-refine",
        description="an existing CIR benchmark -> LMM-scored multi-target and single-target variants",
        accepts=("sources", "shard", "merge", "limit"),
    ),
    resolve,
    run_soft_refine,
    merge_soft_shards,
))
