"""The EDIR pipeline: sources -> instructions -> edits -> verification -> queries -> negatives -> export.

    run_edir(yaml.safe_load(open("pipelines/edir.yaml")), Path("out/edir"), sources="folder:photos")

One work unit is one source image with all its edits, in three steps: plan (read the source, get its
instructions from the LMM), edit (the editor's batched calls, on the calling thread), finish (PNG encoding,
verification and rewrite, whose LMM requests run concurrently). With `work.lookahead: k > 0` the next k units
are planned in threads and the previous unit finishes in a thread while the current one is edited, so the GPU
does not wait for the LMM; a unit's result never depends on this. A finished unit is written atomically to
`<out>.work/` (see workdir.py). A rerun of the same command skips finished units; `--shard i/n` processes
every n-th source and `merge_shards` exports the union. A unit that failed for a reason that may pass (the LMM
server was unreachable after its retries, the editor ran out of memory) is not written: the build finishes
the other units, then stops with `BuildIncomplete`, and the next run retries exactly those.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from cirbench.builders.core.images import decode, png_bytes
from cirbench.builders.core.pipeline import PipelineInfo, UnitPipeline, register_pipeline
from cirbench.builders.core.workdir import (
    BuildIncomplete,
    Deferred,
    WorkDir,
    fingerprint_of,
    run_units,
    run_units_on,
    shard_slice,
    start_build,
)
from cirbench.builders.edir.common import prepare
from cirbench.builders.edir.config import STAGES_WITH_LMM, identity, resolve, stage_lmm_config
from cirbench.builders.edir.editors import Editor, make_editor
from cirbench.builders.edir.export import export_edir
from cirbench.builders.edir.instructions import PlannedEdit, make_instructions, plan_subcategories
from cirbench.builders.edir.rewrite import rewrite_queries
from cirbench.builders.edir.sources import Pool, open_pool, rank_by_hash, scan_pool, split_pool
from cirbench.builders.edir.verify import EmbeddingVerifier, lmm_verify, make_verifier
from cirbench.engine.base import Engine, Needs
from cirbench.llm import LMM, lmm_fingerprint, make_stage_lmms, share_concurrency
from cirbench.llm.base import image_mime
from cirbench.llm.templates import template_fingerprint

EXT = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}


# ------------------------------------------------------------------------------------------------ pool


def _blob_name(kind: str, iid: str, data: bytes) -> str:
    k = WorkDir.key(iid)
    try:
        ext = EXT[image_mime(data)]
    except (ValueError, KeyError):
        ext = ".bin"
    return f"{kind}/{k[:2]}/{k}{ext}"


def prepare_pool(
    work: WorkDir, spec: str, cfg: Mapping[str, Any], pool: Pool | None = None
) -> dict[str, Any]:
    """Scan, dedup and split the pool once per work dir (pool.json); copy distractor and reference-set images
    into the work dir so that export and merge never need the sources again."""
    rec = work.read_json("pool.json")
    if rec is not None:
        return dict(rec)
    pool = pool or open_pool(spec, cfg["sources"])
    scan = scan_pool(
        pool,
        method=cfg["dedup"]["method"],
        max_distance=int(cfg["dedup"]["max_distance"]),
        min_size=int(cfg["sources"]["min_size"]),
    )
    kept = [r["id"] for r in scan["images"]]
    seed = int(cfg["seed"])
    sources, distractors = split_pool(kept, seed=seed, distractors=int(cfg["distractors"]["count"]))
    n_unrel = int(cfg["verify"]["embedding"]["unrelated"]) if cfg["verify"]["embedding"]["enabled"] else 0
    unrelated = rank_by_hash(kept, f"{seed}:unrelated")[:n_unrel]

    def copy(kind: str, iid: str) -> dict[str, str]:
        data = pool.read(iid)
        name = _blob_name(kind, iid, data)
        if not work.blob_path(name).exists():
            work.save_blob(name, data)
        return {"id": iid, "blob": name}

    rec = {
        **scan,
        "sources": sources,
        "distractors": [copy("pool", i) for i in distractors],
        "unrelated": [copy("pool", i) for i in unrelated],
    }
    work.write_json("pool.json", rec)
    return rec


# ------------------------------------------------------------------------------------------------ stages


@dataclass
class Stages:
    """Everything loaded once per process: the LMM per stage, the editor, the embedding verifier."""

    cfg: dict[str, Any]
    pool: Pool
    editor: Editor
    lmms: dict[str, LMM | None]
    verifier: EmbeddingVerifier | None
    models_key: str = ""
    models: dict[str, Any] = field(default_factory=dict)
    """What made the units (editor, LMMs, checks): `models/<models_key>.json` in the work dir."""


def load_stages(
    cfg: dict[str, Any], work: WorkDir, pool_rec: Mapping[str, Any], pool: Pool, editor: Editor | None = None,
    *, record: bool = True, share: int = 1,
) -> Stages:
    """Load the models. `record=False` (an engine's worker) leaves writing `models/<key>.json` to the driver;
    `share`: the number of workers that split each LMM client's concurrency limit."""
    from cirbench.core.cache import default_cache_dir

    lmms = make_stage_lmms({s: share_concurrency(stage_lmm_config(cfg, s), share) for s in STAGES_WITH_LMM},
                           cache_dir=default_cache_dir() / "lmm")
    editor = editor or make_editor(cfg["editor"])
    verifier = make_verifier(cfg["verify"]["embedding"])
    if verifier is not None:
        ids = [u["id"] for u in pool_rec["unrelated"]]
        datas = [work.read_blob(u["blob"]) for u in pool_rec["unrelated"]]
        verifier.set_unrelated(ids, datas, [decode(d) for d in datas])
    models: dict[str, Any] = {
        "editor": editor.fingerprint(),
        "lmm": {s: lmm_fingerprint(m) for s, m in lmms.items()},
        "embedding_check": verifier.fingerprint() if verifier is not None else None,
    }
    if any(m is None for m in lmms.values()):
        models["templates"] = template_fingerprint()
    key = work.record_models(models) if record else fingerprint_of(models)
    return Stages(cfg, pool, editor, lmms, verifier, key, models)


def _edit_record(e: PlannedEdit, blobs: Mapping[str, str]) -> dict[str, Any]:
    rec = e.to_json()
    rec["blob"] = blobs[e.id]
    rec["partials"] = [{**p, "blob": blobs[p["id"]]} for p in e.partials]
    return rec


@dataclass
class UnitWork:
    """One source between stages: planned (instructions), then edited (images), then finished (record)."""

    sid: str
    raw: bytes
    source: Image.Image
    edit_in: Image.Image
    src_png: bytes
    subs: list[str]
    caption: str | None
    edits: list[PlannedEdit]
    rejected: list[dict[str, Any]]
    funnel: dict[str, int]
    jobs: list[tuple[str, str, int]]
    images: list[Image.Image] | None = None


def plan_unit(st: Stages, sid: str) -> UnitWork:
    """Read the source, draw its edit types, get the instructions (the LMM's first call)."""
    cfg, seed = st.cfg, int(st.cfg["seed"])
    raw = st.pool.read(sid)
    source = decode(raw)
    ecfg = cfg["editor"]
    edit_in = prepare(source, int(ecfg["size"]), int(ecfg["multiple_of"]))
    src_png = png_bytes(edit_in, int(ecfg["png_compress_level"]))
    subs = plan_subcategories(
        sid, list(cfg["instructions"]["subcategories"]), int(cfg["instructions"]["per_source"]), seed
    )
    icfg = {**cfg["instructions"], "partial_edits": cfg["negatives"]["partial_edits"]}
    caption, edits, rejected = make_instructions(
        sid, src_png, subs, st.lmms["instructions"], icfg, cfg["prompts"]["instructions"], seed
    )
    jobs = [(e.id, e.instruction, e.seed) for e in edits]
    jobs += [(p["id"], p["instruction"], p["seed"]) for e in edits for p in e.partials]
    funnel = {"requested": len(subs), "instructions": len(edits), "edited": len(edits)}
    return UnitWork(sid, raw, source, edit_in, src_png, subs, caption, edits, rejected, funnel, jobs)


def edit_unit(st: Stages, u: UnitWork) -> UnitWork:
    """The editor's calls for one source (the only stage that needs the GPU's editing pipeline)."""
    try:
        u.images = st.editor.edit(u.edit_in, [j[1] for j in u.jobs], [j[2] for j in u.jobs]) if u.jobs else []
    except (RuntimeError, ValueError, MemoryError) as err:
        raise Deferred(f"editing {u.sid} failed: {type(err).__name__}: {err}") from err
    return u


def finish_unit(st: Stages, u: UnitWork) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Encode, verify, rewrite: the unit's record and the files to write with it."""
    cfg, sid = st.cfg, u.sid
    level = int(cfg["editor"]["png_compress_level"])
    images = u.images or []
    pngs = {j[0]: png_bytes(im, level) for j, im in zip(u.jobs, images, strict=True)}
    decoded: dict[str, Image.Image] = {j[0]: im for j, im in zip(u.jobs, images, strict=True)}
    k = WorkDir.key(sid)
    names = {eid: f"edits/{k[:2]}/{k}/{eid}.png" for eid in pngs}
    src_name = _blob_name("sources", sid, u.raw)
    blobs = {src_name: u.raw, **{names[eid]: data for eid, data in pngs.items()}}
    rejected, funnel = list(u.rejected), dict(u.funnel)
    alive = list(u.edits)
    checks: dict[str, dict[str, Any]] = {e.id: {} for e in u.edits}

    def drop(rej: list[dict[str, Any]]) -> None:
        nonlocal alive
        rejected.extend(rej)
        gone = {r["edit"] for r in rej}
        alive = [e for e in alive if e.id not in gone]

    if st.verifier is not None and alive:
        measured, rej = st.verifier.check(sid, u.src_png, u.edit_in, alive, pngs, decoded, u.caption)
        for eid, c in measured.items():
            checks[eid]["embedding"] = c
        drop(rej)
    funnel["verify_embedding"] = len(alive)
    vlmm = st.lmms["verify"]
    if cfg["verify"]["lmm"]["enabled"] and vlmm is not None and alive:
        verdicts, rej = lmm_verify(
            alive, pngs, u.src_png, vlmm, cfg["verify"]["lmm"], cfg["prompts"]["verify"]
        )
        for eid, v in verdicts.items():
            checks[eid]["lmm"] = v
        drop(rej)
    funnel["verify_lmm"] = len(alive)
    if cfg["rewrite"]["enabled"]:
        queries, rej = rewrite_queries(
            alive, st.lmms["rewrite"], cfg["rewrite"], cfg["prompts"]["rewrite"], u.src_png
        )
        drop(rej)
    else:
        queries = {e.id: e.instruction for e in alive}
    funnel["rewrite"] = len(alive)
    accepted = {e.id for e in alive}
    record = {
        "source": {
            "id": sid,
            "origin": st.pool.origins.get(sid, sid),
            "blob": src_name,
            "size": list(u.source.size),
            "edit_size": list(u.edit_in.size),
        },
        "source_caption": u.caption,
        "subcategories": u.subs,
        "models": st.models_key,
        "funnel": funnel,
        "edits": [
            {
                **_edit_record(e, names),
                "checks": checks[e.id],
                "query": queries.get(e.id),
                "accepted": e.id in accepted,
            }
            for e in u.edits
        ],
        "rejections": rejected,
    }
    return record, blobs


def process_unit(st: Stages, sid: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """One source through every stage, in this thread."""
    return finish_unit(st, edit_unit(st, plan_unit(st, sid)))


@dataclass(frozen=True)
class EdirWorker:
    """What an engine's worker needs to load the stages (pickled to Ray actors: settings, not models)."""

    cfg: dict[str, Any]
    out: str
    spec: str
    pool_rec: dict[str, Any]
    share: int = 1

    def __call__(self) -> Callable[[list[str]], list[Any]]:
        pool = open_pool(self.spec, self.cfg["sources"])
        st = load_stages(self.cfg, WorkDir(self.out), self.pool_rec, pool, record=False, share=self.share)

        def run(sids: list[str]) -> list[Any]:
            out: list[Any] = []
            for sid in sids:
                try:
                    record, blobs = process_unit(st, sid)
                except Deferred as e:
                    out.append(e)
                    continue
                out.append((record, blobs, st.models))
            return out

        return run


EDIR_NEEDS = Needs(gpus=1.0, cpus=1.0)
"""One editor (and its local VLM, if any) per GPU; one CPU each where there are none."""


# ---------------------------------------------------------------------------------------------- entry points


def run_edir(
    config: Mapping[str, Any],
    out: str | os.PathLike[str],
    *,
    sources: str | None = None,
    shard: tuple[int, int] | None = None,
    limit: int | None = None,
    progress: bool = True,
    editor: Editor | None = None,
    engine: Engine | None = None,
) -> Path:
    """Build (or resume) an EDIR-style benchmark into `out`; returns the dataset directory.

    sources: a source spec (see sources.py), else the config's `sources.default`. limit: the first N sources
    (after near-duplicate removal). shard (i, n): only every n-th source, from the i-th; with n > 1 the work
    is left in `<out>.work/` and the work dir is returned: run `merge_shards(out, n)` when all shards are
    done.
    `editor` replaces the configured one (an already-loaded pipeline, e.g. for benchmarks). `engine` runs the
    units elsewhere (`make_engine("ray")`): its workers load the stages and compute units, this process
    writes them, so the work dir and the dataset are the same as a local run's.
    """
    if engine is not None and engine.name != "local" and editor is not None:
        raise ValueError("a loaded editor cannot be sent to an engine's workers: pass the config's editor")
    # keys sorted, as merge_shards reads them back from the work dir: the same card and manifest either way
    cfg = json.loads(json.dumps(resolve(config), sort_keys=True))
    spec, (i, n), work = start_build(
        cfg, out, sources, shard, source_forms="folder:DIR, hf:NAME[@SPLIT], dataset:PATH[@SPLIT]"
    )
    work.bind(identity(cfg, spec), settings=cfg)
    pool = open_pool(spec, cfg["sources"])
    pool_rec = prepare_pool(work, spec, cfg, pool)
    order = list(pool_rec["sources"])[:limit] if limit is not None else list(pool_rec["sources"])
    mine = shard_slice(order, (i, n))
    todo = [s for s in mine if not work.has_unit(s)]
    shard_label = f" (shard {i}/{n})" if n > 1 else ""
    if todo and engine is not None and engine.name != "local":
        factory = EdirWorker(cfg, str(out), spec, dict(pool_rec), engine.workers(EDIR_NEEDS))

        def commit(result: tuple[dict[str, Any], dict[str, bytes], dict[str, Any]]
                   ) -> tuple[dict[str, Any], dict[str, bytes]]:
            record, blobs, models = result
            work.record_models(models)  # before the unit that cites it
            return record, blobs

        run_units_on(
            engine, factory, work, todo, lambda sid: sid, commit,
            needs=EDIR_NEEDS,
            progress=progress,
            label=f"editing {len(todo)} sources{shard_label} on {engine.name}",
            give_up_after=int(cfg["work"]["give_up_after"]),
            noun="sources",
        )
    elif todo:
        st = load_stages(cfg, work, pool_rec, pool, editor)
        run_units(
            work,
            todo,
            lambda sid: sid,
            lambda u: edit_unit(st, u),
            plan=lambda sid: plan_unit(st, sid),
            finish=lambda u: finish_unit(st, u),
            lookahead=int(cfg["work"]["lookahead"]),
            progress=progress,
            label=f"editing {len(todo)} sources{shard_label}",
            give_up_after=int(cfg["work"]["give_up_after"]),
            noun="sources",
        )
    work.mark_shard((i, n), {"limit": limit, "units": mine})
    if n > 1:
        return work.root
    return export_edir(work, Path(out), cfg, pool_rec, order, limit=limit)


def merge_shards(out: str | os.PathLike[str], n: int) -> Path:
    """Export the union of shards 0..n-1 of the build into `out`: the same dataset a single run writes."""
    out = Path(out)
    work = WorkDir(out)
    cfg = work.identity()["settings"]
    markers = work.collect_shards(n)
    pool_rec = work.read_json("pool.json")
    if pool_rec is None:
        raise FileNotFoundError(f"{work.root / 'pool.json'} is missing: no shard of this build has run")
    done = {u for m in markers for u in m["units"]}
    order = [s for s in pool_rec["sources"] if s in done]
    missing = [s for s in order if not work.has_unit(s)]
    if missing:
        raise FileNotFoundError(
            f"{work.root}: {len(missing)} unit(s) listed by the shards are missing (first "
            f"{missing[0]!r}); copy every shard's work dir here before merging"
        )
    return export_edir(work, out, cfg, pool_rec, order, limit=markers[0].get("limit"))


PIPELINE = register_pipeline(UnitPipeline(
    PipelineInfo(
        name="edir",
        description="a pool of images -> LMM or template instructions -> diffusers edits -> verified queries",
        accepts=("sources", "shard", "merge", "limit", "engine"),
    ),
    resolve,
    run_edir,
    merge_shards,
))

__all__ = ["PIPELINE", "BuildIncomplete", "merge_shards", "prepare_pool", "process_unit",
           "run_edir"]
