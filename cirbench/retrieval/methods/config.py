"""Method configs: a YAML file naming a registered retrieval method and its options (`--method`).

    method: cirevl            # a registered retriever (cirbench retrievers); never an import path
    options: {encoder: clip-l14, lmm_model: gpt-4o-mini, ...}

Shipped configs live in cirbench/methods/ (linked from the repository's methods/); `--method NAME` finds
one by name, `--method path.yaml` reads a file. A config is read with `yaml.safe_load` and can only name
registered methods and their declared options, so it can never make cirbench import or run code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cirbench.core.types import DatasetError
from cirbench.retrieval.base import Retriever
from cirbench.retrieval.registry import get_retriever

KEYS = ("method", "options")


@dataclass(frozen=True)
class MethodConfig:
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    description: str = ""


def shipped_methods() -> dict[str, Any]:
    """name -> the packaged config file (works from a checkout and from an installed wheel)."""
    root = resources.files("cirbench") / "methods"
    return {p.name.removesuffix(".yaml"): p for p in root.iterdir() if p.name.endswith(".yaml")}


def read_method(name_or_path: str | os.PathLike[str]) -> MethodConfig:
    import yaml

    p = Path(name_or_path)
    if p.is_file():
        where, text = str(p), p.read_text(encoding="utf-8")
    else:
        from cirbench.core.options import did_you_mean

        shipped = shipped_methods()
        stem = p.name.removesuffix(".yaml")
        if stem not in shipped:
            raise KeyError(f"no method config {str(name_or_path)!r}{did_you_mean(stem, shipped)}; shipped: "
                           f"{', '.join(sorted(shipped))} (or give a .yaml path)")
        where, text = f"cirbench/methods/{stem}.yaml", shipped[stem].read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DatasetError(f"not valid YAML: {str(e).splitlines()[0]}", file=where) from None
    if not isinstance(data, dict) or not isinstance(data.get("method"), str):
        raise DatasetError("a method config is a mapping with a `method:` name", file=where, field="method")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise DatasetError(f"unknown key(s) {unknown}; a method config has {list(KEYS)}", file=where,
                           field=unknown[0])
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise DatasetError("`options:` must be a mapping", file=where, field="options")
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    about = first.lstrip("# ") if first.startswith("#") else ""
    return MethodConfig(data["method"], dict(options), where, about)


def load_method(name_or_path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> Retriever:
    """The Retriever a method config describes, with `overrides` (from `--method-option`) on top."""
    cfg = read_method(name_or_path)
    return get_retriever(cfg.method, **{**cfg.options, **(overrides or {})})
