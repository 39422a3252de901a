"""A build killed with SIGKILL leaves no processes and, after the rerun, no temporary folders.

Both tests run the real `cirbench build` in a subprocess and kill it with SIGKILL. To kill it at a known
moment the subprocess blocks in one place (a sitecustomize-free `python -c` wrapper patches one function
to wait for the test): while its render workers are alive, or while its temporary dataset folder exists.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(cond: object, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not cond():  # type: ignore[operator]
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.1)


def _config(tmp_path: Path, workers: int) -> Path:
    cfg = tmp_path / "synthetic.yaml"
    text = (ROOT / "pipelines" / "synthetic.yaml").read_text()
    cfg.write_text(text.replace("workers: 2", f"workers: {workers}"))
    return cfg


def _start(code: str, args: list[str], tmp_path: Path) -> subprocess.Popen[bytes]:
    """`cirbench ARGS` in a new process, with `code` run first (the patch that makes it wait)."""
    script = textwrap.dedent(code) + "\nimport sys\nfrom cirbench.cli import app\nsys.argv = ['cirbench', *" \
        + repr(args) + "]\napp()\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CIRBENCH_CACHE": str(tmp_path / "cache")}
    return subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_leaves_no_render_workers(tmp_path: Path) -> None:
    """The parent blocks after its two render workers started; SIGKILL; the workers must go too."""
    flag = tmp_path / "workers-started"
    code = f"""
        import concurrent.futures.process as P, pathlib, time
        shutdown = P.ProcessPoolExecutor.shutdown
        def hold(self, *a, **k):
            pathlib.Path({str(flag)!r}).touch()
            time.sleep(600)
        P.ProcessPoolExecutor.shutdown = hold
    """
    out = tmp_path / "out"
    proc = _start(code, ["build", str(_config(tmp_path, 2)), "-o", str(out), "--limit", "15", "-q"], tmp_path)
    try:
        _wait(lambda: flag.exists() or proc.poll() is not None)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        workers = _children(proc.pid)
        assert len(workers) >= 2, workers  # the pool's processes (and its resource tracker, if any)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        _wait(lambda: not any(_alive(w) for w in workers), timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in _children(proc.pid):
            os.kill(w, signal.SIGKILL)


def test_rerun_removes_what_a_killed_write_left(tmp_path: Path) -> None:
    """Killed while the dataset is written into `.out.tmp-*`; the rerun cleans it and writes `out` whole."""
    flag = tmp_path / "writing"
    code = f"""
        import cirbench.core.dataset as D, pathlib, time
        def hold(*a, **k):
            pathlib.Path({str(flag)!r}).touch()
            time.sleep(600)
        D._replace_dir = hold
    """
    out = tmp_path / "out"
    args = ["build", str(_config(tmp_path, 1)), "-o", str(out), "--limit", "15", "-q"]
    proc = _start(code, args, tmp_path)
    try:
        _wait(lambda: flag.exists() or proc.poll() is not None)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        left = list(tmp_path.glob(".out.tmp-*"))
        assert len(left) == 1 and (left[0] / "cirbench.json").is_file()  # written, not yet moved in place
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert left[0].exists() and not out.exists()
    rerun = subprocess.run([sys.executable, "-m", "cirbench.cli", *args], cwd=tmp_path, capture_output=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert (out / "cirbench.json").is_file()
    assert not list(tmp_path.glob(".out.*")), list(tmp_path.glob(".out.*"))
