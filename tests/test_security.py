"""No code from a config or a dataset; plugin code only when the user asks; user text escaped in Markdown.

The canary is a file that `os.system("touch ...")` would create: before, both a pipeline config and
`--model os:system --option command=...` ran the command.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import cirbench
from cirbench.builders import ConfigError, check_config, shipped_pipeline_text
from cirbench.cli import app

runner = CliRunner(env={"COLUMNS": "400", "CIRBENCH_DATA": None})


def _edir_config(tmp_path: Path, **embedding: object) -> Path:
    cfg = yaml.safe_load(shipped_pipeline_text("edir"))
    cfg["lmm"]["backend"] = "template"
    cfg["verify"]["embedding"].update(embedding)
    p = tmp_path / "evil.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _photos(tmp_path: Path) -> str:
    from .conftest import png

    d = tmp_path / "photos"
    d.mkdir()
    for i in range(2):
        (d / f"p{i}.png").write_bytes(png((i * 90, 10, 10), 300))
    return f"folder:{d}"


def test_a_pipeline_config_cannot_import_code(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    cfg = _edir_config(tmp_path, model="os:system", options={"command": f"touch {canary}"})
    res = runner.invoke(app, ["build", str(cfg), "--sources", _photos(tmp_path), "-o", str(tmp_path / "out"),
                              "-q"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert str(cfg) in text and "verify.embedding.model" in text and "'os:system'" in text
    assert "cannot make cirbench import code" in text
    assert not canary.exists() and not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()


@pytest.mark.parametrize("pipeline, section", [("edir", "verify.embedding"), ("soft-refine-cirr", "mining")])
def test_config_model_rules(pipeline: str, section: str) -> None:
    """Through the API too: an import path, a misspelt alias and code-running options are refused."""
    def cfg(**over: object) -> dict:
        c = yaml.safe_load(shipped_pipeline_text(pipeline))
        node = c
        for key in section.split("."):
            node = node[key]
        node.update(over)
        return c

    with pytest.raises(ConfigError, match=rf"x.yaml: {section}.model is 'json:dumps', a Python import path"):
        check_config("x.yaml", cfg(model="json:dumps"))
    with pytest.raises(ConfigError, match=rf"{section}.model: unknown model 'clip-l41'.*'clip-l14'"):
        check_config("x.yaml", cfg(model="clip-l41"))
    for opt in ("trust_remote_code", "allow_pickle"):
        with pytest.raises(ConfigError, match=rf"{section}.options.{opt} cannot be set in a config file"):
            check_config("x.yaml", cfg(options={opt: True}))
    check_config("x.yaml", cfg(model="random"))  # an alias is fine
    # the local LMM backend may not turn remote code on either
    c = cfg()
    c["lmm"] = {"backend": "local", "local": {"model": "x", "trust_remote_code": True}}
    with pytest.raises(ConfigError, match="lmm.local.trust_remote_code cannot be set"):
        check_config("x.yaml", c)


def test_plugins_are_the_users_opt_in(tiny_dataset: Path, tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    args = ["eval", "-t", str(tiny_dataset), "-o", str(tmp_path / "o"), "-q", "--no-cache", "-m", "os:system",
            "--option", f"command=touch {canary}"]
    res = runner.invoke(app, args)
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "--allow-plugins" in text and "would import and run Python code" in text
    assert not canary.exists() and not (tmp_path / "o").exists()
    # with the flag the user runs their own code, and what it returns must be an Encoder
    res = runner.invoke(app, [*args[:-4], "-m", "json:JSONDecoder", "--allow-plugins"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "returned JSONDecoder, which is not an Encoder" in text, res.output
    with pytest.raises(KeyError, match="allow_plugins=True"):
        cirbench.get_model("json:dumps")
    with pytest.raises(TypeError, match="cannot take the options"):
        cirbench.get_model("json:dumps", allow_plugins=True)


def test_markdown_leaderboard_escapes_user_text(tiny_dataset: Path, tmp_path: Path) -> None:
    """A model name or a protocol name from a result file cannot inject HTML, links or table cells."""
    res = runner.invoke(app, ["eval", "-m", "random", "-t", str(tiny_dataset), "-o", str(tmp_path / "r"),
                              "-q", "--no-cache", "--bootstrap", "5"])
    assert res.exit_code == 0, res.output
    path = tmp_path / "r" / "result.json"
    d = json.loads(path.read_text())
    evil = "<img src=x onerror=alert(1)>|[click](javascript:alert(1))`x`"
    d["model"]["name"] = evil
    d["protocol"]["name"] = "off`icial <b>"
    d["scores"]["category"] = {evil: d["scores"]["overall"]["overall"]}
    path.write_text(json.dumps(d))
    res = runner.invoke(app, ["leaderboard", str(tmp_path / "r"), "-o", str(tmp_path / "lb"),
                              "--resamples", "10"])
    assert res.exit_code == 0, res.output
    for md in (tmp_path / "lb").glob("*.md"):
        text = md.read_text()
        assert "<img" not in text and "<b>" not in text, md  # no raw HTML
        assert not re.search(r"(?<!\\)\]\(javascript", text), md  # no link
        assert not re.search(r"(?<!\\)`x|off`", text), md  # no code span opened by user text
    board = next(p for p in (tmp_path / "lb").glob("*.md") if p.name != "README.md").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;\\|\\[click\\](javascript:alert(1))\\`x\\`" in board
    assert "protocol off\\`icial &lt;b&gt;" in board
