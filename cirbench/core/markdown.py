"""Markdown that shows user-controlled text as text: the one escaping rule of every card and table.

A dataset's name and description come from a config file, a query text from a source dataset, a prompt
from a file, a model id from the command line: on a Hugging Face card or a leaderboard page each must read
as the text it is, never as a link, an image, raw HTML, a heading or a table's column. So every such value
goes through one of these functions, and cirbench's own prose around them is the only Markdown a card has:

- `escape`: inline text, one line (HTML's `& < >` as entities; Markdown's punctuation backslashed; a line
  start that would open a list, a heading or a quote neutralised);
- `paragraphs`: a multi-paragraph text (a description), each paragraph escaped;
- `code` and `fenced`: verbatim text (an id, a path, a prompt, a JSON record) in a code span or block whose
  fence is longer than any run of backticks inside it, so the text cannot close it;
- `table`: a Markdown table whose cells are escaped;
- `front_matter`: the YAML metadata block, written by a YAML emitter (a value cannot add keys).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_PUNCTUATION = "\\`*_[]#|~"
_LINE_START = re.compile(r"^(\d+)([.)])|^([-+=])")


def escape(text: object) -> str:
    """One line of Markdown that renders as exactly `text` (whitespace runs become one space)."""
    s = " ".join(str(text).split())
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = "".join("\\" + ch if ch in _PUNCTUATION else ch for ch in s)
    return _LINE_START.sub(lambda m: f"{m[1]}\\{m[2]}" if m[1] else f"\\{m[3]}", s)


def paragraphs(text: object) -> str:
    """A text of paragraphs (separated by blank lines), each paragraph escaped."""
    parts = re.split(r"\n\s*\n", str(text).strip())
    return "\n\n".join(escape(p) for p in parts if p.strip())


def _fence(text: str, char: str, least: int) -> str:
    runs = [len(m) for m in re.findall(f"{re.escape(char)}+", text)]
    return char * max(least, max(runs, default=0) + 1)


def code(text: object) -> str:
    """An inline code span holding `text` verbatim (one line)."""
    s = " ".join(str(text).split())
    fence = _fence(s, "`", 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s.strip() else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def fenced(text: object, info: str = "") -> str:
    """A fenced code block holding `text` verbatim; `info` is cirbench's own (e.g. "json")."""
    s = str(text).rstrip("\n")
    fence = _fence(s, "`", 3)
    return f"{fence}{info}\n{s}\n{fence}"


def table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, every cell escaped."""
    lines = ["| " + " | ".join(escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def front_matter(data: Mapping[str, Any]) -> str:
    """The `---`-delimited YAML block of a card, emitted by PyYAML so no value can inject a key."""
    import yaml

    return "---\n" + yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True) + "---\n"


__all__ = ["code", "escape", "fenced", "front_matter", "paragraphs", "table"]
