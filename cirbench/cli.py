"""The `cirbench` command. Thin: parse options, call the Python API, print.

Heavy imports (torch costs seconds) stay inside the commands.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

USER_ERRORS = (ValueError, KeyError, OSError, ImportError)
"""What a user's mistake raises (bad files, names, options, a missing optional package): one line, exit 2.
DatasetError and the registries' errors are ValueError / KeyError. CIRBENCH_DEBUG=1 shows the traceback."""


class _Group(TyperGroup):
    """The app's group: every command's user error ends as one escaped `error:` line and exit code 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            if os.environ.get("CIRBENCH_DEBUG"):
                raise
            _print_error(e)
            raise typer.Exit(code=2) from None


app = typer.Typer(
    cls=_Group,
    help="Build and evaluate Composed Image Retrieval benchmarks.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _console(stderr: bool = False) -> Console:
    """A fresh Console per command, so the width follows $COLUMNS at call time (and in tests).

    Piped or captured output is never wrapped (soft wrap); tables go through `_show`, which never truncates.
    """
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, soft_wrap=True)


def _message(e: BaseException) -> str:
    """The text of an error: a KeyError's own message (not its repr), an OSError with its file."""
    if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str):
        return e.args[0]
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.strerror}: {os.fspath(e.filename)!r}"
    return str(e) or type(e).__name__


def _print_error(e: BaseException) -> None:
    """File names and messages are the user's text, never markup: `[old]` must print as written."""
    _console(stderr=True).print(f"[bold red]error:[/bold red] {escape(_message(e))}", soft_wrap=True)


def _say(text: str) -> None:
    """Print plain text (paths, names) without interpreting brackets as markup."""
    _console().print(escape(text), soft_wrap=True)


def _show(renderable: Any) -> None:
    """Print a table whole: on a terminal at its width; piped (`cirbench models | grep openclip`) at the
    table's natural width, so no cell is cut to `…` and no line is broken."""
    console = _console()
    if not console.is_terminal:
        natural = Console(width=100_000).measure(renderable).maximum
        console = Console(width=max(natural, console.width), soft_wrap=True)
    console.print(renderable)


def _print_json(obj: Any) -> None:
    """Machine-readable output for scripts: JSON on stdout, nothing else."""
    import json

    from cirbench.core.result import _finite  # JSON has no NaN: null instead

    typer.echo(json.dumps(_finite(obj), indent=2, ensure_ascii=False, default=str, allow_nan=False))


DEFAULT_MODEL = "cirbench-fusion"
DEFAULT_TASK = "synthetic-mini"


def _kv(pairs: list[str] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs or []:
        if "=" not in p or not p.split("=", 1)[0].strip():
            raise typer.BadParameter(f"{what} must look like name=value, got {p!r}", param_hint=what)
        k, v = p.split("=", 1)
        if k.strip() in out:
            raise typer.BadParameter(f"{what} {k.strip()} is given twice", param_hint=what)
        out[k.strip()] = _parse_value(v.strip())
    return out


def _one(values: list[str] | None, default: str, flag: str) -> str:
    """A single-valued option that typer would silently let a repetition overwrite."""
    if not values:
        return default
    if len(values) > 1:
        raise typer.BadParameter(f"{flag} is given {len(values)} times ({', '.join(values)}); cirbench eval "
                                 "scores one model on one task per run", param_hint=flag)
    return values[0]


def _choice(value: str | None, choices: tuple[str, ...], flag: str) -> None:
    from cirbench.core.options import did_you_mean

    if value is not None and value not in choices:
        hint = did_you_mean(value, choices)
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}{hint}", param_hint=flag)


def _check_device(device: str) -> None:
    """A device that cannot be used is refused before any task is read or any item encoded."""
    from cirbench.retrieval.distributed import check_device

    try:
        check_device(device)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--device") from None


