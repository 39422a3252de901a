"""Responses cached on disk by request hash, so a resumed or repeated build never pays for an answer twice.

The key is the SHA-256 of the canonical JSON request (model, messages with inline images, decoding options);
credentials are never part of it. One small JSON file per answer, written atomically; an unreadable file is
a miss, not an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cirbench.core.io import atomic_write


def request_key(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """A directory of `<key[:2]>/<key>.json` answers."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            value = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        with atomic_write(self._path(key)) as f:
            json.dump(value, f, sort_keys=True)
