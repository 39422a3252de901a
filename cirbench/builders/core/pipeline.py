"""The Pipeline interface and the registry of build pipelines by name (`pipeline:` in a config file).

A pipeline turns a config into a native dataset: `resolve` checks the config the way the build will read it
(so a typo fails before minutes of work), `run` builds (or, for shard i of n, builds a share of the work
units), `merge` exports the union of n finished shards. Each shipped pipeline module calls
`register_pipeline` at import; `cirbench.builders.registry` imports the shipped ones and looks them up.
What a pipeline accepts is data (`PipelineInfo.accepts`), so the CLI refuses an option a pipeline would
ignore instead of silently dropping it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from cirbench.engine.base import Engine

BuildOption = Literal["sources", "shard", "merge", "preset", "seed", "limit", "engine"]


@dataclass(frozen=True)
class PipelineInfo:
    name: str
    """The value of `pipeline:` in a config."""
    description: str
    accepts: tuple[BuildOption, ...]
    """The build options it uses; `shard`, `merge` and `engine` only where the work is a set of units."""
    not_sharded_because: str = ""
    """Why a pipeline without `shard` cannot be split (said when someone asks it to)."""


@dataclass(frozen=True)
class BuildRequest:
    """The options of one build, as `cirbench build` or the Python API gives them (None: not given)."""

    sources: str | None = None
    shard: tuple[int, int] | None = None
    preset: str | None = None
    seed: int | None = None
    limit: int | None = None
    progress: bool = True
    engine: Engine | None = None
    """Where the units run (`--engine ray`); None: in this process, as always."""

    def given(self) -> tuple[BuildOption, ...]:
        names: tuple[BuildOption, ...] = ("sources", "shard", "preset", "seed", "limit", "engine")
        return tuple(n for n in names if getattr(self, n) is not None)


@runtime_checkable
class Pipeline(Protocol):
    @property
    def info(self) -> PipelineInfo: ...

    def resolve(self, config: Mapping[str, Any], request: BuildRequest) -> None:
        """Check `config` with these options as the build will (ValueError, KeyError, TypeError: the key)."""

    def run(self, config: Mapping[str, Any], out: str | os.PathLike[str], request: BuildRequest) -> Path:
        """Build into `out`; returns the dataset directory (for shard i/n with n > 1: the work directory)."""

    def merge(self, out: str | os.PathLike[str], n: int) -> Path:
        """Export shards 0..n-1 of the build of `out` into `out`: the dataset one unsharded run writes."""


class UnsupportedOption(ValueError):
    """A build option the pipeline does not use (refused, never silently ignored)."""


def check_request(info: PipelineInfo, request: BuildRequest, *, merge: bool = False,
                  engine: bool = False) -> None:
    """Refuse every option given that `info` does not accept, naming the pipeline and what it does accept
    (`merge`, `engine`: those options are given, before the merge runs or the engine starts)."""
    extra: tuple[BuildOption, ...] = (*(("merge",) if merge else ()), *(("engine",) if engine else ()))
    for option in dict.fromkeys((*request.given(), *extra)):
        if option not in info.accepts:
            raise refusal(info, option)


def refusal(info: PipelineInfo, option: BuildOption) -> UnsupportedOption:
    """The error for `--option` given to a pipeline that does not take it."""
    why = info.not_sharded_because if option in ("shard", "merge", "engine") else ""
    accepted = ", ".join(f"--{a}" for a in info.accepts) or "no options"
    return UnsupportedOption(f"--{option} does not apply to the {info.name} pipeline"
                             f"{': ' + why if why else ''} (it takes {accepted})")


class UnitBuild(Protocol):
    def __call__(self, config: Mapping[str, Any], out: str | os.PathLike[str], *, sources: str | None,
                 shard: tuple[int, int] | None, limit: int | None, progress: bool) -> Path: ...


@dataclass(frozen=True)
class UnitPipeline:
    """A pipeline whose work is a set of resumable units (cirbench.builders.core.workdir): its config
    resolver, its build (which runs shard i/n of the units) and its merge of n finished shards."""

    info: PipelineInfo
    resolve_config: Callable[[Mapping[str, Any]], object]
    build: UnitBuild
    merge_shards: Callable[[str | os.PathLike[str], int], Path]

    def resolve(self, config: Mapping[str, Any], request: BuildRequest) -> None:
        check_request(self.info, request)
        self.resolve_config(config)

    def run(self, config: Mapping[str, Any], out: str | os.PathLike[str], request: BuildRequest) -> Path:
        check_request(self.info, request)
        # only a pipeline that accepts `engine` gets the keyword (check_request refused it for the others)
        build: Any = self.build
        more = {"engine": request.engine} if request.engine is not None else {}
        return build(config, out, sources=request.sources, shard=request.shard, limit=request.limit,
                     progress=request.progress, **more)

    def merge(self, out: str | os.PathLike[str], n: int) -> Path:
        return self.merge_shards(out, n)


_PIPELINES: dict[str, Pipeline] = {}


def register_pipeline(pipeline: Pipeline) -> Pipeline:
    name = pipeline.info.name
    if name in _PIPELINES and _PIPELINES[name] is not pipeline:
        raise ValueError(f"pipeline {name!r} is already registered")
    _PIPELINES[name] = pipeline
    return pipeline


__all__ = [
    "BuildOption",
    "BuildRequest",
    "Pipeline",
    "PipelineInfo",
    "UnitPipeline",
    "UnsupportedOption",
    "check_request",
    "refusal",
    "register_pipeline",
]