def _parse_value(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


@app.command("eval")
def eval_cmd(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help=f"alias, family:target or module:factory ({DEFAULT_MODEL})"),
    ] = None,
    task: Annotated[
        list[str] | None,
        typer.Option("--task", "-t", help=f"registered task or native dataset dir (default {DEFAULT_TASK})"),
    ] = None,
    split: Annotated[str | None, typer.Option(help="split (default: the task's)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="dataset root (else $CIRBENCH_DATA/<task>)")] = None,
    protocol: Annotated[str | None, typer.Option(help="named protocol variant (default: official)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="output directory")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="encoding batch size")] = 32,
    device: Annotated[
        str, typer.Option(help="auto (CUDA when present, else CPU; model and search), cpu, cuda, cuda:1, mps")
    ] = "auto",
    dtype: Annotated[str | None, typer.Option(help="model dtype: float32, bfloat16, float16")] = None,
    top_k: Annotated[int | None, typer.Option(min=1, help="run depth (default: the protocol's)")] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="only the first N queries (a smoke run; recorded)")
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="do not read or write the embedding cache")
    ] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="cache root (default $CIRBENCH_CACHE)")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="image decode threads (0: none)")] = None,
    search_dtype: Annotated[str, typer.Option(help="float32 (exact) or bfloat16")] = "float32",
    search_backend: Annotated[str, typer.Option(help="torch, faiss or auto")] = "torch",
    option: Annotated[list[str] | None, typer.Option("--option", help="model option name=value")] = None,
    task_option: Annotated[
        list[str] | None, typer.Option("--task-option", help="task option name=value")
    ] = None,
    trust_remote_code: Annotated[bool, typer.Option(help="allow a model's own remote code to run")] = False,
    allow_plugins: Annotated[
        bool, typer.Option("--allow-plugins", help="allow --model package.module:factory (imports your code)")
    ] = False,
    bootstrap: Annotated[int, typer.Option(min=0, help="bootstrap resamples for the 95% CIs")] = 1000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    retriever: Annotated[
        str | None, typer.Option(help="a registered retriever instead of --model (cirbench retrievers)")
    ] = None,
    retriever_option: Annotated[
        list[str] | None, typer.Option("--retriever-option", help="retriever option name=value")
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="a retrieval method instead of --model: a shipped name or a config "
                                      "file (cirbench methods)")
    ] = None,
    method_option: Annotated[
        list[str] | None,
        typer.Option("--method-option", help="override a config field: components.rewriter.model=gpt-4o"),
    ] = None,
    prompt_file: Annotated[
        list[str] | None,
        typer.Option("--prompt-file", help="STAGE=PATH: send this file as the stage's prompt (caption, "
                                           "rewrite); its SHA-256 is recorded"),
    ] = None,
    rerank: Annotated[
        list[str] | None, typer.Option("--rerank", help="a reranker, e.g. soft; repeat for a chain")
    ] = None,
    rerank_option: Annotated[
        list[str] | None,
        typer.Option("--rerank-option",
                     help="reranker option [reranker.]name=value, e.g. constraints=c.json"),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="recompute and replace the result in the output folder (else an identical one is "
            "reused and a different one refused)",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
    plots: Annotated[
        bool, typer.Option("--plots", help="also draw the charts (per category, heatmap per subcategory)")
    ] = False,
) -> None:
    """Score a model on a task: prints the table and writes result.json, run.parquet (+ submission)."""
    from cirbench.display import result_table
    from cirbench.evaluation import EvalOptions, evaluate
    from cirbench.retrieval.base import SEARCH_BACKENDS, SEARCH_DTYPES
    from cirbench.retrieval.registry import get_retriever

    if method is not None and (retriever is not None or model):
        raise typer.BadParameter("give one of --model, --retriever and --method", param_hint="--method")
    if (method_option or prompt_file) and method is None:
        raise typer.BadParameter("--method-option and --prompt-file need --method NAME|CONFIG.yaml",
                                 param_hint="--method-option")
    direct = retriever is not None or method is not None
    model_name = None if direct and not model else _one(model, DEFAULT_MODEL, "--model")
    task_name = _one(task, DEFAULT_TASK, "--task")
    _choice(search_dtype, SEARCH_DTYPES, "--search-dtype")
    _choice(search_backend, SEARCH_BACKENDS, "--search-backend")
    if retriever_option and retriever is None:
        raise typer.BadParameter("--retriever-option needs --retriever NAME", param_hint="--retriever-option")
    if output is not None and output.exists() and not output.is_dir():
        raise typer.BadParameter(f"{str(output)!r} is a file, not a directory", param_hint="--output")
    _check_device(device)
    mopts = _kv(option, "--option")
    topts = _kv(task_option, "--task-option")
    if trust_remote_code:
        mopts["trust_remote_code"] = True
    opts = EvalOptions(
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        top_k=top_k,
        use_cache=not no_cache,
        cache_dir=cache_dir,
        workers=workers,
        search_dtype=search_dtype,
        search_backend=search_backend,
        n_bootstrap=bootstrap,
        seed=seed,
        progress=not quiet,
        overwrite=overwrite,
        allow_plugins=allow_plugins,
    )
    rerankers = _rerankers(rerank or [], rerank_option or [])
    built = get_retriever(retriever, **_kv(retriever_option, "--retriever-option")) if retriever else None
    if method is not None:
        from cirbench.evaluation import resolve_eval_device
        from cirbench.retrieval.methods.config import load_method

        prompts = {k: str(v) for k, v in _kv(prompt_file, "--prompt-file").items()}
        built = load_method(method, _kv(method_option, "--method-option"), prompts,
                            device=resolve_eval_device(device))
    result = evaluate(
        model_name,
        task_name,
        split=split,
        data_dir=data_dir,
        protocol=protocol,
        output=output,
        limit=limit,
        options=opts,
        model_options=mopts,
        task_options=topts,
        retriever=built,
        rerankers=rerankers,
    )
    from cirbench.retrieval.distributed import world

    if world()[0] != 0:  # under torchrun, rank 0 reports
        return
    from rich.markup import escape

    for role, stats in result.encoding.items():
        for bad in stats.get("cache_parts_rejected", []):
            _console().print(
                f"[yellow]warning:[/yellow] cache part {escape(bad['part'])} ({role} vectors) was not "
                f"served: {escape(bad['reason'])}; it was set aside as *.bad and its items were encoded again"
            )
    if result.overall:
        _show(result_table(result))
    assert result.path is not None
    if result.skipped:
        _say(f"an identical result is already at {result.path}: nothing was computed "
             "(--overwrite recomputes it)")
    else:
        _say(f"wrote {result.path} and {result.path.parent / result.files['run']}")
    for sub in result.files.get("submission", []):
        _say(f"submission file: {result.path.parent / sub}")
    if "submission_skipped" in result.files:
        _say(f"no submission file: {result.files['submission_skipped']}")
    if plots and result.overall:
        from cirbench.plots import write_result_plots

        for chart in write_result_plots([result], result.path.parent):
            _say(f"chart: {chart}")


