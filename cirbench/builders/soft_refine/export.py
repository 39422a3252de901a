"""Export of a SoFT refinement: one dataset with the multi-target and the single-target variant as splits.

Splits are `test` / `test_single`, or `<gallery>` / `<gallery>_single` per sub-gallery when the source has
them (FashionIQ's dress, shirt, toptee), each with its own gallery. The gallery images are copied from the
source benchmark so the output stands alone. Multi-target queries keep the original text(s); their targets are
the images scored at or above the threshold, best first. Single-target queries have the refined text, one
target, and the other multi-target images as hard negatives (SoFT's comparison images).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cirbench.builders.core.card import write_card
from cirbench.builders.core.images import safe_id
from cirbench.builders.core.workdir import LazyFiles, WorkDir
from cirbench.core.dataset import ImageRecord, QueryRecord, SplitData, write_dataset
from cirbench.core.markdown import code, escape, fenced, table
from cirbench.core.types import Item, Protocol, Task
from cirbench.llm.base import image_mime


def image_bytes(item: Item) -> bytes:
    """The item's encoded image as stored (inline bytes or the file's bytes), for export and for the LMM."""
    if isinstance(item.image, bytes):
        return item.image
    if item.image is None:
        raise ValueError(f"item {item.id!r} has no image")
    return Path(item.image).read_bytes()


def _file_name(item: Item) -> str:
    """A safe, unique file name for an item's image (ids may hold any character)."""
    sid = safe_id(item.id)
    if sid != item.id:
        sid += "-" + hashlib.sha1(item.id.encode()).hexdigest()[:8]
    if isinstance(item.image, Path):
        ext = item.image.suffix.lower() or ".img"
    else:
        try:
            ext = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}[
                image_mime(item.image or b"")
            ]
        except ValueError:
            ext = ".img"
    return sid + ext


def protocol_for(task: Task, normaliser: str) -> Protocol:
    return Protocol(
        name="soft-refined",
        metrics=("R@1", "R@5", "R@10", "R@50", "mAP@5", "mAP@10", "mAP@25", "mAP@50"),
        main_metric="R@1",
        top_k=50,
        ap_normaliser=normaliser,
        exclude_reference=task.protocol.exclude_reference,
        gallery=task.protocol.gallery,
        notes={
            "multi": "mAP@K over the multi-target set (SoFT reports mAP@5/10/25/50)",
            "single": "R@K with one target; the other multi-target images are hard negatives",
            "ap_normaliser": f"{normaliser} ('hits' is SoFT's compute_map_at_k; 'min(K,|G|)' is CIRCO's)",
        },
    )


def export_soft(
    work: WorkDir,
    out: Path,
    cfg: Mapping[str, Any],
    task: Task,
    order: Sequence[str],
    *,
    spec: str,
    limit: int | None,
) -> Path:
    recs = [work.load_unit(qid) for qid in order]
    by_id = {q.id: q for q in task.queries}
    groups = list(task.galleries) if task.galleries else [None]
    splits: dict[str, SplitData] = {}
    inline = cfg["export"]["images"] == "parquet"
    items: dict[str, Item] = {}  # output file -> the source item it is copied from, when written

    def record(item: Item, caption: str | None) -> ImageRecord:
        if inline:
            return ImageRecord(id=item.id, image=image_bytes(item), caption=caption)
        rel = f"images/{_file_name(item)}"
        items[rel] = item
        return ImageRecord(id=item.id, image_path=rel, caption=caption)

    for g in groups:
        gal_ids = task.galleries[g] if g is not None and task.galleries else [it.id for it in task.corpus]
        in_gallery = set(gal_ids)
        corpus = [
            record(task.corpus[task.corpus_positions[i]], task.corpus[task.corpus_positions[i]].caption)
            for i in gal_ids
        ]
        multi, single, refs = [], [], {}
        for r in recs:
            q = by_id[r["query"]]
            if q.gallery != g or not r.get("multi"):
                continue
            if q.reference_id and q.reference_id not in in_gallery and q.item.image is not None:
                refs[q.reference_id] = record(replace(q.item, id=q.reference_id), None)
            common: dict[str, Any] = {
                "reference_id": q.reference_id,
                "category": q.category,
                "subcategory": q.subcategory,
            }
            meta = {
                "original_targets": r["original_targets"],
                "captions": r["captions"],
                "confidence_scores": r["multi"],
                "description": r.get("description"),
                "threshold": cfg["scoring"]["threshold"],
                "variant": "multi",
            }
            multi.append(
                QueryRecord(
                    id=q.id,
                    text=q.item.text or "",
                    relevant_ids=list(r["multi"]),
                    text_variants=[a.text for a in q.alt_items if a.text],
                    meta=meta,
                    **common,
                )
            )
            s = r.get("single")
            if s:
                single.append(
                    QueryRecord(
                        id=f"{q.id}-single",
                        text=s["text"],
                        relevant_ids=[s["target"]],
                        hard_negative_ids=s["comparisons"],
                        meta={
                            "parent": q.id,
                            "original_text": q.item.text,
                            "rewritten": s["rewritten"],
                            "target_confidence": r["multi"][s["target"]],
                            "variant": "single",
                        },
                        **common,
                    )
                )
        name = "test" if g is None else g
        if multi:
            splits[name] = SplitData(multi, corpus, list(refs.values()))
        if single:
            splits[f"{name}_single"] = SplitData(single, corpus, list(refs.values()))
    rejections = [{"query": r["query"], **x} for r in recs for x in r.get("rejections", [])]
    if not splits:
        work.write_json("rejections.json", rejections)
        raise ValueError(
            f"no query kept a multi-target set ({len(recs)} queries); reasons in "
            f"{work.root / 'rejections.json'}"
        )
    models = {
        k: work.read_json(f"models/{k}.json") for k in sorted({r["models"] for r in recs if r.get("models")})
    }
    prompts = dict(cfg["prompts"])
    generator = {
        "pipeline": "soft-refine",
        "sources": spec,
        "source_task": task.name,
        "source_split": task.split,
        "source_revision": task.revision,
        "limit": limit,
        "seed": cfg["seed"],
        "models": models,
        "prompts": prompts,
        "config": {k: v for k, v in cfg.items() if k not in ("prompts", "_sources", "work")},
    }
    card = data_card(cfg, task, splits, recs, rejections, models, prompts, spec)
    log = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rejections).encode()
    return write_dataset(
        out,
        splits,
        name=str(cfg["name"]),
        version=str(cfg["version"]),
        description=str(cfg["description"]),
        license=str(cfg["license"]),
        protocol=protocol_for(task, str(cfg["export"]["ap_normaliser"])),
        taxonomy=dict(task.metadata.taxonomy),
        instructions=dict(task.metadata.instructions),
        extra={"generator": generator, "source": "cirbench.builders.soft_refine"},
        card=card,
        files=LazyFiles(
            image_bytes,
            items,
            {
                "rejections.jsonl": log,
                "build/prompts.json": json.dumps(prompts, indent=2, sort_keys=True).encode(),
            },
        ),
    )


