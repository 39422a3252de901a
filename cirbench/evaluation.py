"""The eval flow: load the task -> a Retriever makes a Run -> Rerankers make new Runs -> score -> write.

`Dense(encoder)` (cirbench.retrieval.dense) is the retriever for `--model`; other retrievers and the
rerankers come from their registries (cirbench.retrieval.base). Everything that is known before any work
(task, model, protocol as used, bootstrap settings) is recorded first, so an identical stored result is
reused and a different one refused before a single vector is computed.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import cirbench
from cirbench.core.cache import default_cache_dir
from cirbench.core.metrics import parse_metric
from cirbench.core.run import Run
from cirbench.core.score_cache import cached_scores
from cirbench.core.scoring import breakdowns, grouped_scores, per_query_values, query_strata
from cirbench.core.types import Task
from cirbench.models.base import Encoder
from cirbench.models.lazy import load_model
from cirbench.retrieval.base import TAIL_RULE, Context, Reranker, Retriever
from cirbench.retrieval.dense import Dense, resolve_instruction
from cirbench.retrieval.distributed import init_from_env, world
from cirbench.tasks.registry import get_task, get_task_spec

__all__ = ["EvalOptions", "evaluate", "resolve_instruction"]


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


def _hardware(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": device,
    }
    try:  # from the package metadata: a warm eval (every vector cached) never imports torch
        info["torch"] = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return info
    if not device.startswith("cpu"):  # the GPU of a GPU run (torch is loaded for it anyway)
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    return info


def resolve_eval_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; anything else is kept as given.

    A Linux machine without NVIDIA device nodes (nor WSL's /dev/dxg, nor ROCm's /dev/kfd) has no GPU for
    torch to see: that is answered without importing torch (2 s, more than a warm re-eval takes)."""
    if device.strip().lower() != "auto":
        return device
    gpu_nodes = (any(Path("/dev").glob("nvidia[0-9]*")) or Path("/proc/driver/nvidia").exists()
                 or Path("/dev/dxg").exists() or Path("/dev/kfd").exists())
    if "torch" not in sys.modules and platform.system() == "Linux" and not gpu_nodes:
        return "cpu"
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
        "retrieval": {k: result.retrieval.get(k) for k in ("retriever", "rerankers")},
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
    model: str | Encoder | None,
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
    retriever: Retriever | None = None,
    rerankers: Sequence[Reranker] = (),
) -> cirbench.Result:
    """Score `model` (or `retriever`) on `task` and write result.json + run.parquet (+ a submission file).

    `model` is an Encoder or a registry name, evaluated as `Dense(model)`; pass `model=None` and a
    `retriever` for anything else. `rerankers` reorder the run in turn. `task` is a Task or a registry
    name / native dataset path. An identical result already in `output` (same task, revision, retrieval,
    protocol, bootstrap and cirbench version) is returned as it is (`Result.skipped`); a different one is
    replaced only with `options.overwrite`.
    """
    opts = options or EvalOptions()
    device = resolve_eval_device(init_from_env(opts.device))
    if device != opts.device:
        opts = replace(opts, device=device)
    started, t0 = _dt.datetime.now(_dt.timezone.utc), time.perf_counter()
    task = _load_task(task, split, data_dir, protocol, limit, task_options)
    retriever, mopts = _retriever(model, retriever, opts, model_options)
    rerankers = [*getattr(retriever, "rerankers", ()), *rerankers]  # a method's own chain (XR) runs first
    task = retriever.prepare(task)
    ctx = _context(task, opts)
    out = Path(output) if output is not None else default_output(
        task, _run_name(retriever, mopts), "+".join(r.spec.name for r in rerankers) or None)
    result = _planned_result(task, retriever, rerankers, ctx, opts, mopts)
    existing = _existing(out, result, opts.overwrite)  # every rank decides alike: none waits alone
    if existing is not None:
        return existing

    run = retriever.retrieve(task, ctx)
    for reranker in rerankers:
        run = reranker.rerank(task, run, ctx, retriever)

    table = run.to_table(task)
    if task.has_labels:
        result.scores = _score(table, task, opts)
    result.encoding = dict(getattr(retriever, "encoding", {}))
    result.retrieval["cost"] = ctx.cost.to_dict()
    result.files = {"run": RUN_FILE}
    if world()[0] == 0:  # under torchrun, only rank 0 writes
        result.provenance = {"started_at": started.isoformat(timespec="seconds"),
                             "wall_time_s": round(time.perf_counter() - t0, 3), **_hardware(opts.device)}
        _write(result, task, run, table, out)
    return result


def _load_task(task: str | Task, split: str | None, data_dir: str | os.PathLike[str] | None,
               protocol: str | None, limit: int | None, task_options: Mapping[str, Any] | None) -> Task:
    if isinstance(task, str):
        return get_task(task, split, data_dir=data_dir, protocol=protocol, limit=limit,
                        **(task_options or {}))
    task.validate()
    return task.limit(limit)


