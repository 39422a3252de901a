"""The model registry: aliases with metadata, model families addressed as `family:id-or-path`, and plugins.

Names resolve in this order:
1. a registered alias (`cirbench models` lists them), e.g. `random`, `clip-b32`;
2. `family:target`, e.g. `precomputed:vectors.parquet`, `hf-clip:/path/to/dir`, `open_clip:ViT-B-32/openai`;
3. an entry point in the `cirbench.models` group whose name matches (installed on purpose: allowed);
4. `package.module:factory`, a user plugin, only with `allow_plugins=True` (`--allow-plugins`):
   `factory(**options)` must return an Encoder. A config file or a dataset can never ask for it.

Every alias and family registers with its option table (`cirbench.core.options.Option`s): `get_model`
parses the options through it, so a misspelt or mistyped option is refused with a suggestion before the
family's code runs, and the family's factory receives typed values. One factory signature serves aliases
and families alike: `factory(spec, target, **options)`, with the alias's spec and no target, or no spec
and the family's target.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from cirbench.core.options import OptionTable, did_you_mean, parse_options
from cirbench.models.base import Encoder, ModelSpec

Factory = Callable[..., Encoder]
"""factory(spec: ModelSpec | None, target: str | None, **options) -> Encoder, options already parsed."""


@dataclass(frozen=True)
class ModelEntry:
    spec: ModelSpec
    factory: Factory
    options: OptionTable


@dataclass(frozen=True)
class FamilyEntry:
    name: str
    factory: Factory
    options: OptionTable


_MODELS: dict[str, ModelEntry] = {}
_FAMILIES: dict[str, FamilyEntry] = {}


def register_model(spec: ModelSpec, factory: Factory, *, options: OptionTable) -> ModelSpec:
    """Register an alias: `factory(spec, None, **options)` builds it; `options` is what it accepts."""
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    _MODELS[spec.name] = ModelEntry(spec, factory, tuple(options))
    return spec


def register_family(name: str, factory: Factory, *, options: OptionTable) -> None:
    """Register `name:target`: `factory(None, target, **options)` builds it; `options` is what it accepts."""
    _FAMILIES[name] = FamilyEntry(name, factory, tuple(options))


def model_options(name: str) -> OptionTable | None:
    """The option table of an alias, a family (`hf-clip` or `hf-clip:target`); None for a plugin or an
    entry point (their code declares nothing). An unknown name raises KeyError with a suggestion."""
    _import_builtin()
    if name in _FAMILIES:
        return _FAMILIES[name].options
    kind, key = model_kind(name, allow_plugins=True)
    if kind == "alias":
        return _MODELS[key].options
    if kind == "family":
        return _FAMILIES[key].options
    return None


def list_models() -> list[ModelSpec]:
    _import_builtin()
    return [_MODELS[k].spec for k in sorted(_MODELS)]


def get_model_spec(name: str) -> ModelSpec | None:
    _import_builtin()
    entry = _MODELS.get(name)
    return entry.spec if entry else None


def get_model(name: str, *, allow_plugins: bool = False, **options: Any) -> Encoder:
    """Instantiate an Encoder by alias, `family:target`, entry point or (opt-in) `package.module:factory`.

    `package.module:factory` imports and runs the user's code, so it is refused unless the user asks for
    it: `allow_plugins=True` here, `--allow-plugins` on the command line. A config file or a dataset never
    sets it (the build pipelines call this without it). Entry points in the group `cirbench.models` are
    allowed: installing a package that declares one is the user's opt-in.
    """
    _import_builtin()
    kind, key = model_kind(name, allow_plugins=allow_plugins)
    if kind == "alias":
        entry = _MODELS[key]
        return entry.factory(entry.spec, None, **parse_options(f"model {entry.spec.name!r}", options,
                                                               entry.options))
    if kind == "family":
        target = name.split(":", 1)[1]
        fam = _FAMILIES[key]
        return fam.factory(None, target, **parse_options(f"model family {fam.name!r}", options, fam.options))
    if kind == "entry_point":
        ep = next(ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name)
        return _checked(ep.load(), name, options)
    module_name, attr = name.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise KeyError(f"plugin {name!r}: module {module_name!r} cannot be imported ({e})") from e
    factory = getattr(module, attr, None)
    if factory is None:
        raise KeyError(f"plugin {name!r}: module {module_name!r} has no attribute {attr!r}")
    return _checked(factory, name, options)


ENTRY_POINT_GROUP = "cirbench.models"
HUB_FAMILY_HINTS = (
    ("siglip", "hf-clip"), ("clip", "hf-clip"), ("gme", "gme"), ("blip2", "blip2"), ("blip-2", "blip2"),
    ("e5-v", "e5v"), ("vlm2vec", "vlm2vec"), ("rzen", "rzen"), ("sentence-transformers", "st"),
    ("minilm", "st"), ("open_clip", "open_clip"), ("laion", "open_clip"),
)
"""Substrings of a hub id and the family that loads such models (for the suggestion on a bare hub id)."""


def model_kind(name: str, *, allow_plugins: bool = False) -> tuple[str, str]:
    """("alias" | "family" | "entry_point" | "plugin", key) for a model name, without loading anything.

    Unknown names and plugins that were not allowed raise KeyError with a suggestion; a config checker
    calls this to refuse a bad model reference before a build starts.
    """
    _import_builtin()
    if name in _MODELS:
        return "alias", name
    lowered = {k.lower(): k for k in _MODELS}
    if name.lower() in lowered:
        return "alias", lowered[name.lower()]
    if any(ep.name == name for ep in entry_points(group=ENTRY_POINT_GROUP)):
        return "entry_point", name
    if ":" in name:
        family, target = name.split(":", 1)
        if family in _FAMILIES:
            return "family", family
        if all(part.isidentifier() for part in family.split(".")) and target.isidentifier():
            if allow_plugins:
                return "plugin", name
            raise KeyError(
                f"model {name!r} would import and run Python code (module {family!r}, factory {target!r}); "
                "cirbench runs plugin code only when you ask for it: add --allow-plugins (Python API: "
                "allow_plugins=True), or install the plugin as an entry point in the group "
                f"{ENTRY_POINT_GROUP!r}. Model families are: {', '.join(sorted(_FAMILIES))}"
                + did_you_mean(family, _FAMILIES))
        raise KeyError(f"unknown model family {family!r} in {name!r}{did_you_mean(family, _FAMILIES)}; "
                       f"families: {', '.join(f + ':...' for f in sorted(_FAMILIES))}")
    raise KeyError(_unknown_name(name))


def _unknown_name(name: str) -> str:
    msg = f"unknown model {name!r}"
    if "/" in name or name.endswith((".parquet", ".safetensors")):
        low = name.lower()
        if low.endswith(".parquet"):
            fam = "precomputed"
        else:
            fam = next((f for hint, f in HUB_FAMILY_HINTS if hint in low), "hf-clip")
        return (f"{msg}: a hub id or path needs the family that loads it as a prefix, e.g. {fam}:{name} "
                f"(families: {', '.join(sorted(_FAMILIES))}; `cirbench models` lists them)")
    return (f"{msg}{did_you_mean(name, [*_MODELS, *_FAMILIES])}; `cirbench models` lists the aliases and the "
            "families (family:target)")


def _checked(factory: Any, name: str, options: dict[str, Any]) -> Encoder:
    """Call a plugin factory and refuse what is not an Encoder."""
    if not callable(factory):
        raise PluginError(f"plugin {name!r} is a {type(factory).__name__}, not a factory of Encoders")
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as e:
        raise PluginError(f"plugin {name!r} cannot take the options {sorted(options)}: {e}") from None
    except ValueError:  # no signature to inspect (some builtins): call it and see
        pass
    encoder = factory(**options)
    if not isinstance(encoder, Encoder):
        raise PluginError(
            f"plugin {name!r} returned {type(encoder).__name__}, which is not an Encoder "
            "(needs .spec, .fingerprint() and .encode(batch, role=..., instruction=...))"
        )
    return encoder


class PluginError(ValueError, TypeError):
    """A plugin factory that is not callable or did not return an Encoder."""


def _import_builtin() -> None:
    import cirbench.models  # noqa: F401  (registers the built-in models)