def _rerankers(names: list[str], options: list[str]) -> list[Any]:
    """The reranker chain: `--rerank a --rerank b` with `--rerank-option [a.]name=value` for each.

    A bare `name=value` goes to the only reranker; with a chain each option names its reranker."""
    from cirbench.core.options import did_you_mean
    from cirbench.retrieval.registry import get_reranker

    if options and not names:
        raise typer.BadParameter("--rerank-option needs --rerank NAME", param_hint="--rerank-option")
    per: dict[str, list[str]] = {n: [] for n in names}
    for opt in options:
        head, _, rest = opt.partition("=")
        owner, dot, key = head.rpartition(".")
        if not dot:
            if len(names) > 1:
                raise typer.BadParameter(f"{opt!r}: with several rerankers, name the one it is for "
                                         f"({', '.join(n + '.' + head for n in names)})",
                                         param_hint="--rerank-option")
            owner, key = names[0], head
        if owner not in per:
            raise typer.BadParameter(f"{opt!r} is for {owner!r}, which is not in the chain "
                                     f"({', '.join(names)}){did_you_mean(owner, names)}",
                                     param_hint="--rerank-option")
        per[owner].append(f"{key}={rest}" if _ else key)
    return [get_reranker(n, **_kv(per[n], "--rerank-option")) for n in names]


JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")]


