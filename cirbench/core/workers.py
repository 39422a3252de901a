"""Worker processes that die with the process that started them.

A `ProcessPoolExecutor` worker blocks on its task queue; when its parent is killed with SIGKILL (no
`finally`, no atexit), the worker never learns it and lives on, holding memory. `process_pool` gives each
worker `die_with_parent` as its initializer: on Linux the kernel sends it SIGKILL when the parent dies
(`prctl(PR_SET_PDEATHSIG)`); elsewhere a daemon thread notices that the parent changed and exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1
POLL_S = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Make this (worker) process exit as soon as the process that started it is gone.

    `parent_pid` is the pool owner's pid. The process that forked this worker is usually that process (the
    default start method on Linux), or a forkserver that itself exits with it; either way this worker goes
    when its own parent does.
    """
    parent = os.getppid()
    if parent == 1 or (parent != parent_pid and not pid_alive(parent_pid)):
        os._exit(1)  # orphaned already: the owner died before this worker got here
    if sys.platform.startswith("linux") and _pdeathsig():
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)
        return
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="cirbench-parent").start()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pdeathsig() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_S)
    os._exit(1)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers exit when this process dies, however it dies."""
    return ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),))


__all__ = ["die_with_parent", "pid_alive", "process_pool"]
