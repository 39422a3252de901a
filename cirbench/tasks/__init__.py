"""Built-in benchmark tasks; importing this package registers them."""

from cirbench.tasks import synthetic  # noqa: F401

from cirbench.tasks.registry import TaskSpec, get_task, get_task_spec, list_tasks, register_task

__all__ = ["TaskSpec", "get_task", "get_task_spec", "list_tasks", "register_task"]