@app.command("tasks")
def tasks_cmd(
    name: Annotated[str | None, typer.Argument(help="a task: show its splits, protocols and options")] = None,
    json_: JsonFlag = False,
) -> None:
    """List the registered tasks, or describe one (splits, protocols and options with their defaults)."""
    from rich.table import Table

    from cirbench.tasks.registry import get_task_spec, list_tasks

    if json_:
        specs = [get_task_spec(name)] if name is not None else list_tasks()
        _print_json([
            {"name": s.name, "splits": list(s.splits), "default_split": s.default_split,
             "protocols": list(s.protocols), "size": s.size, "query_modality": s.metadata.query_modality,
             "corpus_modality": s.metadata.corpus_modality, "metrics": list(s.metrics),
             "license": s.metadata.license, "options": dict(s.options), "family": s.family,
             "description": s.metadata.description}
            for s in specs
        ])
        return
    if name is not None:
        _describe_task(get_task_spec(name))
        return
    table = Table(title="cirbench tasks")
    for col in ("name", "splits", "protocols", "size", "query → corpus", "metrics", "licence"):
        table.add_column(col)
    for spec in list_tasks():
        md = spec.metadata
        table.add_row(*map(escape, (
            md.name,
            ", ".join(spec.splits),
            ", ".join(spec.protocols),
            spec.size,
            f"{md.query_modality} → {md.corpus_modality}",
            ", ".join(spec.metrics),
            md.license,
        )))
    _show(table)
    _say("`cirbench tasks NAME` shows a task's options (--task-option name=value) and expected layout.")


def _describe_task(spec: Any) -> None:
    from rich.table import Table

    md = spec.metadata
    c = _console()
    c.print(f"[bold]{escape(md.name)}[/bold]: {escape(md.description)}", soft_wrap=True)
    c.print(f"source: {escape(md.source)}; licence: {escape(md.license)}", soft_wrap=True)
    if spec.size:
        c.print(f"size: {escape(spec.size)}", soft_wrap=True)
    c.print("splits: " + escape(", ".join(s + (" (default)" if s == spec.default_split else "")
                                          for s in spec.splits)), soft_wrap=True)
    protocols = ", ".join(p + (" (default)" if i == 0 else "") for i, p in enumerate(spec.protocols))
    c.print("protocols (--protocol): " + escape(protocols), soft_wrap=True)
    if spec.metrics:
        c.print(f"metrics: {escape(', '.join(spec.metrics))}", soft_wrap=True)
    if spec.options:
        table = Table(title=f"options of {md.name} (--task-option name=value)")
        table.add_column("option")
        table.add_column("what it does (default)")
        for opt, help_ in spec.options.items():
            table.add_row(escape(opt), escape(help_))
        c.print(table)
    else:
        c.print("options: none")
    if spec.layout:
        c.print("expected layout:\n" + escape(spec.layout), soft_wrap=True)


@app.command("models")
def models_cmd(
    name: Annotated[str | None, typer.Argument(help="an alias or a family: list the --option names it "
                                                     "accepts")] = None,
    json_: JsonFlag = False,
) -> None:
    """List the registered models (aliases) and model families, or the options one of them accepts."""
    from rich.table import Table

    from cirbench.models.registry import _FAMILIES, list_models, model_options

    if name is not None:
        try:
            options = model_options(name)
        except KeyError as e:
            raise typer.BadParameter(str(e.args[0]), param_hint="NAME") from None
        rows = [{"name": o.name, "type": o.kind, "choices": list(o.choices), "default": o.default,
                 "help": o.help} for o in options or ()]
        if json_:
            _print_json({"model": name, "options": rows if options is not None else None})
            return
        if options is None:
            _say(f"{name} is a plugin: its factory's signature is what it accepts")
            return
        table = Table(title=f"--option names of {escape(name)}")
        for col in ("option", "type", "default", "what it does"):
            table.add_column(col)
        for r in rows:
            kind = f"{r['type']}: {', '.join(r['choices'])}" if r["choices"] else str(r["type"])
            default = "–" if r["default"] is None else str(r["default"])
            table.add_row(*map(escape, (str(r["name"]), kind, default, str(r["help"]))))
        _show(table)
        return
    if json_:
        _print_json({"models": [s.to_dict() for s in list_models()], "families": sorted(_FAMILIES)})
        return
    table = Table(title="cirbench models")
    for col in ("name", "id", "revision", "dim", "params", "modalities", "dtype", "licence"):
        table.add_column(col)
    for s in list_models():
        params = f"{s.parameters / 1e6:.0f}M" if s.parameters else "–"
        table.add_row(*map(escape, (
            s.name,
            s.id,
            str(s.revision or "–"),
            str(s.dim or "–"),
            params,
            ", ".join(s.modalities),
            s.dtype,
            s.license,
        )))
    _show(table)
    _say(
        "families: "
        + ", ".join(f"{f}:<id or path>" for f in sorted(_FAMILIES))
        + "; entry points in group 'cirbench.models'; package.module:factory with --allow-plugins"
    )


