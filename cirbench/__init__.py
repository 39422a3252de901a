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

if TYPE_CHECKING:
    from cirbench.core.result import Result
    from cirbench.core.types import Task
    from cirbench.evaluation import EvalOptions, evaluate
    from cirbench.models.registry import get_model, list_models
    from cirbench.results import load_results
    from cirbench.tasks.registry import get_task, list_tasks


def __getattr__(name: str) -> Any:
    """The public names, imported on first use (plain imports, no import paths as strings)."""
    if name in ("evaluate", "EvalOptions"):
        from cirbench import evaluation

        return getattr(evaluation, name)
    if name == "Result":
        from cirbench.core.result import Result

        return Result
    if name == "Task":
        from cirbench.core.types import Task

        return Task
    if name in ("get_task", "list_tasks"):
        from cirbench.tasks import registry

        return getattr(registry, name)
    if name in ("get_model", "list_models"):
        from cirbench.models import registry as models

        return getattr(models, name)
    if name == "load_results":
        from cirbench.results import load_results

        return load_results
    raise AttributeError(f"module 'cirbench' has no attribute {name!r}")
