"""Helpers the test-server file checkers share (CIRR, CIRCO): one list of every problem, read once.

The servers answer a bad file late (CIRCO by email) or with a terse error, so each benchmark family checks
its own files before upload (`TaskSpec.check_submission`, `cirbench validate-submission`) and before
`cirbench eval` writes one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SHOW = 5
"""How many examples a problem line lists."""
IMAGE_EXTENSION = re.compile(r"\.(png|jpe?g|gif|bmp|webp)$", re.IGNORECASE)
INT_KEY = re.compile(r"^(0|[1-9][0-9]*)$")


class Problems:
    """Collects offending keys per kind of problem, so 4,000 bad lists give one line, not 4,000."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._kinds: dict[str, list[str]] = {}

    def add(self, line: str) -> None:
        self.lines.append(line)

    def group(self, kind: str, example: str) -> None:
        self._kinds.setdefault(kind, []).append(example)

    def result(self) -> list[str]:
        out = list(self.lines)
        for kind, examples in self._kinds.items():
            more = f", ... ({len(examples) - SHOW} more)" if len(examples) > SHOW else ""
            out.append(f"{len(examples)} {kind}: {', '.join(examples[:SHOW])}{more}")
        return out


def few(ids: list[str] | set[str]) -> str:
    """The first few ids (shortest first for a set), and how many more."""
    items = sorted(ids, key=lambda s: (len(s), s)) if isinstance(ids, set) else list(ids)
    more = f", ... ({len(items) - SHOW} more)" if len(items) > SHOW else ""
    return ", ".join(items[:SHOW]) + more


def read_payload(path: Path) -> tuple[Any, int, list[str]]:
    """(parsed JSON, its size in bytes, problems): a file that cannot be read or parsed is a problem."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, 0, [f"file not found: {path}"]
    except OSError as e:
        return None, 0, [f"cannot read {path}: {e}"]
    try:
        return json.loads(raw), len(raw), []
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, len(raw), [f"{path}: not valid JSON: {e}"]