@app.command("retrievers")
def retrievers_cmd(json_: JsonFlag = False) -> None:
    """List the registered retrievers (--retriever) and rerankers (--rerank) with their options."""
    from rich.table import Table

    from cirbench.retrieval.registry import list_rerankers, list_retrievers

    kinds = (("retriever", list_retrievers()), ("reranker", list_rerankers()))
    if json_:
        _print_json({f"{kind}s": [{"name": s.name, "description": s.description, "options": dict(s.options),
                                   "required": list(s.required)} for s in specs] for kind, specs in kinds})
        return
    table = Table(title="cirbench retrievers and rerankers")
    for col in ("kind", "name", "description", "options"):
        table.add_column(col)
    for kind, specs in kinds:
        for s in specs:
            opts = "; ".join(f"{k}: {v}" for k, v in s.options.items())
            table.add_row(*map(escape, (kind, s.name, s.description, opts)))
    _show(table)
    _say("--model NAME is the dense retriever of that model; --retriever NAME --retriever-option k=v for the "
         "others; --rerank NAME --rerank-option [NAME.]k=v, repeatable for a chain")


@app.command("methods")
def methods_cmd(json_: JsonFlag = False) -> None:
    """List the shipped retrieval methods (--method NAME) with their components and per-query cost."""
    from rich.table import Table

    from cirbench.retrieval.methods.config import describe_config, read_method, shipped_methods

    rows = [describe_config(read_method(name)) for name in shipped_methods()]
    if json_:
        _print_json({"methods": rows})
        return
    table = Table(title="cirbench methods")
    for col in ("name", "method", "components", "per query", "per gallery item"):
        table.add_column(col)
    for r in rows:
        comps = "; ".join(f"{k}: {v}" for k, v in r["components"].items())
        table.add_row(*map(escape, (r["name"], r["description"], comps, r["cost"]["per_query"],
                                    r["cost"]["per_gallery_item"])))
    _show(table)
    _say("cirbench eval --method NAME|CONFIG.yaml --task T [--method-option field.path=value] "
         "[--prompt-file STAGE=PATH]; the configs are in methods/ (shipped in cirbench/methods/)")


@app.command("compare")
def compare_cmd(
    a: Annotated[Path, typer.Argument(help="result.json (or its directory) of the baseline")],
    b: Annotated[Path, typer.Argument(help="result.json (or its directory) to compare")],
    force: Annotated[bool, typer.Option(help="compare even if tasks or protocols differ")] = False,
    method: Annotated[str, typer.Option(help="bootstrap or permutation")] = "bootstrap",
    resamples: Annotated[int, typer.Option(min=1, help="resamples")] = 10000,
    seed: Annotated[int, typer.Option()] = 0,
    json_: JsonFlag = False,
) -> None:
    """Per-metric difference B - A with a paired significance test over the common queries."""
    from rich.table import Table

    from cirbench.compare import compare_results
    from cirbench.core.result import Result

    _choice(method, ("bootstrap", "permutation"), "--method")
    ra, rb = Result.read(a), Result.read(b)
    tests, info = compare_results(ra, rb, force=force, method=method, n_resamples=resamples, seed=seed)
    if json_:
        from dataclasses import asdict

        _print_json({
            "a": {"model": ra.model.get("name"), "path": str(ra.path)},
            "b": {"model": rb.model.get("name"), "path": str(rb.path)},
            "task": ra.task.get("name"), "split": ra.task.get("split"), **info,
            "tests": [asdict(t) for t in tests],
        })
        return
    for p in info["problems"]:
        _console().print(f"[yellow]warning (forced):[/yellow] {escape(str(p))}")
    table = Table(
        title=escape(f"{rb.model.get('name')} − {ra.model.get('name')} on {ra.task['name']}/"
                     f"{ra.task['split']} ({info['n_common']} paired queries, {method})")
    )
    for col in ("metric", "A", "B", "B − A", "95% CI", "p", ""):
        table.add_column(col, justify="right")
    for t in tests:
        sig = "[green]significant[/green]" if t.p_value < 0.05 else "[dim]tie[/dim]"
        table.add_row(
            escape(t.metric),
            f"{100 * t.mean_a:.2f}",
            f"{100 * t.mean_b:.2f}",
            f"{100 * t.diff:+.2f}",
            escape(f"[{100 * t.ci_low:+.2f}, {100 * t.ci_high:+.2f}]"),
            f"{t.p_value:.4f}",
            sig,
        )
    _show(table)


