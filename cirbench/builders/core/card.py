"""The data card (README.md) of a built dataset: one writer for every pipeline, one escaping rule.

A pipeline gives its card's metadata as data (emitted as YAML, so a name cannot add a key), its name and
description as the config wrote them (escaped here), and a body of Markdown it builds with
`cirbench.core.markdown`: cirbench's own prose literal, every value from a config, a source dataset, a model
or a prompt file through `escape`, `code`, `fenced` or `table`. `cirbench.core.datacard.hub_card` then
completes and checks the metadata from the manifest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cirbench.core.markdown import escape, front_matter, paragraphs


def write_card(*, front: Mapping[str, Any], title: str, description: str | None, body: str) -> str:
    """README.md text: the YAML front matter, `# title`, the description's paragraphs, then `body`."""
    intro = f"{paragraphs(description)}\n\n" if description and str(description).strip() else ""
    return f"{front_matter(front)}\n# {escape(title)}\n\n{intro}{body.strip()}\n"


__all__ = ["write_card"]
