"""Jinja2 for cirbench's self-contained HTML pages (the leaderboard, `cirbench inspect`).

Every page is one file: its stylesheet and script are package data inlined into the page, so it works
offline and can be archived next to the results. Autoescaping is on for every template, so a model, task or
query text is text on the page, never markup; a Content-Security-Policy that allows only the page's own
script (by hash) and `data:` images is a second line of defence should an escape ever be missed.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

import jinja2
from markupsafe import Markup, escape


def environment(package: str) -> jinja2.Environment:
    """Templates of `package` (a folder `templates/` in it), autoescaped, undefined names an error."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(package, "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["linkify"] = linkify
    env.filters["inline_md"] = inline_md
    return env


def asset(package: str, name: str) -> str:
    """A static file of `package`'s templates folder (a stylesheet, a script), as text."""
    return resources.files(package).joinpath("templates", name).read_text(encoding="utf-8")


def content_security_policy(script: str) -> str:
    """Only this exact inline script may run; styles inline; images only as data: URIs; nothing fetched."""
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return (f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
            "img-src data:; base-uri 'none'; form-action 'none'")


def linkify(text: object) -> Markup:
    """Escaped text in which http(s) URLs become links (and nothing else does: no javascript:)."""
    parts = re.split(r"(https?://[^\s,;()]+)", str(text))
    return Markup("").join(
        Markup('<a href="{0}" rel="noopener noreferrer">{0}</a>').format(p) if i % 2 else escape(p)
        for i, p in enumerate(parts)
    )


def inline_md(text: object) -> Markup:
    """The shared legend texts use *emphasis* and `code`: render those two after escaping."""
    s = str(escape(str(text)))
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return Markup(re.sub(r"\*([^*]+)\*", r"<em>\1</em>", s))


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