def _retriever(model: str | Encoder | None, retriever: Retriever | None, opts: EvalOptions,
               model_options: Mapping[str, Any] | None) -> tuple[Retriever, dict[str, Any]]:
    """The retriever to run and the model options as used (for `--model`: `Dense` of that model)."""
    from cirbench.models._torch import canonical_dtype

    mopts = dict(model_options or {})
    if retriever is not None:
        if model is not None or mopts:
            raise ValueError("give either a model (--model) or a retriever (--retriever), not both")
        return retriever, mopts
    if model is None:
        raise ValueError("nothing to evaluate: give a model (--model) or a retriever (--retriever)")
    dtype = _dtype_option(opts, mopts)
    mopts.pop("dtype", None)
    if dtype is not None:
        mopts["dtype"] = dtype
    if opts.device != "cpu":
        mopts.setdefault("device", opts.device)
    if isinstance(model, str):  # with the cache, a model whose vectors are all cached loads no weights
        cache_root = None
        if opts.use_cache:
            cache_root = Path(opts.cache_dir) if opts.cache_dir else default_cache_dir()
        encoder = load_model(model, cache_root, allow_plugins=opts.allow_plugins, **mopts)
    else:
        encoder = model
    if dtype is not None and canonical_dtype(encoder.spec.dtype, "float32") != dtype:
        raise ValueError(f"model {encoder.spec.name!r} computes in {encoder.spec.dtype}, so it cannot run "
                         f"in the {dtype} that was asked for; leave --dtype out")
    return Dense(encoder), mopts


def _context(task: Task, opts: EvalOptions) -> Context:
    k = opts.top_k or task.protocol.top_k
    for m in task.protocol.metrics:
        mk = parse_metric(m).k
        if mk is not None and parse_metric(m).kind != "recall_subset" and mk > k:
            raise ValueError(f"metric {m} needs a run of depth {mk}, but --top-k is {k}")
    return Context(top_k=k, device=opts.device, batch_size=opts.batch_size, workers=opts.workers,
                   use_cache=opts.use_cache, cache_dir=Path(opts.cache_dir) if opts.cache_dir else None,
                   progress=opts.progress, search_dtype=opts.search_dtype, search_backend=opts.search_backend,
                   seed=opts.seed)


def _run_name(retriever: Retriever, mopts: Mapping[str, Any]) -> str:
    """The results folder's leaf: the model for `--model`, else the retriever (and its model, if one)."""
    name = str(_model_record(retriever, mopts)["name"])
    return name if retriever.spec.name in ("dense", name) else f"{retriever.spec.name}-{name}"


def _model_record(retriever: Retriever, mopts: Mapping[str, Any]) -> dict[str, Any]:
    """result.model: the encoder of a single-model retriever, else the retriever itself."""
    encoder = getattr(retriever, "encoder", None)
    if encoder is not None:
        return {**encoder.spec.to_dict(),  # its dtype is the one used: recorded once, not again in options
                "fingerprint": encoder.fingerprint(),
                "options": {k: str(v) for k, v in mopts.items() if k != "dtype"}}
    return {"name": retriever.spec.name, "id": None, "fingerprint": retriever.fingerprint(), "options": {}}


def _planned_result(task: Task, retriever: Retriever, rerankers: Sequence[Reranker], ctx: Context,
                    opts: EvalOptions, mopts: Mapping[str, Any]) -> cirbench.Result:
    """Everything but the scores and the timings, known before any work."""
    from cirbench.core.result import Result

    chain = [r.describe(task, ctx) for r in rerankers]
    return Result(
        task={"name": task.name, "split": task.split, "revision": task.revision,
              "num_queries": len(task.queries), "num_corpus": len(task.corpus),
              "limit": task.extra.get("limit"), "has_labels": task.has_labels,
              "dataset_dir": task.extra.get("dataset_dir"), "version": task.extra.get("version")},
        model=_model_record(retriever, mopts),
        protocol={**task.protocol.to_dict(), **retriever.describe(task, ctx),
                  **({"rerank": chain[0] if len(chain) == 1 else chain} if chain else {})},
        main_metric=task.protocol.main_metric,
        scores={"overall": {}},
        bootstrap={"n_resamples": opts.n_bootstrap, "confidence": opts.confidence, "seed": opts.seed,
                   "method": "percentile bootstrap over queries (scipy.stats.bootstrap)"
                   + (", resampled within each category" if task.protocol.aggregate == "categories" else "")},
        retrieval={"retriever": {"name": retriever.spec.name, "fingerprint": retriever.fingerprint()},
                   "rerankers": [{"name": r.spec.name, "fingerprint": r.fingerprint()} for r in rerankers],
                   **({"tail_rule": TAIL_RULE} if rerankers else {})},
        cirbench_version=cirbench.__version__,
    )


def _score(table: Any, task: Task, opts: EvalOptions) -> Any:
    """Scores and intervals; with the cache on, a re-eval of the same run reads them back (score_cache)."""
    protocol_d = task.protocol.to_dict()
    values = per_query_values(table, protocol_d)
    groups = breakdowns(table, protocol_d)
    strata = query_strata(protocol_d, groups, len(task.queries))
    params: dict[str, Any] = {"n_resamples": opts.n_bootstrap, "confidence": opts.confidence,
                              "seed": opts.seed}
    root = (Path(opts.cache_dir) if opts.cache_dir else default_cache_dir()) if opts.use_cache else None
    return cached_scores(root, values, groups, strata, params,
                         lambda: grouped_scores(values, groups, strata=strata, **params))


def _write(result: cirbench.Result, task: Task, run: Run, table: Any, out: Path) -> None:
    """The result files, with the test server's file for a full unlabelled split."""
    writer = _submission_writer(task)
    if writer is not None and task.extra.get("limit") is not None:
        result.files["submission_skipped"] = (
            f"--limit {task.extra['limit']}: {len(task.queries)} of "
            f"{task.extra.get('queries_before_limit', '?')} queries, and a server file needs all of them")
        writer = None
    write_result(result, table, out, lambda: writer(task, run, out) if writer is not None else [])


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


def _submission_writer(task: Task) -> Any:
    """The test server's file writer, for a registered task's unlabelled split."""
    if task.has_labels:
        return None
    try:
        return get_task_spec(task.name).submission
    except KeyError:
        return None
