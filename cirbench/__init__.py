"""cirbench: build and evaluate Composed Image Retrieval benchmarks under their official protocols.

The Python API mirrors the CLI::

    import cirbench
    result = cirbench.evaluate("cirbench-fusion", "synthetic-mini", limit=100)
    result.overall["R@1"].value
    cirbench.load_results("results")   # every result.json below as one pandas DataFrame

Names are imported lazily so that `import cirbench` (and the CLI) starts without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "EvalOptions",
    "Result",
    "Task",
    "evaluate",
    "get_model",
    "get_task",
    "list_models",
    "list_tasks",
    "load_results",
]

_LAZY = {
    "evaluate": "cirbench.evaluation",
    "EvalOptions": "cirbench.evaluation",
    "Result": "cirbench.core.result",
    "Task": "cirbench.core.types",
    "get_task": "cirbench.tasks.registry",
    "list_tasks": "cirbench.tasks.registry",
    "get_model": "cirbench.models.registry",
    "list_models": "cirbench.models.registry",
    "load_results": "cirbench.results",
}

if TYPE_CHECKING:
    from cirbench.core.result import Result
    from cirbench.core.types import Task
    from cirbench.evaluation import EvalOptions, evaluate
    from cirbench.models.registry import get_model, list_models
    from cirbench.results import load_results
    from cirbench.tasks.registry import get_task, list_tasks


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cirbench' has no attribute {name!r}")
