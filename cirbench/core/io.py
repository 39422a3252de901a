"""Atomic file writing: a result, cache part or manifest is either whole on disk or absent.

Files and folders are created with the permissions the umask allows (0666 / 0777 minus the umask), as
`open()` and `mkdir` would, not the private 0600 / 0700 of `tempfile`: a colleague or a web server must be
able to read a shared result folder, cache or dataset. Signals that would cut a bookkeeping step in two
(SIGINT, SIGTERM) can be held for the length of that step.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def umask() -> int:
    """The process umask, read without changing it where the OS allows (os.umask sets it as it reads)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    current = os.umask(0o022)
    os.umask(current)
    return current


def file_mode() -> int:
    return 0o666 & ~umask()


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A fresh directory beside its final place, with the umask's permissions (mkdtemp makes it 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, binary: bool = False,
                 durable: bool = True) -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path`, fsync (when durable), then rename over it; on error nothing
    is left.

    A rename is atomic on POSIX: readers (and a rerun after SIGKILL) see the old state or the new file whole.
    fsync protects against power loss, not against a killed process, so callers that write many small files
    may turn it off. The file gets the umask's permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb" if binary else "w") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_write(path) as f:
        json.dump(data, f, indent=2, sort_keys=False, allow_nan=False)
        f.write("\n")


_HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block has finished, then deliver them to the previous handlers.

    For a step that must happen exactly once or not at all, e.g. writing a cache part *and* forgetting the
    rows it holds: interrupted in between, a retry would write the same part twice. Only the main thread
    can set handlers; elsewhere this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {}
    for s in _HELD:
        handler = signal.getsignal(s)
        if handler is None:  # set outside Python: cannot be restored, so leave it alone
            continue
        previous[s] = handler
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for num, handler in previous.items():
            signal.signal(num, handler)
        for num in caught:
            signal.raise_signal(num)


class Terminated(SystemExit):
    """SIGTERM, raised as an exception so that `finally` blocks (a cache flush) run before the exit."""


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """While the block runs, SIGTERM raises `Terminated` (exit status 143) instead of killing the process
    at once. A handler someone else installed is left as it is; off the main thread this is a no-op."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
