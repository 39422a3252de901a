"""The build pipelines through `cirbench build`: registered by name, options each does not use refused, and
for every unit-based pipeline a 2-shard build merged with --merge equals the unsharded build byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cirbench.builders import read_pipeline, shipped_pipelines
from cirbench.builders.core.pipeline import Pipeline, get_pipeline, list_pipelines
from cirbench.cli import app

runner = CliRunner(env={"COLUMNS": "250"})


def refused(*args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output and res.exit_code == 2, res.output
    return " ".join(res.output.split())


def test_every_shipped_config_names_a_registered_pipeline() -> None:
    names = [p.info.name for p in list_pipelines()]
    assert names == ["edir", "soft-refine", "synthetic"]
    assert all(isinstance(p, Pipeline) and p.info.description for p in list_pipelines())
    for stem in shipped_pipelines():
        _, config = read_pipeline(stem)
        assert get_pipeline(config["pipeline"]).info.name == config["pipeline"]


def test_an_unknown_pipeline_name_gets_a_suggestion() -> None:
    with pytest.raises(KeyError, match=r"unknown pipeline 'soft-refin' \(did you mean 'soft-refine'\?\)"):
        get_pipeline("soft-refin")


@pytest.mark.parametrize("config, args, want", [
    ("synthetic", ["--merge", "2"], "--merge does not apply to the synthetic pipeline: it is one seeded "
                                    "generation of the whole benchmark"),
    ("synthetic", ["--shard", "0/2"], "--shard does not apply to the synthetic pipeline: it is one seeded"),
    ("synthetic", ["--sources", "folder:x"], "--sources does not apply to the synthetic pipeline (it takes "
                                             "--preset, --seed, --limit)"),
    ("edir", ["--preset", "mini"], "--preset does not apply to the edir pipeline (it takes --sources, --shard, "
                                   "--merge, --limit)"),
    ("edir", ["--seed", "3"], "--seed does not apply to the edir pipeline"),  # was silently ignored
    ("soft-refine-cirr", ["--preset", "mini"], "--preset does not apply to the soft-refine pipeline"),
])
def test_an_option_the_pipeline_does_not_use_is_refused(
    config: str, args: list[str], want: str, tmp_path: Path
) -> None:
    assert want in refused("build", config, "-o", str(tmp_path / "out"), "-q", *args)
    assert not list(tmp_path.iterdir())


def test_synthetic_merge_from_python_is_refused_too(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a set of work units"):
        get_pipeline("synthetic").merge(tmp_path / "out", 2)
