"""The build pipelines through `cirbench build`: registered by name, options each does not use refused, and
for every unit-based pipeline a 2-shard build merged with --merge equals the unsharded build byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cirbench.builders import read_pipeline, shipped_pipelines
from cirbench.builders.core.pipeline import Pipeline
from cirbench.builders.registry import get_pipeline, list_pipelines
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
    ("edir", ["--preset", "mini"], "--preset does not apply to the edir pipeline (it takes --sources, "
                                   "--shard, --merge, --limit, --engine)"),
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


def _edir_config(root: Path) -> tuple[Path, str]:
    """A config file for the tiny offline InstructPix2Pix and a folder of 4 photos (templates, no LMM)."""
    from tests.helpers.edit_pipelines import TINY_CALL_KWARGS, build_tiny_ip2p, write_image_folder

    ip2p = build_tiny_ip2p(root / "ip2p")
    images = write_image_folder(root / "imgs", 4, size=32, seed=3, duplicates=0)
    cfg = {
        "pipeline": "edir",
        "seed": 5,
        "sources": {"min_size": 16},
        "distractors": {"count": 1},
        "instructions": {"subcategories": ["Color", "Style"], "per_source": 1},
        "editor": {"model": str(ip2p), "size": 32, "multiple_of": 8, "call": TINY_CALL_KWARGS["ip2p"]},
        "verify": {
            "embedding": {"model": "random", "unrelated": 2, "min_margin": None, "min_direction": 0.0}
        },
    }
    return _write(root / "edir.yaml", cfg), f"folder:{images}"


def _soft_config(root: Path) -> tuple[Path, str]:
    """A config file for SoFT refinement with the random encoder and the offline stand-ins, and its source."""
    from tests.test_build_soft import config, write_source

    return _write(root / "soft.yaml", config()), f"dataset:{write_source(root)}@val"


def _write(path: Path, cfg: dict[str, object]) -> Path:
    import json

    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("make", [_edir_config, _soft_config], ids=["edir", "soft-refine"])
def test_two_shards_merged_equal_the_unsharded_build(make: object, tmp_path: Path) -> None:
    cfg, sources = make(tmp_path)  # type: ignore[operator]
    one, two = tmp_path / "one", tmp_path / "two"

    def build(*args: str) -> None:
        res = runner.invoke(app, ["build", str(cfg), "--sources", sources, "-q", *args])
        assert res.exit_code == 0, res.output

    build("-o", str(one))
    build("-o", str(two), "--shard", "0/2")
    assert "shard(s) [1] of 2 have not finished" in refused("build", str(cfg), "-o", str(two), "--merge", "2")
    build("-o", str(two), "--shard", "1/2")
    assert not two.exists()
    res = runner.invoke(app, ["build", str(cfg), "-o", str(two), "--merge", "2", "-q"])
    assert res.exit_code == 0, res.output
    a, b = _files(one), _files(two)
    assert {"cirbench.json", "README.md", "test/queries.parquet"} <= set(a)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
