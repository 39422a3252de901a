"""The Ray engine: workers are actors of a fixed pool (one per GPU, or sized to the CPUs), items stream
through Ray Data `map_batches`, and results come back to the driver, which writes them.

Ray's own output is switched off (no progress bars, no worker logs on the driver, errors only): cirbench's
progress bar is the one the user sees. Without an address a local Ray instance is started (sized to this
machine) in a temporary folder of its own and stopped on exit, on SIGTERM and on Ctrl-C (and, after a
SIGKILL, by `reaper.py`); with one, the
user's cluster is joined and left running. A Ray instance that is already up in this process (a notebook, a
test) is used as it is and left up.

On a cluster, the workers read inputs (sources, work-dir files, model folders) by path: the work directory
and the inputs must be on storage every node sees, as for `--shard` runs.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from cirbench.engine.base import DEFAULT_NEEDS, Needs, WorkerFactory

P = TypeVar("P")
MAX_CPU_WORKERS = 8
"""A small fixed pool on CPU-only clusters: every worker holds a copy of the stage's models."""


def _quiet_ray_data() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    for name in ("ray", "ray.data", "ray.air", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)


class _Worker:
    """One actor: builds the stage's worker once, then turns batches of item indexes into pickled results.

    The pickles travel only between this cluster's own processes (Ray pickles every argument anyway)."""

    def __init__(self, factory: WorkerFactory, items: Sequence[Any]) -> None:
        _quiet_ray_data()
        self.items = items
        self.work = factory()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        idx = [int(i) for i in batch["idx"]]
        out = self.work([self.items[i] for i in idx])
        if len(out) != len(idx):
            raise RuntimeError(f"a worker returned {len(out)} results for {len(idx)} items")
        blobs = np.empty(len(out), dtype=object)
        blobs[:] = [pickle.dumps(o, protocol=pickle.HIGHEST_PROTOCOL) for o in out]
        return {"idx": np.asarray(idx, dtype=np.int64), "out": blobs}


class RayEngine:
    """Work on Ray: `map` streams the items through a pool of actors built by `factory`."""

    name = "ray"

    def __init__(self, *, address: str | None = None) -> None:
        self.address = address
        self._owned = False
        self._temp: str | None = None
        self._old_term: Any = None
        self._reaper: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        import ray

        if ray.is_initialized():
            _quiet_ray_data()
            return
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR,
                                  "include_dashboard": False, "configure_logging": True}
        if self.address is not None:
            ray.init(address=self.address, **common)
        else:
            # a short path: Ray's socket names must fit in 107 bytes
            short = "/tmp" if os.path.isdir("/tmp") else None
            self._temp = tempfile.mkdtemp(prefix="cirbench-ray-", dir=short)
            self._reaper = subprocess.Popen(
                [sys.executable, "-m", "cirbench.engine.reaper", self._temp],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            ray.init(num_cpus=os.cpu_count() or 1, _temp_dir=self._temp, **common)
        self._owned = True
        atexit.register(self.close)
        if self.address is None:
            try:
                self._old_term = signal.signal(signal.SIGTERM, _exit_on_term)
            except ValueError:  # not the main thread: atexit still stops Ray
                self._old_term = None
        _quiet_ray_data()

    def close(self) -> None:
        """Stop the Ray instance this engine started (and remove its temporary folder); leave others."""
        if not self._owned:
            return
        import ray

        self._owned = False
        ray.shutdown()
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)
            self._old_term = None
        if self._reaper is not None:  # it kills what `shutdown` left and removes the temporary folder
            assert self._reaper.stdin is not None
            self._reaper.stdin.close()
            self._reaper.wait()
            self._reaper = None
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    # ------------------------------------------------------------------------------------------ work

    def workers(self, needs: Needs) -> int:
        """One per GPU's worth of `needs.gpus` where the cluster has GPUs; otherwise as many `needs.cpus`
        workers as fit beside one CPU kept free for Ray Data's own tasks (at least one, at most 8)."""
        import ray

        self.start()
        res = ray.cluster_resources()
        return pool_size(float(res.get("CPU", 1.0)), float(res.get("GPU", 0.0)), needs)

    def map(self, factory: WorkerFactory, items: Sequence[P], *, needs: Needs = DEFAULT_NEEDS,
            batch_size: int = 1) -> Iterator[tuple[P, Any]]:
        if not items:
            return
        import ray
        import ray.data

        self.start()
        res = ray.cluster_resources()
        gpus = float(res.get("GPU", 0.0))
        size = pool_size(float(res.get("CPU", 1.0)), gpus, needs)
        listed = list(items)
        indexes = ray.data.from_items([{"idx": i} for i in range(len(listed))])
        ds = indexes.map_batches(
            _Worker,
            fn_constructor_args=(factory, listed),
            batch_size=max(1, batch_size),
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=size),
            num_cpus=needs.cpus if not (gpus and needs.gpus) else min(needs.cpus, 1.0),
            num_gpus=needs.gpus if gpus and needs.gpus else None,
            max_restarts=0,  # a failed worker fails the run; the rerun resumes from what was written
        )
        batches = ds.iter_batches(batch_size=None, batch_format="numpy")
        try:
            for batch in batches:
                for i, blob in zip(batch["idx"], batch["out"]):
                    yield listed[int(i)], pickle.loads(blob)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()


def pool_size(cpus: float, gpus: float, needs: Needs) -> int:
    """The number of actors for a stage: GPUs // needs.gpus with GPUs, else (CPUs - 1) // needs.cpus,
    clamped to [1, 8]."""
    if gpus > 0 and needs.gpus > 0:
        return max(1, int(gpus // needs.gpus))
    return max(1, min(MAX_CPU_WORKERS, int((cpus - 1) // max(needs.cpus, 1e-9))))


def _exit_on_term(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


__all__ = ["RayEngine", "pool_size"]
