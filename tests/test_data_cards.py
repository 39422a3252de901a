"""Every data card escapes what a user controls: a config's name and description, a prompt, a source spec.

The cards are built through `cirbench build` (the soft-refine and synthetic pipelines, offline) with a
config whose strings try to inject YAML keys, HTML, Markdown headings, links and code fences; the card's
front matter must parse to exactly the given values and nothing more, and its body must show the strings
as text. The escaping rule itself (cirbench.core.markdown) is checked on hand-written expectations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from cirbench.cli import app
from cirbench.core import markdown as md

NAME = "x\nlicense: mit\nextra_key: injected <script>alert(1)</script> [a](javascript:alert(1)) *b*"
DESCRIPTION = ("# Not a heading\n\n<img src=x onerror=alert(1)>\n\n| a | b |\n\n```\n<b>fence</b>\n\n"
               "- not a list")


def _card(out: Path) -> tuple[dict[str, Any], str]:
    text = (out / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def _check_body(body: str) -> None:
    for raw in ("<script", "<img", "<b>", "[a](javascript"):
        assert raw not in body, raw
    lines = body.splitlines()
    assert "# Not a heading" not in lines and "- not a list" not in lines
    assert not any(line.startswith("| a |") for line in lines)  # the description's "table" is text
    assert "&lt;img src=x onerror=alert(1)&gt;" in body
    assert "\\[a\\](javascript:alert(1))" in body


def _build(*args: str) -> None:
    r = CliRunner().invoke(app, ["build", *args, "-q"])
    assert r.exit_code == 0, r.output + repr(r.exception)


def test_soft_refine_card_escapes_the_config(tmp_path: Path) -> None:
    from tests.test_build_soft import write_source

    source = write_source(tmp_path / "src")
    cfg = {"pipeline": "soft-refine", "name": NAME, "description": DESCRIPTION, "license": "cc-by-4.0",
           "mining": {"model": "random", "top_k": 6}, "scoring": {"top_n": 4}}
    (tmp_path / "soft.yaml").write_text(yaml.safe_dump(cfg))
    _build(str(tmp_path / "soft.yaml"), "--sources", f"dataset:{source}@val", "-o", str(tmp_path / "out"))
    front, body = _card(tmp_path / "out")
    assert front["pretty_name"] == NAME and front["license"] == "cc-by-4.0"
    assert "extra_key" not in front
    _check_body(body)
    assert f"# {md.escape(NAME)}" in body.splitlines()


def test_synthetic_card_escapes_the_config(tmp_path: Path) -> None:
    cfg = yaml.safe_load(Path("pipelines/synthetic.yaml").read_text())
    cfg["name"] = NAME
    (tmp_path / "synthetic.yaml").write_text(yaml.safe_dump(cfg))
    _build(str(tmp_path / "synthetic.yaml"), "--limit", "5", "-o", str(tmp_path / "out"))
    front, body = _card(tmp_path / "out")
    assert "extra_key" not in front and front["license"] == "cc-by-4.0"
    assert "<script" not in body and "[a](javascript" not in body
    title = next(line for line in body.splitlines() if line.startswith("# "))
    assert title == f"# {md.escape(NAME + '-mini')}"


def test_the_escaping_rule_by_hand() -> None:
    assert md.escape("a <b> & c") == "a &lt;b&gt; &amp; c"
    assert md.escape("[x](javascript:y) *em* _u_ `c` a|b #h ~s~") == (
        "\\[x\\](javascript:y) \\*em\\* \\_u\\_ \\`c\\` a\\|b \\#h \\~s\\~")
    assert md.escape("line one\n\n# two") == "line one \\# two"  # one line, no heading
    assert md.escape("- item") == "\\- item" and md.escape("1. first") == "1\\. first"
    assert md.paragraphs("one\n\n- two") == "one\n\n\\- two"
    assert md.code("a`b") == "``a`b``" and md.code("`x") == "`` `x ``"
    assert md.fenced("```\nrm\n```", "text") == "````text\n```\nrm\n```\n````"
    assert md.table(["k", "v"], [["a|b", "<i>"]]) == "| k | v |\n|---|---|\n| a\\|b | &lt;i&gt; |"
    front = md.front_matter({"pretty_name": "x\nlicense: mit"})
    assert yaml.safe_load(front.strip("-\n")) == {"pretty_name": "x\nlicense: mit"}
