"""The pipeline configs that ship with cirbench (cirbench/pipelines/*.yaml), from a checkout or a wheel."""

from __future__ import annotations

from importlib import resources
from typing import Any

from cirbench.builders.core.checks import ConfigError


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