@app.command("results")
def results_cmd(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="result.json files or folders, searched recursively")
    ] = None,
    task: Annotated[
        list[str] | None, typer.Option("--task", "-t", help="only this task (repeatable)")
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="only this model (repeatable)")
    ] = None,
    metric: Annotated[list[str] | None, typer.Option(help="only this metric (repeatable)")] = None,
    kind: Annotated[
        list[str] | None, typer.Option(help="only this group kind: overall, category, subcategory, ...")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="print the long rows as JSON (for scripts)")] = False,
) -> None:
    """Every number of the result files as one table (the DataFrame of cirbench.load_results)."""
    from rich.table import Table

    from cirbench.leaderboard.collect import lower_is_better
    from cirbench.results import load_results

    frame = load_results(paths or [Path("results")], tasks=task, models=model, metrics=metric,
                         group_kinds=kind)
    if json_:
        _print_json(frame.astype(object).where(frame.notna(), None).to_dict(orient="records"))
        return
    keys = ["task", "split", "protocol", "model", "group_kind", "group", "path"]
    metrics = list(dict.fromkeys(frame["metric"]))
    table = Table(title=f"{frame['path'].nunique()} result file(s); values in % (MedR: rank)")
    for col in (*keys[:-1], *metrics, "result"):
        table.add_column(col, justify="right" if col in metrics else "left")
    for key, rows in frame.groupby(keys, sort=False, dropna=False):
        values = dict(zip(rows["metric"], rows["value"]))
        cells = []
        for m in metrics:
            v = values.get(m)
            if v is None or v != v:
                cells.append("–")
            else:
                cells.append(f"{v:.1f}" if lower_is_better(m) else f"{100 * v:.2f}")
        *labels, path = ("–" if k is None or k != k else str(k) for k in key)
        table.add_row(*labels, *cells, path)
    _show(table)


@app.command("inspect")
def inspect_cmd(
    result: Annotated[Path, typer.Argument(help="result.json (or its folder) to inspect")],
    vs: Annotated[
        Path | None, typer.Option("--vs", help="a second result: the queries where one succeeds, one fails")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="output folder (default: beside the result)")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="where the task's images are (dataset folder or benchmark root)")
    ] = None,
    top: Annotated[int, typer.Option(help="ranked items shown per query")] = 5,
    success_at: Annotated[int, typer.Option(help="a query succeeds when a target is within this rank")] = 1,
    max_queries: Annotated[
        int, typer.Option(help="sample this many queries (seeded) from a large task")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    budget_mb: Annotated[float, typer.Option(help="size budget of the embedded thumbnails (MB)")] = 16.0,
    failures_only: Annotated[bool, typer.Option("--failures-only", help="only queries that fail")] = False,
    category: Annotated[str | None, typer.Option(help="only this category")] = None,
    subcategory: Annotated[str | None, typer.Option(help="only this subcategory")] = None,
    rank_min: Annotated[
        int | None, typer.Option(help="only queries whose first target is at this rank or deeper")
    ] = None,
    rank_max: Annotated[
        int | None, typer.Option(help="only queries whose first target is at this rank or better")
    ] = None,
    search: Annotated[str, typer.Option(help="only queries whose text, id or category contains this")] = "",
    sheet_rows: Annotated[int, typer.Option(help="queries on the PNG sheet (worst first)")] = 8,
    force: Annotated[bool, typer.Option(help="--vs even if tasks or protocols differ")] = False,
) -> None:
    """Per-query error analysis: an HTML page (filters, thumbnails) and a PNG sheet of the worst cases."""
    from cirbench.core.result import Result
    from cirbench.inspection import Filters, inspect_results

    ra = Result.read(result)
    rb = Result.read(vs) if vs is not None else None
    done = inspect_results(
        ra, rb, out=out, data_dir=data_dir, top=top, success_at=success_at, max_queries=max_queries,
        seed=seed, budget=int(budget_mb * 1e6), sheet_rows=sheet_rows, force=force,
        filters=Filters(failures_only=failures_only, category=category, subcategory=subcategory,
                        rank_min=rank_min, rank_max=rank_max, search=search),
    )
    sampled = f" (a seeded sample of {done.n_total})" if len(done.cases) < done.n_total else ""
    _say(f"{len(done.cases)} queries{sampled}: wrote {done.page} and {done.sheet}")


