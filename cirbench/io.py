"""Atomic file writing: a result, cache shard or manifest is either whole on disk or absent."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, binary: bool = False,
                 durable: bool = True) -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path`, fsync (when durable), then rename over it; on error nothing
    is left.

    A rename is atomic on POSIX: readers (and a rerun after SIGKILL) see the old state or the new file whole.
    fsync protects against power loss, not against a killed process, so callers that write many small files
    may turn it off.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
