"""Refusing what a user mistyped: unknown options and names, with the accepted list and a suggestion.

Every model factory and task loader calls `check_options` on the options it was given, so a misspelt
`--option fusoin=sum` or `--task-option check_image=false` fails before any work with the accepted names,
instead of being ignored (and recorded in a result as if it had been applied). `did_you_mean` is the
suggestion the registries add to an unknown task or model name.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal


class UnknownOptionError(ValueError, TypeError):
    """An option a model or task does not accept (a TypeError too: it is a bad keyword argument)."""


def did_you_mean(name: str, choices: Iterable[str], *, n: int = 3) -> str:
    """' (did you mean 'x'?)' for the closest choices, else ''. Case is ignored when matching."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(lowered[c]) for c in close) + "?)"


def check_options(owner: str, given: Mapping[str, Any] | Iterable[str], accepted: Iterable[str], *,
                  flag: str = "--option") -> None:
    """Refuse option names outside `accepted`, naming each with a suggestion and the accepted list.

    `owner` says whose options they are ("model 'random'", "task 'cirr'"); `flag` is how a user passes
    them on the command line (`--option` for models, `--task-option` for tasks).
    """
    accepted = sorted(set(accepted))
    unknown = sorted(set(given) - set(accepted))
    if not unknown:
        return
    parts = [f"{u!r}{did_you_mean(u, accepted)}" for u in unknown]
    menu = ", ".join(accepted) if accepted else "none"
    raise UnknownOptionError(f"{owner} does not accept the unknown option {', '.join(parts)}; "
                             f"accepted {flag} names: {menu}")


# ------------------------------------------------------------------------------------------------------
# Typed values: options arrive as Python values or as CLI strings (`--option name=value`)
# ------------------------------------------------------------------------------------------------------

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def as_bool(value: Any, name: str) -> bool:
    """True/False, 1/0, or the usual spellings ("true", "no", ...); anything else is refused."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    s = str(value).strip().lower()
    if s in TRUE:
        return True
    if s in FALSE:
        return False
    raise ValueError(f"option {name!r} must be true or false, not {value!r}")


def as_int(value: Any, name: str, *, low: int | None = None) -> int:
    """An integer (a whole float or its string is fine), at least `low`; a bool is refused."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = float("nan")
    if isinstance(value, bool) or not f.is_integer() or (low is not None and f < low):
        bound = f" >= {low}" if low is not None else ""
        raise ValueError(f"option {name!r} must be an integer{bound}, not {value!r}")
    return int(f)


def as_float(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"option {name!r} must be a number, not {value!r}") from e


def as_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """One of a few words, with a suggestion for a near miss."""
    s = str(value)
    if s not in choices:
        raise ValueError(f"option {name!r} must be one of {', '.join(choices)}, not {value!r}"
                         f"{did_you_mean(s, choices)}")
    return s


# ------------------------------------------------------------------------------------------------------
# Declared options: what a model family (or a task) accepts, typed, checked before any of its code runs
# ------------------------------------------------------------------------------------------------------

Kind = Literal["bool", "int", "float", "str", "choice"]


@dataclass(frozen=True)
class Option:
    """One accepted option: its name, type and what it does (shown by `cirbench models NAME`).

    `default` is documentation: the family applies its own defaults, some of which depend on the device or
    on the loaded checkpoint. A `choice` is matched in lower case, as the adapters compare it.
    """

    name: str
    kind: Kind = "str"
    help: str = ""
    default: Any = None
    choices: tuple[str, ...] = ()
    low: int | None = None
    """For `int`: the smallest accepted value."""
    parser: Callable[[Any], Any] | None = None
    """The family's own parser, where its refusal explains more than the kind's (e.g. what each decode mode
    does); it raises ValueError."""

    def parse(self, value: Any) -> Any:
        """The typed value, or ValueError naming the option; None stays None (the family's default)."""
        if value is None:
            return None
        if self.parser is not None:
            return self.parser(value)
        if self.kind == "bool":
            return as_bool(value, self.name)
        if self.kind == "int":
            return as_int(value, self.name, low=self.low)
        if self.kind == "float":
            return as_float(value, self.name)
        if self.kind == "choice":
            return as_choice(str(value).strip().lower(), self.name, self.choices)
        if not isinstance(value, str | bytes) and hasattr(value, "__fspath__"):
            return value  # a path stays a path
        return str(value)


OptionTable = tuple[Option, ...]
"""What a model family accepts; the registry parses every option through it before the factory runs."""


def option_names(table: OptionTable) -> tuple[str, ...]:
    return tuple(o.name for o in table)


def parse_options(owner: str, given: Mapping[str, Any], table: OptionTable, *,
                  flag: str = "--option") -> dict[str, Any]:
    """`given` checked against `table` (unknown names refused with a suggestion) and each value typed."""
    check_options(owner, given, option_names(table), flag=flag)
    by_name = {o.name: o for o in table}
    try:
        return {k: by_name[k].parse(v) for k, v in given.items()}
    except ValueError as e:
        raise ValueError(f"{owner}: {e}") from None


def merge_tables(*tables: OptionTable, without: Iterable[str] = ()) -> OptionTable:
    """Several tables as one (a later option replaces an earlier one of the same name), less `without`."""
    drop = set(without)
    merged: dict[str, Option] = {}
    for table in tables:
        merged.update((o.name, o) for o in table)
    return tuple(o for name, o in merged.items() if name not in drop)


__all__ = ["Option", "OptionTable", "UnknownOptionError", "as_bool", "as_choice", "as_float", "as_int",
           "check_options", "did_you_mean", "merge_tables", "option_names", "parse_options"]
