"""Scores with their bootstrap intervals, cached by everything they are computed from.

On a warm re-eval (every vector and the search cached) the bootstrap is most of what is left: importing
scipy.stats alone takes about a second on a 2-core machine, and the resampling a few tenths more. The
intervals are deterministic: the same per-query values, groups, strata, resamples, confidence and seed on
the same scipy and numpy give the same numbers. So `grouped_scores`' output is stored in the cache root
(`scores/<key>.json`, written atomically) under a key of:

- the per-query metric values (bytes, dtype, shape), the breakdown groups, the strata;
- the bootstrap parameters (resamples, confidence, seed);
- the code that computes them (`stats.py`, `scoring.py`, `metrics.py`, by content) and the scipy and numpy
  versions (read from package metadata without importing them).

A file that does not parse into the expected shape is ignored and recomputed. JSON holds the floats
exactly (Python writes the shortest repr that reads back to the same double); NaN and ±inf are
written as their names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from cirbench.core.cache import software
from cirbench.core.io import write_json
from cirbench.core.result import Score

FORMAT = 1
_CODE = ("stats.py", "scoring.py", "metrics.py")
_PACKAGES = ("scipy", "numpy")

Scores = dict[str, dict[str, dict[str, Score]]]


def cached_scores(root: Path | None, values: Mapping[str, np.ndarray], groups: Mapping[str, list[list[str]]],
                  strata: np.ndarray | None, params: Mapping[str, Any], compute: Callable[[], Scores]
                  ) -> Scores:
    """`compute()`, or its stored output under the key of these inputs; None root: always compute."""
    if root is None:
        return compute()
    path = root / "scores" / f"{score_key(values, groups, strata, params)}.json"
    hit = _load(path)
    if hit is not None:
        return hit
    scores = compute()
    write_json(path, {"format": FORMAT, "scores": {
        kind: {g: {m: {f: _out(v) for f, v in vars(s).items()} for m, s in by_m.items()}
               for g, by_m in by_g.items()}
        for kind, by_g in scores.items()}})
    return scores


def _out(v: Any) -> Any:
    """A float JSON cannot hold (NaN, ±inf: MedR's misses, an empty group) as its name."""
    return repr(v) if isinstance(v, float) and not np.isfinite(v) else v


def _in(v: Any) -> Any:
    return float(v) if isinstance(v, str) else v


def score_key(values: Mapping[str, np.ndarray], groups: Mapping[str, list[list[str]]],
              strata: np.ndarray | None, params: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    head = {"format": FORMAT, "software": _software(), "params": dict(params), "metrics": list(values),
            "groups": groups, "strata": None if strata is None else [str(s) for s in strata.tolist()]}
    h.update(json.dumps(head, sort_keys=True).encode())
    for name in values:
        a = np.ascontiguousarray(values[name])
        h.update(f"{name}{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def _load(path: Path) -> Scores | None:
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            return None
        return {kind: {g: {m: Score(**{f: _in(v) for f, v in s.items()}) for m, s in by_m.items()}
                       for g, by_m in by_g.items()}
                for kind, by_g in data["scores"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


@cache
def _software() -> dict[str, object]:
    return software(Path(__file__).resolve().parent, _CODE, _PACKAGES)
