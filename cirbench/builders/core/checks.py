"""Checks every pipeline config shares: a config names models, never code, and never turns on remote code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CODE_OPTIONS = ("trust_remote_code", "allow_pickle")
"""Model and LMM options that would run code from a model's repository: the user's call, not a file's."""


class ConfigError(ValueError):
    """A pipeline config that cannot be used; the message names the file (when known) and the key."""


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
