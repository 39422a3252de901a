"""Resumable and shardable builds: SIGKILL mid-way and rerun, or shards merged: the same bytes as one run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cirbench.builders.edir import merge_shards, run_edir
from cirbench.builders.edir.editors import DiffusersEditor
from cirbench.core.dataset import load_native
from tests.helpers.edit_pipelines import TINY_CALL_KWARGS, build_tiny_ip2p, write_image_folder

N_SOURCES = 6
OUTPUT_FILES = (
    "cirbench.json",
    "README.md",
    "contact_sheet.png",
    "rejections.jsonl",
    "build/prompts.json",
    "test/queries.parquet",
    "test/corpus.parquet",
    "test/references.parquet",
)

RUN = """
import json, sys
from cirbench.builders.edir import run_edir
cfg, out, src = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
run_edir(cfg, out, sources=src, progress=False)
"""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Module scope, so it is set before the reference build: a float kernel's result can depend on the thread
    count, and the killed subprocess runs with OMP_NUM_THREADS=1 too (same kernels, same pixels)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("resume")
    ip2p = build_tiny_ip2p(root / "ip2p")
    images = write_image_folder(root / "imgs", N_SOURCES + 1, size=32, seed=3, duplicates=0)
    cfg = {
        "pipeline": "edir",
        "seed": 5,
        "sources": {"min_size": 16},
        "distractors": {"count": 1},
        "instructions": {"subcategories": ["Color", "Style", "Complex"], "per_source": 2},
        "editor": {"model": str(ip2p), "size": 32, "multiple_of": 8, "call": TINY_CALL_KWARGS["ip2p"]},
        "verify": {
            "embedding": {"model": "random", "unrelated": 2, "min_margin": None, "min_direction": 0.0}
        },
    }
    return {
        "root": root,
        "cfg": cfg,
        "sources": f"folder:{images}",
        "editor": DiffusersEditor(str(ip2p), call=TINY_CALL_KWARGS["ip2p"]),
    }


@pytest.fixture(scope="module")
def reference(setup: dict[str, Any]) -> Path:
    """One uninterrupted build."""
    return run_edir(setup["cfg"], setup["root"] / "ref", sources=setup["sources"], progress=False)


def same_files(a: Path, b: Path) -> None:
    """Every file of the two datasets, byte for byte (tables, manifest, card, images, logs)."""
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert set(OUTPUT_FILES) <= set(names)
    for rel in names:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def units(out: Path) -> list[Path]:
    return sorted(out.with_name(out.name + ".work").glob("units/*/*.json"))


def test_sigkill_mid_build_then_rerun_equals_an_uninterrupted_build(
    setup: dict[str, Any], reference: Path
) -> None:
    out = setup["root"] / "killed"
    cfg_file = setup["root"] / "cfg.json"
    cfg_file.write_text(json.dumps(setup["cfg"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN, str(cfg_file), str(out), setup["sources"]],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not units(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(units(out))
    assert alive, f"the build ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= done_at_kill < N_SOURCES and not out.exists()  # killed mid-way: some units, no export
    # the rerun redoes only what is missing (the editor is counted)
    calls: list[int] = []
    editor = setup["editor"]
    orig = editor.edit

    def counting(image: Any, prompts: Any, seeds: Any) -> Any:
        calls.append(len(prompts))
        return orig(image, prompts, seeds)

    editor.edit = counting
    try:
        run_edir(setup["cfg"], out, sources=setup["sources"], progress=False, editor=editor)
    finally:
        del editor.edit
    assert len(calls) == N_SOURCES - done_at_kill
    assert len(units(out)) == N_SOURCES
    same_files(out, reference)
    task = load_native(out, "test")
    ids = [q.id for q in task.queries]
    assert len(ids) == len(set(ids)) and ids == [q.id for q in load_native(reference, "test").queries]


def test_rerun_of_a_finished_build_reuses_everything(setup: dict[str, Any], reference: Path) -> None:
    class NoEditor:
        def fingerprint(self) -> dict[str, Any]:
            raise AssertionError("no stage may load")

        def edit(self, *a: Any) -> list[Any]:
            raise AssertionError("no edit may run")

    before = {rel: (reference / rel).read_bytes() for rel in OUTPUT_FILES}
    run_edir(setup["cfg"], reference, sources=setup["sources"], progress=False, editor=NoEditor())
    assert {rel: (reference / rel).read_bytes() for rel in OUTPUT_FILES} == before


def test_shards_merge_to_the_single_run(setup: dict[str, Any], reference: Path) -> None:
    out = setup["root"] / "sharded"
    assert run_edir(
        setup["cfg"], out, sources=setup["sources"], shard=(1, 3), progress=False, editor=setup["editor"]
    ) == out.with_name("sharded.work")
    with pytest.raises(FileNotFoundError, match=r"shard\(s\) \[0, 2\] of 3 have not finished"):
        merge_shards(out, 3)
    for i in (0, 2):
        run_edir(
            setup["cfg"], out, sources=setup["sources"], shard=(i, 3), progress=False, editor=setup["editor"]
        )
    assert not out.exists()
    assert merge_shards(out, 3) == out
    same_files(out, reference)


def test_limit_reuses_units_and_shards_agree(setup: dict[str, Any], reference: Path) -> None:
    """A limited build of the same work dir reuses the finished units (they do not depend on the limit)."""
    a, b = setup["root"] / "lim1", setup["root"] / "lim2"
    run_edir(setup["cfg"], a, sources=setup["sources"], limit=2, progress=False, editor=setup["editor"])
    for i in range(2):
        run_edir(
            setup["cfg"],
            b,
            sources=setup["sources"],
            limit=2,
            shard=(i, 2),
            progress=False,
            editor=setup["editor"],
        )
    merge_shards(b, 2)
    same_files(a, b)
    assert len({q.reference_id for q in load_native(a, "test").queries}) <= 2


def test_lookahead_does_not_change_the_result(setup: dict[str, Any], reference: Path) -> None:
    """Planning ahead and finishing behind in threads (work.lookahead) only changes when things happen."""
    cfg = {**setup["cfg"], "work": {"lookahead": 0}}
    out = run_edir(cfg, setup["root"] / "sequential", sources=setup["sources"], progress=False,
                   editor=setup["editor"])
    same_files(out, reference)
