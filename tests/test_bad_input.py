"""Mistaken input gets one clear line: the file, the record and the field (or the option and a suggestion),
a non-zero exit, no traceback, and nothing written. Everything runs through `cirbench` (CliRunner).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cirbench.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner(env={"COLUMNS": "400", "CIRBENCH_DATA": None, "CIRBENCH_DEBUG": None})


def refused(*args: str, code: int = 2) -> str:
    """Run `cirbench ARGS`; it must exit with `code` through the error handler (no exception escapes)."""
    res = runner.invoke(app, list(args))
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output, res.output
    assert res.exit_code == code, res.output
    return " ".join(res.output.split())  # rich may wrap; compare words


def ok(*args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


def ev(out: Path, task: str, *extra: str, model: str = "random") -> list[str]:
    return ["eval", "-m", model, "-t", task, "-o", str(out), "-q", "--bootstrap", "5", "--no-cache", *extra]


def parts(text: str, *want: str) -> None:
    missing = [w for w in want if w not in text]
    assert not missing, f"{missing} not in: {text}"


# ----------------------------------------------------------------------------------------------------
# Markup: file text is printed as written
# ----------------------------------------------------------------------------------------------------


def test_brackets_in_messages_print_as_written(tmp_path: Path) -> None:
    """SoFT's layout names `[/mt_pipeline/llm]`, which rich read as a closing tag (MarkupError), and a path
    with `[old]` lost that part."""
    (tmp_path / "empty").mkdir()
    text = refused(*ev(tmp_path / "o", "soft-cirr-multi"), "--data-dir", str(tmp_path / "empty"))
    parts(text, "error:", "[/mt_pipeline/llm]", "--task-option base_dir=DIR")
    odd = tmp_path / "[old]" / "data"
    text = refused(*ev(tmp_path / "o", str(odd)))
    parts(text, f"{odd}/cirbench.json", "missing")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------------
# Names: suggestions, case, the family prefix of a hub id
# ----------------------------------------------------------------------------------------------------


def test_task_names(tiny_dataset: Path, tmp_path: Path) -> None:
    parts(refused(*ev(tmp_path / "o", "cirrr")), "unknown task 'cirrr'", "did you mean 'cirr'",
          "cirbench tasks")
    parts(refused(*ev(tmp_path / "o", "mmlandmark-g2s")), "did you mean 'mmlandmarks-g2s'")
    # a registered name in capitals is that task (here: its data directory is what is missing)
    parts(refused(*ev(tmp_path / "o", "CIRR")), "no data directory for task 'cirr'", "--data-dir")
    parts(refused("tasks", "cirrr"), "did you mean 'cirr'")
    parts(refused("validate-submission", str(tmp_path / "s.json"), "--task", "cirrr"), "did you mean 'cirr'")
    parts(refused("card", "cirrr", "-o", str(tmp_path / "cards")), "did you mean 'cirr'")
    assert not (tmp_path / "o").exists() and not (tmp_path / "cards").exists()


def test_model_names(tiny_dataset: Path, tmp_path: Path) -> None:
    t = str(tiny_dataset)
    parts(refused(*ev(tmp_path / "o", t, model="clip-b23")), "unknown model 'clip-b23'",
          "did you mean 'clip-b32'")
    parts(refused(*ev(tmp_path / "o", t, model="randm")), "did you mean 'random'")
    parts(refused(*ev(tmp_path / "o", t, model="openai/clip-vit-base-patch32")),
          "hf-clip:openai/clip-vit-base-patch32")
    parts(refused(*ev(tmp_path / "o", t, model="Alibaba-NLP/gme-Qwen2-VL-2B-Instruct")),
          "gme:Alibaba-NLP/gme-Qwen2-VL-2B-Instruct")
    parts(refused(*ev(tmp_path / "o", t, model="hf-clp:x/y")), "unknown model family 'hf-clp'",
          "did you mean 'hf-clip'")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------------
# Options: refused with the accepted list, everywhere
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, option, suggestion", [
    ("random", "sed=1", "seed"),
    ("cirbench-fusion", "resolutoin=96", "resolution"),
    ("image-only", "channel_last=true", "channels_last"),
    ("text-only", "devic=cpu", "device"),
    ("hf-clip:{tmp}/no-clip", "fusoin=sum", "fusion"),  # an adapter: refused before any file is read
    ("gme:{tmp}/no-gme", "max_lenght=9", "max_length"),
    ("open_clip:ViT-B-32/openai", "alhpa=0.3", "alpha"),
])
def test_unknown_model_options(tiny_dataset: Path, tmp_path: Path, model: str, option: str,
                               suggestion: str) -> None:
    model = model.format(tmp=tmp_path)
    text = refused(*ev(tmp_path / "o", str(tiny_dataset), "--option", option, model=model))
    name = option.split("=")[0]
    parts(text, f"unknown option '{name}'", f"did you mean '{suggestion}'", "accepted --option names:")
    assert not (tmp_path / "o").exists()


def test_unknown_task_options_say_task_option(tiny_dataset: Path, tmp_path: Path) -> None:
    from .test_tasks_cirr import write_cirr

    root = write_cirr(tmp_path / "cirr")
    text = refused(*ev(tmp_path / "o", "cirr", "--data-dir", str(root), "--task-option", "check_image=false"))
    parts(text, "task 'cirr'", "unknown option 'check_image'", "did you mean 'check_images'",
          "accepted --task-option names: check_images, image_root")
    parts(refused(*ev(tmp_path / "o", "synthetic-mini", "--task-option", "sed=3")), "did you mean 'seed'")
    # a native dataset takes no task option and no other protocol than its own
    parts(refused(*ev(tmp_path / "o", str(tiny_dataset), "--task-option", "check_images=false")),
          "unknown option 'check_images'", "accepted --task-option names: none")
    parts(refused(*ev(tmp_path / "o", str(tiny_dataset), "--protocol", "circo")), "--protocol 'circo'")
    # missing images: the way out is spelt as a task option
    (root / "img_raw" / "dev").rename(root / "img_raw" / "dev-moved")
    parts(refused(*ev(tmp_path / "o", "cirr", "--data-dir", str(root))), "--task-option check_images=false")
    assert not (tmp_path / "o").exists()


def test_tasks_name_lists_splits_protocols_and_options() -> None:
    text = ok("tasks", "fashioniq")
    parts(text, "splits: val (default), train, test", "protocols (--protocol): official (default)",
          "union-val", "--task-option name=value", "categories", "image_ext", "auto (default",
          "expected layout:")
    parts(ok("tasks", "EDIR"), "check_images", "true (default)", "extract")


# ----------------------------------------------------------------------------------------------------
# CLI values
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag, value", [("--limit", "-5"), ("--limit", "0"), ("--batch-size", "0"),
                                         ("--top-k", "0"), ("--workers", "-1"), ("--bootstrap", "-3")])
def test_out_of_range_values(tiny_dataset: Path, tmp_path: Path, flag: str, value: str) -> None:
    text = refused(*ev(tmp_path / "o", str(tiny_dataset), flag, value))
    parts(text, f"'{flag}'")
    assert not (tmp_path / "o").exists()


def test_choices_and_repeats(tiny_dataset: Path, tmp_path: Path) -> None:
    t = str(tiny_dataset)
    parts(refused(*ev(tmp_path / "o", t, "--search-dtype", "float8")),
          "'float8' is not one of float32, bfloat16")
    parts(refused(*ev(tmp_path / "o", t, "--search-backend", "fais")), "did you mean 'faiss'")
    parts(refused(*ev(tmp_path / "o", t, "--rerank", "soft")), "needs --rerank-option constraints=")
    parts(refused(*ev(tmp_path / "o", t, "--rerank", "sotf")), "unknown reranker 'sotf'",
          "did you mean 'soft'")
    parts(refused(*ev(tmp_path / "o", t, "--rerank", "soft", "--rerank-option", "constrants=c.json")),
          "did you mean 'constraints'", "--rerank-option names")
    parts(refused(*ev(tmp_path / "o", t, "--rerank", "soft", "--rerank-option", "constraints=c.json",
                      "--rerank-option", "lambda=2")), "lambda must be in [0, 1]")
    parts(refused(*ev(tmp_path / "o", t, "--rerank-option", "lambda=1")), "--rerank-option needs --rerank")
    parts(refused(*ev(tmp_path / "o", t, "--retriever", "rff")), "did you mean 'rrf'")
    parts(refused(*ev(tmp_path / "o", t, "-t", "cirr")), "--task is given 2 times", "one model on one task")
    parts(refused(*ev(tmp_path / "o", t, "-m", "cirbench-fusion")), "--model is given 2 times")
    parts(refused(*ev(tmp_path / "o", t, "--option", "seed")), "name=value")
    parts(refused(*ev(tmp_path / "o", t, "--option", "seed=1", "--option", "seed=2")), "seed is given twice")
    assert not (tmp_path / "o").exists()


def test_device_without_gpu_fails_before_anything(tiny_dataset: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import cirbench.evaluation as E

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(E, "get_task", lambda *a, **k: pytest.fail("the task was read"))
    parts(refused(*ev(tmp_path / "o", str(tiny_dataset), "--device", "cuda")), "no CUDA GPU", "--device")
    parts(refused(*ev(tmp_path / "o", str(tiny_dataset), "--device", "tpu")), "unknown device 'tpu'")
    with pytest.raises(ValueError, match="no CUDA GPU"):  # the Python API refuses it too
        E.evaluate("random", str(tiny_dataset), output=tmp_path / "o",
                   options=E.EvalOptions(device="cuda:0", progress=False))
    assert not (tmp_path / "o").exists()


def test_output_that_is_a_file(tiny_dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "o").write_text("mine")
    parts(refused(*ev(tmp_path / "o", str(tiny_dataset))), "is a file, not a directory")
    assert (tmp_path / "o").read_text() == "mine"


# ----------------------------------------------------------------------------------------------------
# No traceback for a user error, in any command
# ----------------------------------------------------------------------------------------------------


def test_commands_without_tracebacks(tiny_dataset: Path, tmp_path: Path) -> None:
    parts(refused("build", "pipelines/synthetic.yaml", "--preset", "minni", "-o", str(tmp_path / "b")),
          "cirbench/pipelines/synthetic.yaml" if not Path("pipelines/synthetic.yaml").exists()
          else "pipelines/synthetic.yaml", "unknown preset 'minni'", "did you mean 'mini'")
    parts(refused("build", "synthetic", "--limit", "-5", "-o", str(tmp_path / "b")), "'--limit'")
    parts(refused("train", "/nonexistent", "-o", str(tmp_path / "h.safetensors"), "-q"),
          "/nonexistent/cirbench.json", "missing")
    parts(refused("train", str(tiny_dataset), "-o", str(tmp_path / "h.safetensors"), "-q"),
          "unknown split 'train'", "cirbench.json")
    parts(refused("train", str(tiny_dataset), "-o", str(tmp_path / "h.pt"), "-q"), ".safetensors")
    parts(refused("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")), "a.json", "missing")
    (tmp_path / "s.json").write_text("{oops")
    parts(refused("validate-submission", str(tmp_path / "s.json"), "--task", "circo", code=1),
          f"{tmp_path / 's.json'}: not valid JSON")
    parts(refused("card", "-o", str(tmp_path / "cards")), "--all")
    assert not any(tmp_path.glob("b*")) and not any(tmp_path.glob("h.*"))
    assert not (tmp_path / "cards").exists()


@pytest.mark.parametrize("edit, want", [
    (lambda t: t.replace("render:", "rendr:", 1), ["unknown key(s) ['rendr']", "did you mean 'render'"]),
    (lambda t: t.replace("queries_per_reference: 4", "queries_per_referense: 4", 1),
     ["presets.mini.test", "queries_per_referense", "did you mean 'queries_per_reference'"]),
    (lambda t: t.replace("workers: 2", "workers: two", 1), ["render.workers", "'two'"]),
    (lambda t: t.replace("queries: 1000", "queries: lots", 1), ["presets.mini.test", "queries", "'lots'"]),
    (lambda t: "pipeline: synthtic\n", ["unknown pipeline 'synthtic'", "did you mean 'synthetic'"]),
    (lambda t: "- a\n", ["a YAML mapping", "found list"]),
    (lambda t: "pipeline: [x\n", ["not valid YAML"]),
])
def test_config_typos_name_the_file(tmp_path: Path, edit: object, want: list[str]) -> None:
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(edit((ROOT / "pipelines" / "synthetic.yaml").read_text()))  # type: ignore[operator]
    parts(refused("build", str(cfg), "-o", str(tmp_path / "out"), "--limit", "3", "-q"), str(cfg), *want)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_build_never_replaces_a_users_folder(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    parts(refused("build", "synthetic", "-o", str(mine), "--limit", "2", "-q"), "not a cirbench dataset",
          str(mine))
    assert (mine / "thesis.tex").read_text() == "years of work"
    # the synthetic task builds into --data-dir on first use: the same refusal
    parts(refused(*ev(tmp_path / "o", "synthetic-mini", "--data-dir", str(mine))), "not a cirbench dataset")
    assert (mine / "thesis.tex").read_text() == "years of work" and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------------
# The native format names the right file
# ----------------------------------------------------------------------------------------------------


def _set_column(path: Path, name: str, values: list) -> None:
    t = pq.read_table(path)
    i = t.column_names.index(name)
    pq.write_table(t.set_column(i, name, pa.array(values, type=t.schema.field(name).type)), path)


def test_native_format_messages(tiny_dataset: Path, tmp_path: Path) -> None:
    t = str(tiny_dataset)
    manifest = tiny_dataset / "cirbench.json"
    good = manifest.read_text()
    manifest.write_text("[1, 2]")
    parts(refused(*ev(tmp_path / "o", t)), "cirbench.json", "expected a JSON object, found list")
    m = json.loads(good)
    del m["splits"]
    manifest.write_text(json.dumps(m))
    parts(refused(*ev(tmp_path / "o", t)), "cirbench.json", "field 'splits'")
    m = json.loads(good)
    del m["splits"]["test"]["corpus"]
    manifest.write_text(json.dumps(m))
    parts(refused(*ev(tmp_path / "o", t)), "cirbench.json", "record 'test'", "field 'splits.test.corpus'")
    manifest.write_text(good)
    parts(refused(*ev(tmp_path / "o", t, "--split", "tset")), "unknown split 'tset'", "did you mean 'test'")
    corpus = tiny_dataset / "test" / "corpus.parquet"
    _set_column(corpus, "id", ["a", "b", "c", "d", "a"])  # a duplicate corpus id is the corpus file's fault
    parts(refused(*ev(tmp_path / "o", t)), "duplicate id", "corpus.parquet", "record 'a'", "field 'id'")
    _set_column(corpus, "id", ["a", "b", "c", "d", "e"])
    queries = tiny_dataset / "test" / "queries.parquet"
    _set_column(queries, "relevant_ids", [["b"], ["nope"], ["e"]])
    parts(refused(*ev(tmp_path / "o", t)), "unknown corpus id 'nope'", "queries.parquet", "record 'q2'",
          "field 'relevant_ids'")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------------
# The precomputed model: no images needed, every row checked
# ----------------------------------------------------------------------------------------------------

IDS = {"query": ["q1", "q2", "q3"], "document": ["a", "b", "c", "d", "e"]}


def _rows() -> list[tuple]:
    rng = np.random.default_rng(0)
    return [(i, r, rng.standard_normal(4).tolist()) for r, ids in IDS.items() for i in ids]


def _write(path: Path, rows: list[tuple], vtype: pa.DataType | None = None) -> Path:
    ids, roles, vecs = zip(*rows)
    pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "role": pa.array(roles, pa.string()),
                             "vector": pa.array(vecs, vtype or pa.list_(pa.float64()))}), path)
    return path


def test_precomputed_needs_no_images(tiny_dataset: Path, tmp_path: Path) -> None:
    """The vectors were made elsewhere: the dataset's image files need not exist (none is decoded)."""
    corpus = tiny_dataset / "test" / "corpus.parquet"
    n = pq.read_table(corpus).num_rows
    _set_column(corpus, "image", [None] * n)
    _set_column(corpus, "image_path", [f"images/{i}.png" for i in range(n)])  # no such files
    vectors = _write(tmp_path / "v.parquet", _rows())
    ok(*ev(tmp_path / "o", str(tiny_dataset), model=f"precomputed:{vectors}"))
    assert (tmp_path / "o" / "result.json").is_file()