def data_card(
    cfg: Mapping[str, Any],
    task: Task,
    splits: Mapping[str, SplitData],
    recs: Sequence[Mapping[str, Any]],
    rejections: Sequence[Mapping[str, Any]],
    models: Mapping[str, Any],
    prompts: Mapping[str, str],
    spec: str,
) -> str:
    rows = []
    for name, sd in splits.items():
        n = [len(q.relevant_ids) for q in sd.queries]
        kept = sum(1 for q in sd.queries if set(q.meta.get("original_targets", ())) & set(q.relevant_ids))
        rows.append((name, len(sd.queries), len(sd.corpus), f"{sum(n) / len(n):.2f}", max(n),
                     kept if not name.endswith("_single") else "–"))
    described = sum(1 for r in recs if r.get("description"))
    with_multi = sum(1 for r in recs if r.get("multi"))
    with_single = sum(1 for r in recs if r.get("single"))
    reasons = Counter((x["stage"], x["reason"].split(" (")[0].split(":")[0]) for x in rejections)
    reason_rows = [(st, why, c) for (st, why), c in reasons.most_common(15)] or [("–", "–", 0)]
    model_text = "\n".join(fenced(json.dumps(v, indent=1, sort_keys=True), "json") for v in models.values())
    prompt_text = "\n\n".join(f"### {escape(k)}\n{fenced(v, 'text')}" for k, v in prompts.items())
    front = {"license": cfg["license"], "pretty_name": cfg["name"],
             "tags": ["composed-image-retrieval", "multi-target", "cirbench"]}
    source = f"{escape(task.name)}, split {escape(task.split)}, revision {escape(task.revision)}"
    return write_card(front=front, title=cfg["name"], description=cfg["description"], body=f"""
Refined from {code(spec)} ({source}) by `cirbench build` with the
SoFT recipe (`cirbench.builders.soft_refine`): candidates mined with an embedding model (top
{cfg["mining"]["top_k"]} per query for each of {escape(", ".join(cfg["mining"]["query_types"]))}), the top
{cfg["scoring"]["top_n"]} of each list scored by an LMM, candidates with confidence >=
{cfg["scoring"]["threshold"]} kept as targets (max over lists), then one target per query drawn
(seed {cfg["seed"]}) and its text rewritten against the other targets.

{table(("split", "queries", "gallery", "targets/query (mean)", "max", "original target kept"), rows)}

## Filters

| stage | queries |
|---|---|
| source queries | {len(recs)} |
| described | {described} |
| multi-target set (>= threshold) | {with_multi} |
| single-target text | {with_single} |

{table(("stage", "reason", "count"), reason_rows)}

Every rejection is in `rejections.jsonl`.

## Models

{model_text}

## Prompts

{prompt_text}

## Protocol

Multi-target splits: mAP@5/10/25/50 (normaliser {code(cfg["export"]["ap_normaliser"])}) and hit-rate R@K;
single-target splits: R@1/5/10/50. The reference handling follows the source benchmark
(`exclude_reference: {str(task.protocol.exclude_reference).lower()}`).
""")
