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
from importlib import resources
from pathlib import Path
from typing import Any

from cirbench.builders.core.pipeline import (
    BuildRequest,
    Pipeline,
    UnsupportedOption,
    check_request,
    get_pipeline,
    list_pipelines,
)

CODE_OPTIONS = ("trust_remote_code", "allow_pickle")
"""Model and LMM options that would run code from a model's repository: the user's call, not a file's."""


class ConfigError(ValueError):
    """A pipeline config that cannot be used; the message names the file (when known) and the key."""


def shipped_pipelines() -> dict[str, Any]:
    """name -> packaged config (a Traversable), e.g. "synthetic" -> cirbench/pipelines/synthetic.yaml."""
    folder = resources.files("cirbench").joinpath("pipelines")
    return {p.name.removesuffix(".yaml"): p for p in folder.iterdir() if p.name.endswith(".yaml")}


def shipped_pipeline_text(name: str) -> str:
    """The text of a packaged pipeline config; works from a checkout and from an installed wheel."""
    shipped = shipped_pipelines()
    if name not in shipped:
        raise ConfigError(f"no pipeline config named {name!r} ships with cirbench; shipped: "
                          f"{', '.join(sorted(shipped))}")
    return str(shipped[name].read_text(encoding="utf-8"))


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
    try:
        return get_pipeline(str(config.get("pipeline")))
    except KeyError as e:
        raise ConfigError(f"{where}: {e.args[0]} (field 'pipeline')") from None


def check_config(where: str, config: Mapping[str, Any], *, preset: str | None = None,
                 seed: int | None = None, limit: int | None = None, sources: str | None = None,
                 shard: tuple[int, int] | None = None, merge: bool = False) -> Pipeline:
    """Resolve the config the way its pipeline will, with these options, so a typo fails now, naming the file
    and the key; returns the pipeline. An option the pipeline does not use is refused too."""
    pipeline = pipeline_of(where, config)
    request = BuildRequest(sources=sources, shard=shard, preset=preset, seed=seed, limit=limit)
    check_request(pipeline.info, request, merge=merge)  # UnsupportedOption: the user's flags, not the file
    try:
        pipeline.resolve(config, request)
    except UnsupportedOption:
        raise
    except (ValueError, KeyError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise ConfigError(f"{where}: {str(msg).removeprefix('config: ')}") from None
    return pipeline


def check_config_model(ref: Any, options: Any, field: str) -> None:
    """A model named by a config: an alias, `family:target` or an entry point, with safe options."""
    from cirbench.models.registry import model_kind

    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"{field} must name a model (an alias or family:target), not {ref!r}")
    try:
        kind, _ = model_kind(ref, allow_plugins=True)
    except KeyError as e:
        raise ConfigError(f"{field}: {e.args[0]}") from None
    if kind == "plugin":
        raise ConfigError(f"{field} is {ref!r}, a Python import path: a config file cannot make cirbench "
                          "import code. Name a model alias or family:target (`cirbench models`), or install "
                          "your model as an entry point in the group 'cirbench.models'")
    section = field.rsplit(".", 1)[0]
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(f"{section}.options must be a mapping, not {type(options).__name__}")
    _no_code_options(options or {}, f"{section}.options")


def check_config_lmms(cfg: Mapping[str, Any]) -> None:
    """The local LMM backend loads a model too: its section may not turn on remote code either."""
    _no_code_options(dict((cfg.get("lmm") or {}).get("local") or {}), "lmm.local")
    for stage, section in dict(cfg.get("lmm_overrides") or {}).items():
        if isinstance(section, Mapping):
            _no_code_options(dict(section.get("local") or {}), f"lmm_overrides.{stage}.local")


def _no_code_options(options: Mapping[str, Any], field: str) -> None:
    bad = [k for k in CODE_OPTIONS if k in options and options[k] not in (False, None, "false", "False", 0)]
    if bad:
        raise ConfigError(f"{field}.{bad[0]} cannot be set in a config file: it lets a model repository run "
                          "code, which only the user may allow (on the command line of cirbench eval, or "
                          "in the Python API)")


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
