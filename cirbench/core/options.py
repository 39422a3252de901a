"""Refusing what a user mistyped: unknown options and names, with the accepted list and a suggestion.

Every model factory and task loader calls `check_options` on the options it was given, so a misspelt
`--option fusoin=sum` or `--task-option check_image=false` fails before any work with the accepted names,
instead of being ignored (and recorded in a result as if it had been applied). `did_you_mean` is the
suggestion the registries add to an unknown task or model name.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any


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


__all__ = ["UnknownOptionError", "check_options", "did_you_mean"]
