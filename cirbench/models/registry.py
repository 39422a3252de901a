"""The model registry: aliases with metadata, model families addressed as `family:id-or-path`, and plugins.

Names resolve in this order:
1. a registered alias (`cirbench models` lists them), e.g. `random`, `clip-b32`;
2. `family:target`, e.g. `precomputed:vectors.parquet`, `hf-clip:/path/to/dir`, `open_clip:ViT-B-32/openai`;
3. `package.module:factory`, a user plugin: `factory(**options)` returns an Encoder;
4. an entry point in the `cirbench.models` group whose name matches.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from cirbench.models.base import Encoder, ModelSpec

Factory = Callable[..., Encoder]


@dataclass(frozen=True)
class ModelEntry:
    spec: ModelSpec
    factory: Factory
    """factory(spec, **options) -> Encoder; options include device, dtype, trust_remote_code."""


_MODELS: dict[str, ModelEntry] = {}
_FAMILIES: dict[str, Callable[..., Encoder]] = {}
"""family name -> loader(target: str, **options) -> Encoder."""


def register_model(spec: ModelSpec, factory: Factory) -> ModelSpec:
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    _MODELS[spec.name] = ModelEntry(spec, factory)
    return spec


def register_family(name: str, loader: Callable[..., Encoder]) -> None:
    _FAMILIES[name] = loader


def list_models() -> list[ModelSpec]:
    _import_builtin()
    return [_MODELS[k].spec for k in sorted(_MODELS)]


def get_model_spec(name: str) -> ModelSpec | None:
    _import_builtin()
    entry = _MODELS.get(name)
    return entry.spec if entry else None


def get_model(name: str, **options: Any) -> Encoder:
    """Instantiate an Encoder by alias, `family:target`, `package.module:factory` or entry point."""
    _import_builtin()
    if name in _MODELS:
        entry = _MODELS[name]
        return entry.factory(entry.spec, **options)
    if ":" in name:
        family, target = name.split(":", 1)
        if family in _FAMILIES:
            return _FAMILIES[family](target, **options)
        if "." in family or family.isidentifier():
            try:
                module = importlib.import_module(family)
            except ImportError as e:
                raise KeyError(
                    f"unknown model {name!r}: no family {family!r} and module {family!r} "
                    f"cannot be imported ({e}); families: {sorted(_FAMILIES)}"
                ) from e
            factory = getattr(module, target, None)
            if factory is None:
                raise KeyError(f"plugin module {family!r} has no attribute {target!r}")
            return _checked(factory(**options), name)
    for ep in entry_points(group="cirbench.models"):
        if ep.name == name:
            return _checked(ep.load()(**options), name)
    raise KeyError(
        f"unknown model {name!r}; aliases: {sorted(_MODELS)}; families: "
        f"{sorted(f + ':...' for f in _FAMILIES)}; or package.module:factory"
    )


def _checked(encoder: Any, name: str) -> Encoder:
    if not isinstance(encoder, Encoder):
        raise TypeError(
            f"plugin {name!r} returned {type(encoder).__name__}, which is not an Encoder "
            "(needs .spec, .fingerprint() and .encode(batch, role=..., instruction=...))"
        )
    return encoder


def _import_builtin() -> None:
    import cirbench.models  # noqa: F401  (registers the built-in models)