def _parse_shard(shard: str | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise typer.BadParameter(f"--shard must look like i/n (e.g. 0/4), got {shard!r}",
                                 param_hint="--shard") from None
    if not 0 <= i < n:
        raise typer.BadParameter(f"--shard {shard}: need 0 <= i < n", param_hint="--shard")
    return i, n


@app.command("build")
def build_cmd(
    pipeline: Annotated[
        Path, typer.Argument(help="pipeline config (pipelines/*.yaml) or a shipped one's name: synthetic, "
                                  "edir, soft-refine-cirr, soft-refine-fashioniq")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="output dataset directory")],
    sources: Annotated[str | None, typer.Option(help="image folder, hub dataset or benchmark")] = None,
    shard: Annotated[str | None, typer.Option(help="i/n: build shard i of n (merge with --merge n)")] = None,
    merge: Annotated[int | None, typer.Option(min=1, help="merge n finished shards into the dataset")] = None,
    preset: Annotated[str | None, typer.Option(help="preset in the config (e.g. mini, full)")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="override the config's seed")] = None,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="a quick build: N queries (synthetic, soft-refine) or N sources (edir)"),
    ] = None,
    engine: Annotated[
        str, typer.Option(help="where the work units run: local (this process) or ray (a Ray cluster)")
    ] = "local",
    ray_address: Annotated[
        str | None, typer.Option(help="the Ray cluster for --engine ray (else a local one is started)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Build a benchmark from a pipeline config into the native dataset format (resumable)."""
    from cirbench.builders import check_config, read_pipeline
    from cirbench.builders.core.pipeline import BuildRequest, UnsupportedOption
    from cirbench.engine import ENGINES

    _choice(engine, ENGINES, "--engine")
    where, config = read_pipeline(pipeline)
    shard_t = _parse_shard(shard)
    if merge is not None and shard_t is not None:
        raise typer.BadParameter("--merge and --shard are separate steps: build each shard, then merge")
    try:  # typos fail now, naming the file; an option the pipeline does not use is refused
        chosen = check_config(where, config, preset=preset, seed=seed, limit=limit, sources=sources,
                              shard=shard_t, merge=merge is not None,
                              engine=engine != "local" or ray_address is not None)
    except UnsupportedOption as e:
        raise typer.BadParameter(str(e)) from None
    from cirbench.core.dataset import check_replaceable

    check_replaceable(out)  # never build for minutes and then find that `out` is the user's folder
    if merge is not None:
        if engine != "local" or ray_address is not None:
            raise typer.BadParameter("--merge only exports finished shards: --engine and --ray-address apply "
                                     "to building them", param_hint="--engine")
        _say(f"wrote {chosen.merge(out, merge)}")
        return
    with _engine(engine, ray_address) as runner:
        request = BuildRequest(sources=sources, shard=shard_t, preset=preset, seed=seed, limit=limit,
                               progress=not quiet, engine=runner)
        path = chosen.run(config, out, request)
    _say(f"wrote {path}")


@contextlib.contextmanager
def _engine(name: str, address: str | None) -> Iterator[Any]:
    """The engine of `--engine NAME [--ray-address ADDR]` (None for local: today's code path), closed after
    the command (a Ray instance cirbench started is stopped, on an error or Ctrl-C too)."""
    from cirbench.engine import make_engine

    if name == "local" and address is None:
        yield None
        return
    runner = make_engine(name, address=address)
    try:
        yield runner
    finally:
        runner.close()


@app.command("train")
def train_cmd(
    dataset: Annotated[Path, typer.Argument(help="a built dataset with a train split")],
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write the head (.safetensors)")],
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    seed: Annotated[int, typer.Option()] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train the default model's fusion head on a built benchmark's train split."""
    from cirbench.train import train_fusion_head

    kwargs: dict[str, Any] = {"seed": seed, "progress": not quiet}
    if epochs is not None:
        kwargs["epochs"] = epochs
    stats = train_fusion_head(dataset, out, **kwargs)
    _say(f"wrote {out}: {stats}")


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="where results and the chart go")] = Path("demo"),
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N queries")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Build synthetic-mini, score the default model and the baselines, print and plot per category."""
    from cirbench.demo import run_demo

    run_demo(out, limit=limit, progress=not quiet, console=_console())


@app.command("leaderboard")
def leaderboard_cmd(
    results: Annotated[
        list[Path], typer.Argument(help="result.json files or directories (searched recursively)")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("leaderboards"),
    reported: Annotated[Path | None, typer.Option(help="citation file of published numbers (CSV)")] = None,
    resamples: Annotated[int, typer.Option(min=1, help="paired-bootstrap resamples for ties")] = 10000,
) -> None:
    """Publish tables (Markdown, CSV, parquet) and an HTML page with plots from result files."""
    from cirbench.leaderboard import build_leaderboard

    def warn(path: Path, why: str) -> None:
        _console(stderr=True).print(f"[yellow]warning:[/yellow] skipped {escape(str(path))}: {escape(why)}",
                                    soft_wrap=True)

    files = build_leaderboard(results, out, reported=reported, n_resamples=resamples, on_skip=warn)
    _say(f"wrote {len(files)} files under {out}/ (open {out / 'index.html'})")


@app.command("push")
def push_cmd(
    dataset: Annotated[Path, typer.Argument(help="a built dataset folder (cirbench.json + splits)")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="the Hub dataset repo, e.g. user/my-cir-bench")],
    private: Annotated[bool, typer.Option(help="create the repo as private")] = False,
    revision: Annotated[str | None, typer.Option(help="branch to commit to (default: main)")] = None,
    token: Annotated[
        str | None, typer.Option(help="Hub token (default: $HF_TOKEN or `hf auth login`)", show_default=False)
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="Hub endpoint (default: $HF_ENDPOINT or the Hub)")
    ] = None,
    message: Annotated[str | None, typer.Option(help="commit message")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="check and list the files; upload nothing")
    ] = False,
) -> None:
    """Upload a built dataset to the Hugging Face Hub: checked card, image column shown as pictures."""
    from cirbench.hub import push

    plan = push(dataset, repo_id, token=token, private=private, revision=revision, endpoint=endpoint,
                commit_message=message, dry_run=dry_run)
    for w in plan.warnings:
        _console().print(f"[yellow]warning:[/yellow] {escape(str(w))}")
    if dry_run:
        for p in plan.paths:
            _console().print(p)
        _say(f"dry run: {len(plan.paths)} files would go to datasets/{repo_id}")
    else:
        _say(f"uploaded {len(plan.paths)} files to datasets/{repo_id}: {plan.commit_url}")


@app.command("card")
def card_cmd(
    task: Annotated[str | None, typer.Argument(help="task or family (omit with --all)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="directory of the cards")] = Path("data_cards"),
    data_dir: Annotated[Path | None, typer.Option(help="dataset root, to count sizes and categories")] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="regenerate the card of every registered benchmark")
    ] = False,
) -> None:
    """Write a benchmark's data card from the task itself (hand-written notes in the card are kept)."""
    from cirbench.cards import write_all_cards, write_card

    if all_:
        paths = write_all_cards(out)
    elif task is None:
        raise typer.BadParameter("name a task or a family, or pass --all", param_hint="TASK")
    else:
        paths = [write_card(task, out, data_dir=data_dir)]
    for p in paths:
        _say(f"wrote {p}")


@app.command("validate-submission")
def validate_submission_cmd(
    file: Annotated[Path, typer.Argument(help="the submission file")],
    task: Annotated[str, typer.Option("--task", "-t", help="cirr or circo")],
    data_dir: Annotated[
        Path | None, typer.Option(help="dataset root, to check ids against the split")
    ] = None,
) -> None:
    """Check a test-server submission file before upload; names every problem."""
    from cirbench.submission import validate_submission

    problems = validate_submission(file, task, data_dir=data_dir)
    if problems:
        for p in problems:
            _console().print(f"[red]✗[/red] {escape(str(p))}", soft_wrap=True)
        raise typer.Exit(code=1)
    _console().print(f"[green]✓[/green] {escape(str(file))} is a valid {escape(task)} submission",
                     soft_wrap=True)


def main() -> None:  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
