"""`--engine ray`: the EDIR build and a method's artifact stage on a local Ray instance give the bytes the
local engine gives; a Ray build killed with SIGKILL resumes with nothing lost or redone and leaves no Ray
process behind; without Ray installed, `--engine ray` says how to install it.

One Ray instance for the module (num_cpus=2, this machine's cores); the engine uses it and leaves it up.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cirbench.cli import app
from tests.helpers.edit_pipelines import (
    TINY_CALL_KWARGS,
    FakeChatServer,
    build_tiny_ip2p,
    write_image_folder,
)

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (pip install 'cirbench[ray]')")
runner = CliRunner(env={"COLUMNS": "250"})
N_SOURCES = 5


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """One local Ray for the module, on this machine's 2 cores, in a short temporary folder of its own."""
    if not HAVE_RAY:
        pytest.skip("ray is not installed")
    import ray

    temp = tempfile.mkdtemp(prefix="cbray-", dir="/tmp")
    os.environ["OMP_NUM_THREADS"] = "1"  # the actors' torch threads, as the local runs below
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             _temp_dir=temp)
    try:
        yield
    finally:
        ray.shutdown()
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Local runs with one torch thread, as Ray's actors (OMP_NUM_THREADS=1): the same kernels, pixels."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeChatServer]:
    with FakeChatServer() as s:
        yield s


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, server: FakeChatServer) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("engine")
    ip2p = build_tiny_ip2p(root / "ip2p")
    images = write_image_folder(root / "imgs", N_SOURCES + 1, size=32, seed=7, duplicates=0)
    cfg = {
        "pipeline": "edir",
        "seed": 3,
        "sources": {"min_size": 16},
        "distractors": {"count": 1},
        "instructions": {"subcategories": ["Color", "Style", "Complex"], "per_source": 2},
        "lmm": {"backend": "openai", "openai": {"model": "fake-vlm", "base_url": server.url,
                                                 "backoff_s": 0.01, "concurrency": 2}},
        "editor": {"model": str(ip2p), "size": 32, "multiple_of": 8, "call": TINY_CALL_KWARGS["ip2p"]},
        "verify": {
            "lmm": {"enabled": True},
            "embedding": {"model": "random", "unrelated": 2, "min_margin": None, "min_direction": None},
        },
    }
    path = root / "edir.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return {"root": root, "config": path, "sources": f"folder:{images}"}


def build(setup: dict[str, Any], out: Path, *more: str) -> None:
    res = runner.invoke(app, ["build", str(setup["config"]), "--out", str(out), "--sources",
                              setup["sources"], "--quiet", *more])
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def reference(setup: dict[str, Any]) -> Path:
    """The local engine's build (today's code path)."""
    out = setup["root"] / "local"
    build(setup, out)
    return out


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def same_dataset(a: Path, b: Path) -> None:
    fa, fb = files(a), files(b)
    assert sorted(fa) == sorted(fb)
    assert {"cirbench.json", "test/queries.parquet", "test/corpus.parquet", "rejections.jsonl"} <= set(fa)
    for rel in fa:
        assert fa[rel] == fb[rel], rel


def units(out: Path) -> list[Path]:
    return sorted(out.with_name(out.name + ".work").glob("units/*/*.json"))


@needs_ray
def test_ray_build_equals_local_and_sharded_builds(
    ray_instance: None, setup: dict[str, Any], reference: Path, server: FakeChatServer
) -> None:
    out = setup["root"] / "ray"
    build(setup, out, "--engine", "ray")
    same_dataset(out, reference)
    assert len(units(out)) == N_SOURCES
    # shard 0 on Ray, shard 1 locally, merged: the same dataset again
    sharded = setup["root"] / "sharded"
    build(setup, sharded, "--shard", "0/2", "--engine", "ray")
    build(setup, sharded, "--shard", "1/2")
    res = runner.invoke(app, ["build", str(setup["config"]), "--out", str(sharded), "--merge", "2"])
    assert res.exit_code == 0, res.output
    same_dataset(sharded, reference)


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time of every live process below `root` (from /proc), read independently of cirbench."""
    parent: dict[int, int] = {}
    start: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rfind(")") + 2:].split()
            parent[int(entry)], start[int(entry)] = int(fields[1]), fields[19]
    found: set[int] = set()
    todo = [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in found]
        found.update(kids)
        todo.extend(kids)
    return {p: start[p] for p in found}


def _alive(procs: dict[int, str]) -> list[int]:
    out = []
    for pid, st in procs.items():
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2:].split()
        if fields[19] == st and fields[0] != "Z":
            out.append(pid)
    return out


@needs_ray
def test_sigkill_of_a_ray_build_resumes_and_leaves_no_ray_process(
    ray_instance: None, setup: dict[str, Any], reference: Path
) -> None:
    out = setup["root"] / "killed"
    temps_before = set(Path("/tmp").glob("cirbench-ray-*"))
    proc = subprocess.Popen(
        [sys.executable, "-c", "from cirbench.cli import app; app()", "build", str(setup["config"]),
         "--out", str(out), "--sources", setup["sources"], "--engine", "ray", "--quiet"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not units(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    ray_procs = _descendants(proc.pid)  # the Ray instance it started: head, raylet, agents, workers
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in units(out)}
    assert alive, f"the build ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
    assert 1 <= len(done) < N_SOURCES and not out.exists()  # killed mid-way: some units, no export
    assert len(ray_procs) >= 3, ray_procs  # it did start a Ray instance of its own
    # nothing of that Ray instance outlives the killed driver, and its temporary folder goes with it
    deadline = time.monotonic() + 60
    while _alive(ray_procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(ray_procs), [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in _alive(ray_procs)]
    assert set(Path("/tmp").glob("cirbench-ray-*")) <= temps_before
    # the rerun (on Ray again) keeps the finished units as they are and adds only the missing ones
    build(setup, out, "--engine", "ray")
    assert {p: p.stat().st_mtime_ns for p in units(out) if p in done} == done
    assert len(units(out)) == N_SOURCES
    same_dataset(out, reference)


def test_engine_ray_without_ray_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is absent
    res = runner.invoke(app, ["build", "edir", "--out", str(tmp_path / "o"), "--sources",
                              f"folder:{tmp_path}", "--engine", "ray"])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install 'cirbench[ray]'" in lines[0], res.output
    assert not (tmp_path / "o").exists()
