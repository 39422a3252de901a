"""Path containment: a path that a dataset file names stays inside the folder it is read from or written to.

Released annotation files name images by relative path (CIRR's split files), file name (CIRCO, EDIR) or id
(FashionIQ's ASINs, MMLandmarks' sharded ids, WebVid-CoVR's `pth`). A hostile or broken file could name
`../../home/user/.ssh/id_rsa`, an absolute path, or a symlink that leads out of the folder; every loader
joins such names through one `Root`, which refuses all three with a DatasetError that names the file, the
record and the field. The same check guards what cirbench writes below a folder (extracted frames).

The root itself may be a symlink (a dataset kept on another disk): it is resolved once. Symlinks *inside*
the root are followed only when they stay inside it. The check costs one `realpath` per distinct directory
and one `os.scandir` per directory to find the symlinked names, never a `stat` per file, so galleries of
hundreds of thousands of images are checked in a moment.
"""

from __future__ import annotations

import os
from pathlib import Path

from cirbench.core.types import DatasetError


class Root:
    """A folder that the paths joined below it must not leave."""

    def __init__(self, root: str | os.PathLike[str], *, what: str = "the dataset root") -> None:
        self.given = Path(root)
        self.real = os.path.realpath(root)
        self.what = what
        self._prefix = self.real.rstrip(os.sep) + os.sep
        self._dirs: dict[str, bool] = {}
        self._links: dict[str, frozenset[str]] = {}

    def __repr__(self) -> str:
        return f"Root({self.real!r})"

    def join(self, rel: str | os.PathLike[str], *, file: str | os.PathLike[str] | None = None,
             record: str | int | None = None, field: str | None = None) -> Path:
        """`root / rel` when it stays inside the root; else a DatasetError naming file, record and field."""
        name = os.fspath(rel)
        if not name or "\x00" in name:
            raise DatasetError(f"empty or invalid path {name!r}", file=file, record=record, field=field)
        if os.path.isabs(name):
            raise DatasetError(f"absolute path {name!r} is not allowed: paths are relative to {self.what} "
                               f"{str(self.given)!r}", file=file, record=record, field=field)
        if "\\" not in name and "//" not in name and "/." not in "/" + name and not name.endswith("/"):
            joined = self._prefix + name  # already normal: no ., .. or empty components
        else:
            joined = os.path.normpath(os.path.join(self.real, name))
        if not self._inside(joined):
            raise DatasetError(f"path {name!r} escapes {self.what} {str(self.given)!r}", file=file,
                               record=record, field=field)
        parent, base = os.path.split(joined)
        if not self._dir_inside(parent) or (base in self._symlinks(parent)
                                            and not self._inside(os.path.realpath(joined))):
            raise DatasetError(f"path {name!r} escapes {self.what} {str(self.given)!r} through a symlink "
                               "(point the data directory option at the real location instead)",
                               file=file, record=record, field=field)
        return Path(self.given, joined[len(self._prefix):]) if joined != self.real else self.given

    @staticmethod
    def name(name: str, *, file: str | os.PathLike[str] | None = None, record: str | int | None = None,
             field: str | None = None) -> str:
        """An id used as one path component (an ASIN, a shard id): no separators, not `.` or `..`."""
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
            raise DatasetError(f"{name!r} cannot name a file: an id must be one path component (no '/', "
                               "not '.' or '..')", file=file, record=record, field=field)
        return name

    def _inside(self, path: str) -> bool:
        return path == self.real or path.startswith(self._prefix)

    def _dir_inside(self, directory: str) -> bool:
        if directory not in self._dirs:
            self._dirs[directory] = self._inside(os.path.realpath(directory))
        return self._dirs[directory]

    def _symlinks(self, directory: str) -> frozenset[str]:
        if directory not in self._links:
            try:
                with os.scandir(directory) as it:
                    self._links[directory] = frozenset(e.name for e in it if e.is_symlink())
            except OSError:  # not there (yet): nothing in it can be a symlink
                self._links[directory] = frozenset()
        return self._links[directory]


def contained(root: str | os.PathLike[str], rel: str | os.PathLike[str], *,
              file: str | os.PathLike[str] | None = None, record: str | int | None = None,
              field: str | None = None, what: str = "the dataset root") -> Path:
    """One-off `Root(root).join(rel, ...)`; loaders that join many paths keep one Root."""
    return Root(root, what=what).join(rel, file=file, record=record, field=field)


__all__ = ["Root", "contained"]
