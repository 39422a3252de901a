"""Build pipelines by name: importing the built-in ones registers them (`register_pipeline`).

The only module that imports every pipeline, so that no pipeline imports another through the registry.
"""

from __future__ import annotations

import cirbench.builders.edir.pipeline
import cirbench.builders.soft_refine.pipeline
import cirbench.builders.synthetic.build  # noqa: F401  (each registers its pipeline at import)
from cirbench.builders.core.pipeline import _PIPELINES, Pipeline


def list_pipelines() -> list[Pipeline]:
    return [_PIPELINES[k] for k in sorted(_PIPELINES)]


def get_pipeline(name: str) -> Pipeline:
    """The registered pipeline `name`; KeyError with a suggestion and the known names otherwise."""
    from cirbench.core.options import did_you_mean

    if name not in _PIPELINES:
        raise KeyError(f"unknown pipeline {name!r}{did_you_mean(name, _PIPELINES)}; known: "
                       f"{', '.join(sorted(_PIPELINES))}")
    return _PIPELINES[name]


__all__ = ["get_pipeline", "list_pipelines"]