def _with(rows: list[tuple], n: int, **change: object) -> list[tuple]:
    i, r, v = rows[n]
    rows[n] = (change.get("id", i), change.get("role", r), change.get("vector", v))
    return rows


@pytest.mark.parametrize("rows, want", [
    (_rows() + [_rows()[4]],
     ["duplicate (document, 'b') row", "row 4 already", "record 'row 8'", "field 'id'"]),
    (_with(_rows(), 1, id=None), ["id must be a non-empty string", "record 'row 1'", "field 'id'"]),
    (_with(_rows(), 5, vector=None), ["vector is null", "record 'row 5'", "field 'vector'"]),
    (_with(_rows(), 5, vector=[1.0, None, 2.0, 3.0]), ["null value", "record 'row 5'"]),
    (_with(_rows(), 6, vector=[0.0] * 4), ["all zero", "record 'row 6'", "field 'vector'"]),
    (_with(_rows(), 0, vector=[float("nan"), 1.0, 1.0, 1.0]), ["NaN", "record 'row 0'"]),
    (_with(_rows(), 3, vector=[1.0, 2.0]), ["width 2 differs from the first row's 4", "record 'row 3'"]),
    (_with(_rows(), 2, role="querry"),
     ["role must be 'query' or 'document'", "record 'row 2'", "field 'role'"]),
])
def test_precomputed_file_rows(tiny_dataset: Path, tmp_path: Path, rows: list[tuple], want: list[str]
                               ) -> None:
    vectors = _write(tmp_path / "v.parquet", rows)
    text = refused(*ev(tmp_path / "o", str(tiny_dataset), model=f"precomputed:{vectors}"))
    parts(text, str(vectors), *want)
    assert not (tmp_path / "o").exists()


