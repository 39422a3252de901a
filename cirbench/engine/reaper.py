"""Stops what a killed cirbench left of the Ray instance it started.

Ray's head processes fate-share with the driver that started them, but some of their children (the
dashboard and runtime-env agents) outlive a driver killed with SIGKILL. So when cirbench starts a local Ray
instance it also starts this small process (in a session of its own), holding the read end of a pipe whose
write end only the driver has. While the driver lives, the reaper notes every process of the instance (a
process whose command line names the instance's temporary folder, and everything below one); when the pipe
closes (the driver exited or was killed) it kills those that are still running and removes the folder.

    python -m cirbench.engine.reaper TEMP_DIR    # stdin: the pipe from the driver
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import time
from pathlib import Path

POLL_S = 0.5


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, from /proc/<pid>/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    return int(fields[1]), int(fields[19])


def instance_processes(temp_dir: str) -> dict[int, int]:
    """pid -> start time of the processes of the Ray instance living in `temp_dir` (and their children)."""
    parents: dict[int, int] = {}
    starts: dict[int, int] = {}
    roots: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        st = _stat(pid)
        if st is None:
            continue
        parents[pid], starts[pid] = st
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if temp_dir.encode() in cmd and pid != os.getpid():
            roots.add(pid)
    found = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return {pid: starts[pid] for pid in found}


def reap(seen: dict[int, int]) -> None:
    """SIGKILL every noted process still running (the same process: its start time has not changed)."""
    for pid, start in seen.items():
        st = _stat(pid)
        if st is not None and st[1] == start:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    temp_dir = argv[0]
    seen: dict[int, int] = {}
    fd = sys.stdin.fileno()
    while True:
        seen.update(instance_processes(temp_dir))
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if ready and not os.read(fd, 4096):
            break  # the driver is gone (or closed the engine)
    time.sleep(POLL_S)  # let a clean `ray.shutdown()` finish on its own first
    seen.update(instance_processes(temp_dir))
    reap(seen)
    shutil.rmtree(temp_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is the driver's to handle
    sys.exit(main(sys.argv[1:]))
