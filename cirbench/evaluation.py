"""The eval flow: task -> encode (cached) -> exact top-K search -> metrics per category -> result files."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

import cirbench
from cirbench.core.cache import EmbeddingCache, default_cache_dir
from cirbench.core.metrics import parse_metric
from cirbench.core.run import Run
from cirbench.core.scoring import breakdowns, grouped_scores, per_query_values, query_strata
from cirbench.core.types import Item, Role, Task
from cirbench.core.video import expand_corpus
from cirbench.models.base import Encoder, bind_task, check_modalities
from cirbench.models.lazy import load_model
from cirbench.retrieval.distributed import init_from_env, world
from cirbench.retrieval.encode import encode_items
from cirbench.retrieval.search import exact_search, subset_search
from cirbench.tasks.registry import get_task, get_task_spec


@dataclass
class EvalOptions:
    """Settings of one eval that are not part of the task's protocol (recorded in the result too)."""

    batch_size: int = 32
    device: str = "auto"
    """"auto" (CUDA when torch sees a GPU, else CPU; for the model and the search), cpu, cuda, cuda:1, ..."""
    dtype: str | None = None
    top_k: int | None = None
    search_dtype: str = "float32"
    search_backend: str = "torch"
    workers: int | None = None
    use_cache: bool = True
    cache_dir: str | os.PathLike[str] | None = None
    n_bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0
    progress: bool = True
    rerank: str | None = None
    """None, or "soft" (SoFT soft filtering with constraints from `constraints`)."""
    constraints: str | os.PathLike[str] | None = None
    rerank_lambda: float = 0.5
    rerank_mode: str = "soft"
    overwrite: bool = False
    """Compute and replace whatever result the output folder holds. Without it, an identical result there is
    reused (nothing is computed) and a different one is refused."""
    allow_plugins: bool = False
    """Let a `package.module:factory` model name import the user's code (`--allow-plugins`)."""

    def __post_init__(self) -> None:
        """Refuse values that would fail later (or silently do something else), naming the CLI flag."""
        for flag, value, low in (("--batch-size", self.batch_size, 1), ("--top-k", self.top_k, 1),
                                 ("--workers", self.workers, 0), ("--bootstrap", self.n_bootstrap, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(f"{flag} must be an integer >= {low}, not {value!r}")
        if not 0.0 <= float(self.rerank_lambda) <= 1.0:
            raise ValueError(f"--rerank-lambda must be in [0, 1], not {self.rerank_lambda!r}")


def resolve_instruction(encoder: Encoder, task: Task, role: Role) -> str | None:
    """Model's instruction for this task, else the task's default, else the model's generic default."""
    spec_inst = encoder.spec.default_instructions
    return spec_inst.get(f"{task.name}:{role}") or task.metadata.instructions.get(role) or spec_inst.get(role)


def query_items(task: Task) -> tuple[list[Item], list[list[int]]]:
    """All query-side Items (main + alternatives, text template applied) and, per query, their rows."""
    template = task.protocol.text_template
    items: list[Item] = []
    rows: list[list[int]] = []
    for q in task.queries:
        group = []
        for it in (q.item, *q.alt_items):
            text = template.format(text=it.text) if it.text is not None else None
            group.append(len(items))
            items.append(replace(it, text=text))
        rows.append(group)
    return items, rows


def _cache_root(opts: EvalOptions) -> Path:
    return Path(opts.cache_dir) if opts.cache_dir else default_cache_dir()


def _encode(
    encoder: Encoder, items: list[Item], role: Role, instruction: str | None, opts: EvalOptions, label: str
) -> tuple[np.ndarray, dict[str, Any]]:
    cache = None
    if opts.use_cache:
        cache = EmbeddingCache(
            _cache_root(opts), {"model": encoder.fingerprint(), "role": role, "instruction": instruction}
        )
    return encode_items(
        encoder,
        items,
        role=role,
        instruction=instruction,
        cache=cache,
        batch_size=opts.batch_size,
        workers=opts.workers,
        progress=opts.progress,
        description=label,
    )


def _mean_vectors(
    vecs: np.ndarray, rows: list[list[int]], weights: list[list[float]] | None = None
) -> np.ndarray:
    """One vector per group of rows: the (weighted) mean, re-normalised (query phrasings, video frames)."""
    if all(len(r) == 1 for r in rows):
        return vecs[[r[0] for r in rows]]
    out = np.stack(
        [
            np.average(vecs[r], axis=0, weights=None if weights is None else weights[i])
            for i, r in enumerate(rows)
        ]
    )
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def search_task(task: Task, qv: np.ndarray, cv: np.ndarray, k: int, opts: EvalOptions) -> Run:
    """Exact top-k per query within its gallery, reference/exclusions removed per the protocol."""
    from cirbench.core.types import query_exclusions

    pos = task.corpus_positions
    excl = query_exclusions(task)
    relevant = [[pos[c] for c in q.relevant_ids] for q in task.queries]
    nq = len(task.queries)
    indices = np.full((nq, k), -1, dtype=np.int64)
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    first = np.zeros(nq, dtype=np.int64)
    groups: dict[str | None, list[int]] = {}
    for i, q in enumerate(task.queries):
        groups.setdefault(q.gallery, []).append(i)
    for gallery, qidx in groups.items():
        if gallery is None:
            gpos = np.arange(len(task.corpus))
        else:
            assert task.galleries is not None
            gpos = np.asarray(sorted(pos[c] for c in task.galleries[gallery]), dtype=np.int64)
        local = {int(p): j for j, p in enumerate(gpos)}
        res = exact_search(
            qv[qidx],
            cv[gpos],
            k,
            exclude=[[local[p] for p in excl[i] if p in local] for i in qidx],
            relevant=[[local[p] for p in relevant[i] if p in local] for i in qidx],
            dtype=opts.search_dtype,
            device=opts.device,
            backend=opts.search_backend,
            progress=opts.progress,
        )
        kk = res.indices.shape[1]
        mapped = np.where(res.indices >= 0, gpos[np.maximum(res.indices, 0)], -1)
        indices[qidx, :kk] = mapped
        scores[qidx, :kk] = res.scores
        if res.first_relevant_rank is not None:
            first[qidx] = res.first_relevant_rank
    run = Run(
        query_ids=[q.id for q in task.queries],
        corpus_ids=[it.id for it in task.corpus],
        indices=indices,
        scores=scores,
        first_relevant_rank=first if task.has_labels else None,
    )
    with_subset = [i for i, q in enumerate(task.queries) if q.candidate_ids is not None]
    if with_subset:
        sub_k = max(
            [3]
            + [
                parse_metric(m).k or 0
                for m in task.protocol.metrics
                if parse_metric(m).kind == "recall_subset"
            ]
        )
        sub = subset_search(
            qv, cv, [[pos[c] for c in (q.candidate_ids or ())] for q in task.queries], sub_k, exclude=excl
        )
        run.subset_indices, run.subset_scores = sub.indices, sub.scores
    return run


def _hardware(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": device,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    except ImportError:
        pass
    return info


def resolve_eval_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; anything else is kept as given."""
    if device.strip().lower() != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "model"


def default_output(task: Task, model_name: str, rerank: str | None = None) -> Path:
    """`results/<task>/<split>/<protocol>/<dataset revision>/<model>[+rerank-<r>][-limit<N>]`.

    Everything that makes two results incomparable gets its own folder: the protocol variant, the dataset
    revision, a re-ranker and a --limit smoke run, so that none of them lands on another's result.
    """
    revision = safe_name(task.revision or "unversioned")[:40]
    leaf = safe_name(model_name) + (f"+rerank-{safe_name(rerank)}" if rerank else "")
    if task.extra.get("limit") is not None:
        leaf += f"-limit{task.extra['limit']}"
    return Path("results") / safe_name(task.name) / safe_name(task.split) / safe_name(task.protocol.name) / (
        revision
    ) / leaf


class ResultExists(ValueError):
    """The output folder holds a different result; --overwrite replaces it."""


def identity(result: cirbench.Result) -> dict[str, Any]:
    """What must agree for a stored result to stand for a new eval (as mteb's "only-missing" strategy):
    the task and its revision, the model fingerprint, the full protocol as used, the bootstrap settings
    and the cirbench version that computed the numbers."""
    import json

    task_keys = ("name", "split", "revision", "limit", "num_queries", "num_corpus", "has_labels")
    d = {
        "task": {k: result.task.get(k) for k in task_keys},
        "model": result.model.get("fingerprint"),
        "protocol": result.protocol,
        "bootstrap": {k: result.bootstrap.get(k) for k in ("n_resamples", "confidence", "seed")},
        "cirbench_version": result.cirbench_version,
    }
    return dict(json.loads(json.dumps(d, sort_keys=True, default=str)))


def _existing(out: Path, planned: cirbench.Result, overwrite: bool) -> cirbench.Result | None:
    """The stored result when it is the same eval (skip); None when there is none or it may be replaced."""
    from cirbench.core.result import Result
    from cirbench.core.types import DatasetError

    path = out / "result.json"
    if overwrite or not path.exists():
        return None
    try:
        old = Result.read(path)
        old.read_run()  # a result whose run file is missing or not its own cannot stand for this eval
    except DatasetError as e:
        raise ResultExists(f"{path} cannot be reused ({e}); pass --overwrite to replace it") from None
    a, b = identity(old), identity(planned)
    if a == b:
        old.skipped = True
        return old
    differs = [k for k in a if a[k] != b[k]]
    raise ResultExists(
        f"{path} holds a different result (it differs in {', '.join(differs)}); pass --overwrite to "
        "replace it, or choose another --output"
    )


def _dtype_option(opts: EvalOptions, mopts: dict[str, Any]) -> str | None:
    """The one dtype asked for: --dtype or --option dtype=, which must not disagree."""
    from cirbench.models._torch import canonical_dtype

    asked = {src: canonical_dtype(str(v), "float32") for src, v in (("--dtype", opts.dtype),
             ("--option dtype", mopts.get("dtype"))) if v not in (None, "")}
    if len(set(asked.values())) > 1:
        raise ValueError(f"--dtype {asked['--dtype']} and --option dtype={asked['--option dtype']} disagree: "
                         "give the dtype once")
    return next(iter(asked.values()), None)


def evaluate(
    model: str | Encoder,
    task: str | Task,
    *,
    split: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    protocol: str | None = None,
    output: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    options: EvalOptions | None = None,
    model_options: Mapping[str, Any] | None = None,
    task_options: Mapping[str, Any] | None = None,
) -> cirbench.Result:
    """Score `model` on `task` and write result.json + run.parquet (+ a submission file) under `output`.

    `model` is an Encoder or a registry name; `task` a Task or a registry name / native dataset path.
    An identical result already in `output` (same task, revision, model fingerprint, protocol, bootstrap
    and cirbench version) is returned as it is (`Result.skipped`); a different one is replaced only with
    `options.overwrite`.
    """
    from cirbench.core.result import Result
    from cirbench.models._torch import canonical_dtype

    opts = options or EvalOptions()
    device = resolve_eval_device(init_from_env(opts.device))
    if device != opts.device:
        opts = replace(opts, device=device)
    rank = world()[0]
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    if isinstance(task, str):
        task = get_task(
            task, split, data_dir=data_dir, protocol=protocol, limit=limit, **(task_options or {})
        )
    else:
        task.validate()
        task = task.limit(limit)
    mopts = dict(model_options or {})
    dtype = _dtype_option(opts, mopts)
    mopts.pop("dtype", None)
    if dtype is not None:
        mopts["dtype"] = dtype
    if opts.device != "cpu":
        mopts.setdefault("device", opts.device)
    if isinstance(model, str):  # with the cache, a model whose vectors are all cached loads no weights
        encoder = load_model(model, _cache_root(opts) if opts.use_cache else None,
                             allow_plugins=opts.allow_plugins, **mopts)
    else:
        encoder = model
    if dtype is not None and canonical_dtype(encoder.spec.dtype, "float32") != dtype:
        raise ValueError(f"model {encoder.spec.name!r} computes in {encoder.spec.dtype}, so it cannot run "
                         f"in the {dtype} that was asked for; leave --dtype out")
    check_modalities(
        encoder.spec, {"query": task.metadata.query_modality, "corpus": task.metadata.corpus_modality}
    )
    encoder, task = bind_task(encoder, task)
    k = opts.top_k or task.protocol.top_k
    for m in task.protocol.metrics:
        mk = parse_metric(m).k
        if mk is not None and parse_metric(m).kind != "recall_subset" and mk > k:
            raise ValueError(f"metric {m} needs a run of depth {mk}, but --top-k is {k}")

    q_inst = resolve_instruction(encoder, task, "query")
    d_inst = resolve_instruction(encoder, task, "document")
    c_items, c_rows, c_weights = expand_corpus(task)  # video targets: several frames per gallery item
    items, rows = query_items(task)
    out = Path(output) if output is not None else default_output(task, encoder.spec.name, opts.rerank)
    result = Result(  # everything but the scores and the timings is known before any encoding
        task={
            "name": task.name,
            "split": task.split,
            "revision": task.revision,
            "num_queries": len(task.queries),
            "num_corpus": len(task.corpus),
            "limit": task.extra.get("limit"),
            "has_labels": task.has_labels,
            "dataset_dir": task.extra.get("dataset_dir"),
            "version": task.extra.get("version"),
        },
        model={
            **encoder.spec.to_dict(),  # its dtype is the one used: recorded once, not again in options
            "fingerprint": encoder.fingerprint(),
            "options": {k_: str(v) for k_, v in mopts.items() if k_ != "dtype"},
        },
        protocol={
            **task.protocol.to_dict(),
            "instructions": {"query": q_inst, "document": d_inst},
            "search": {
                "top_k": k,
                "dtype": opts.search_dtype,
                "backend": opts.search_backend,
                "tie_break": "score desc, then corpus position asc",
            },
            "query_vector": "mean of main + alternative phrasings"
            if any(len(r) > 1 for r in rows)
            else "single item",
            "corpus_vector": "mean of its frames' vectors"
            if any(len(r) > 1 for r in c_rows)
            else "single item",
            **({"rerank": _rerank_record(opts, k)} if opts.rerank else {}),
        },
        main_metric=task.protocol.main_metric,
        scores={"overall": {}},
        bootstrap={
            "n_resamples": opts.n_bootstrap,
            "confidence": opts.confidence,
            "seed": opts.seed,
            "method": "percentile bootstrap over queries (scipy.stats.bootstrap)"
            + (", resampled within each category" if task.protocol.aggregate == "categories" else ""),
        },
        cirbench_version=cirbench.__version__,
    )
    existing = _existing(out, result, opts.overwrite)  # every rank decides alike: none waits alone
    if existing is not None:
        return existing

    cv_all, c_stats = _encode(encoder, c_items, "document", d_inst, opts, "encoding gallery")
    cv = _mean_vectors(cv_all, c_rows, c_weights)
    qv_all, q_stats = _encode(encoder, items, "query", q_inst, opts, "encoding queries")
    qv = _mean_vectors(qv_all, rows)
    run = search_task(task, qv, cv, k, opts)
    if opts.rerank:
        run = _rerank(run, task, encoder, cv, opts)

    table = run.to_table(task)
    if task.has_labels:
        protocol_d = task.protocol.to_dict()
        values = per_query_values(table, protocol_d)
        groups = breakdowns(table)
        result.scores = grouped_scores(
            values,
            groups,
            n_resamples=opts.n_bootstrap,
            confidence=opts.confidence,
            seed=opts.seed,
            strata=query_strata(protocol_d, groups, len(task.queries)),
        )
    result.encoding = {"document": c_stats, "query": q_stats}
    result.files = {"run": RUN_FILE}
    if rank == 0:  # under torchrun, only rank 0 writes
        writer = _submission_writer(task)
        if writer is not None and task.extra.get("limit") is not None:
            result.files["submission_skipped"] = (
                f"--limit {task.extra['limit']}: {len(task.queries)} of "
                f"{task.extra.get('queries_before_limit', '?')} queries, and a server file needs all of them"
            )
            writer = None
        result.provenance = {
            "started_at": started.isoformat(timespec="seconds"),
            "wall_time_s": round(time.perf_counter() - t0, 3),
            **_hardware(opts.device),
        }
        write_result(result, table, out, lambda: writer(task, run, out) if writer is not None else [])
    return result


RUN_FILE = "run.parquet"


def write_result(result: cirbench.Result, table: Any, out: Path, write_submission: Any) -> None:
    """Write run.parquet, the submission file(s) and, last, result.json, as one unit.

    A result.json already there is removed first, so a crash never leaves an old result.json beside a new
    run.parquet; the new result.json records the SHA-256 of its run.parquet, which every reader checks
    (`Result.read_run`), so a pair from two different evals is refused rather than used.
    """
    import hashlib

    from cirbench.core.run import write_run_table

    out.mkdir(parents=True, exist_ok=True)
    _remove_old_result(out)
    run_path = out / RUN_FILE
    write_run_table(table, run_path)
    result.files["run_sha256"] = hashlib.sha256(run_path.read_bytes()).hexdigest()
    subs = [str(p.relative_to(out)) for p in write_submission()]
    if subs:
        result.files["submission"] = subs
    result.write(out / "result.json")


def _remove_old_result(out: Path) -> None:
    """Remove a result.json being replaced, and the submission files it lists (a --limit run writes
    none, and must not leave the old full run's beside its own result)."""
    import json

    old = out / "result.json"
    try:
        subs = json.loads(old.read_text()).get("files", {}).get("submission", [])
    except (OSError, ValueError, AttributeError):
        subs = []
    old.unlink(missing_ok=True)
    root = out.resolve()
    for name in subs if isinstance(subs, list) else []:
        p = (out / str(name)).resolve()
        if p.parent == root and p.is_file():  # only files of this folder, whatever the old file says
            p.unlink()


def _rerank_record(opts: EvalOptions, depth: int) -> dict[str, Any]:
    """What the protocol records about the re-ranker (known before the run exists)."""
    from cirbench.retrieval.rerank.soft import soft_protocol

    if opts.rerank != "soft":
        raise ValueError(f"unknown reranker {opts.rerank!r}; available: soft")
    if opts.constraints is None:
        raise ValueError("--rerank soft needs --constraints FILE (per-query SoFT constraints)")
    return soft_protocol(lam=opts.rerank_lambda, mode=opts.rerank_mode, depth=depth,
                         constraints=opts.constraints)


def _rerank(run: Run, task: Task, encoder: Encoder, cv: np.ndarray, opts: EvalOptions) -> Run:
    """The run re-ranked by SoFT soft filtering (the protocol record comes from `_rerank_record`)."""
    from cirbench.retrieval.rerank.soft import constraint_scores, load_constraints, rerank_run

    assert opts.constraints is not None
    constraints = load_constraints(opts.constraints)
    reward, penalty = constraint_scores(
        encoder, constraints, run.query_ids, cv, run.indices, progress=opts.progress
    )
    pos = task.corpus_positions
    new = rerank_run(
        run,
        reward,
        penalty,
        lam=opts.rerank_lambda,
        mode=opts.rerank_mode,
        relevant=[[pos[c] for c in q.relevant_ids] for q in task.queries],
    )
    run.indices, run.scores, run.first_relevant_rank = new.indices, new.scores, new.first_relevant_rank
    return run


def _submission_writer(task: Task) -> Any:
    """The test server's file writer, for a registered task's unlabelled split."""
    if task.has_labels:
        return None
    try:
        return get_task_spec(task.name).submission
    except KeyError:
        return None
