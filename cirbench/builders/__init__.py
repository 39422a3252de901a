"""Build flows: stages that turn sources into a native cirbench dataset.

This module holds what every pipeline shares before any work starts: finding a pipeline config (a path, or
the name of one shipped inside the package, `cirbench/pipelines/*.yaml`), reading it, and the rules that
keep a config file from running code. A config names models by alias, `family:target` or installed entry
point only: never `package.module:factory` (that imports code), and never `trust_remote_code` or
`allow_pickle` (those run code from a model repository). Nothing here imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cirbench.builders.core.checks import (
    CODE_OPTIONS,
    ConfigError,
    check_config_lmms,
    check_config_model,
)
from cirbench.builders.core.pipeline import BuildRequest, Pipeline, UnsupportedOption, check_request
from cirbench.builders.core.shipped import shipped_pipeline_text, shipped_pipelines


def read_pipeline(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """(where it came from, the parsed config) for a config path or the name of a shipped config.

    `pipelines/synthetic.yaml`, `synthetic.yaml` and `synthetic` all find the shipped config when no such
    file exists here, so the README's commands work from an installed wheel too.
    """
    import yaml

    p = Path(path)
    if p.is_file():
        where, text = str(p), _read(p)
    else:
        stem = p.name.removesuffix(".yaml").removesuffix(".yml")
        shipped = shipped_pipelines()
        if stem not in shipped:
            from cirbench.core.options import did_you_mean

            raise ConfigError(f"pipeline config {str(p)!r} does not exist{did_you_mean(stem, shipped)}; "
                              f"the shipped ones are {', '.join(sorted(shipped))} (cirbench build NAME)")
        where, text = f"cirbench/pipelines/{stem}.yaml", shipped_pipeline_text(stem)
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: a pipeline config is a YAML mapping with a 'pipeline' key, found "
                          f"{type(config).__name__}")
    kind = config.get("pipeline")
    if not isinstance(kind, str):
        from cirbench.builders.registry import list_pipelines

        raise ConfigError(f"{where}: field 'pipeline' must name a pipeline, not {kind!r}; known: "
                          f"{', '.join(p.info.name for p in list_pipelines())}")
    pipeline_of(where, config)
    return where, config


def _read(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a UTF-8 text file ({e})") from None


def pipeline_of(where: str, config: Mapping[str, Any]) -> Pipeline:
    """The registered pipeline a config names in its `pipeline` field (ConfigError naming the file)."""
    from cirbench.builders.registry import get_pipeline

    try:
        return get_pipeline(str(config.get("pipeline")))
    except KeyError as e:
        raise ConfigError(f"{where}: {e.args[0]} (field 'pipeline')") from None


def check_config(where: str, config: Mapping[str, Any], *, preset: str | None = None,
                 seed: int | None = None, limit: int | None = None, sources: str | None = None,
                 shard: tuple[int, int] | None = None, merge: bool = False, engine: bool = False) -> Pipeline:
    """Resolve the config the way its pipeline will, with these options, so a typo fails now, naming the file
    and the key; returns the pipeline. An option the pipeline does not use is refused too."""
    pipeline = pipeline_of(where, config)
    request = BuildRequest(sources=sources, shard=shard, preset=preset, seed=seed, limit=limit)
    # UnsupportedOption: the user's flags, not the file
    check_request(pipeline.info, request, merge=merge, engine=engine)
    try:
        pipeline.resolve(config, request)
    except UnsupportedOption:
        raise
    except (ValueError, KeyError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise ConfigError(f"{where}: {str(msg).removeprefix('config: ')}") from None
    return pipeline


__all__ = [
    "CODE_OPTIONS",
    "ConfigError",
    "check_config",
    "check_config_lmms",
    "check_config_model",
    "pipeline_of",
    "read_pipeline",
    "shipped_pipeline_text",
    "shipped_pipelines",
]
