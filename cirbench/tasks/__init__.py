"""Built-in benchmark tasks; importing this package registers them."""

import cirbench.tasks.edir  # noqa: F401
import cirbench.tasks.mmlandmarks  # noqa: F401
import cirbench.tasks.soft  # noqa: F401
import cirbench.tasks.webvid_covr  # noqa: F401
from cirbench.tasks import circo, cirr, fashioniq, synthetic  # noqa: F401
from cirbench.tasks.registry import TaskSpec, get_task, get_task_spec, list_tasks, register_task

__all__ = ["TaskSpec", "get_task", "get_task_spec", "list_tasks", "register_task"]