def test_precomputed_file_shapes(tiny_dataset: Path, tmp_path: Path) -> None:
    t = str(tiny_dataset)
    strings = [(i, r, ["0.1", "x", "0.3", "0.4"]) for i, r, _ in _rows()]
    p = _write(tmp_path / "s.parquet", strings, pa.list_(pa.string()))
    parts(refused(*ev(tmp_path / "o", t, model=f"precomputed:{p}")), "s.parquet", "list of numbers")
    p = _write(tmp_path / "v.parquet", _rows())
    parts(refused(*ev(tmp_path / "o", t, "--option", "dim=8", model=f"precomputed:{p}")), "width 4", "dim=8")
    parts(refused(*ev(tmp_path / "o", t, "--option", "normalise=0", model=f"precomputed:{p}")),
          "unknown option 'normalise'")
    (tmp_path / "junk.parquet").write_text("id,role,vector\n")
    parts(refused(*ev(tmp_path / "o", t, model=f"precomputed:{tmp_path / 'junk.parquet'}")), "junk.parquet",
          "parquet")
    parts(refused(*ev(tmp_path / "o", t, model=f"precomputed:{tmp_path / 'none.parquet'}")), "none.parquet",
          "missing")
    d = tmp_path / "npy"
    d.mkdir()
    np.save(d / "query.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (d / "query_ids.txt").write_text("q1\n")
    parts(refused(*ev(tmp_path / "o", t, model=f"precomputed:{d}")), "query.npy", "never loaded")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------------
# The leaderboard skips what it cannot read
# ----------------------------------------------------------------------------------------------------


def test_leaderboard_skips_a_malformed_result(tiny_dataset: Path, tmp_path: Path) -> None:
    ok(*ev(tmp_path / "results" / "good", str(tiny_dataset)))
    bad = tmp_path / "results" / "bad" / "result.json"
    bad.parent.mkdir()
    bad.write_text('{"task": ')
    text = ok("leaderboard", str(tmp_path / "results"), "-o", str(tmp_path / "lb"), "--resamples", "10")
    parts(text, "warning: skipped", str(bad), "malformed JSON")
    index = (tmp_path / "lb" / "README.md").read_text()
    assert "bad/result.json" in index and "random" in (tmp_path / "lb" / "leaderboard.csv").read_text()
