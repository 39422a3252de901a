"""Data-parallel encoding: two gloo processes under torchrun give the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

import cirbench
from cirbench.evaluation import EvalOptions


def test_torchrun_two_ranks_equals_single_process(tiny_dataset: Path, tmp_path: Path) -> None:
    single = cirbench.evaluate(
        "random",
        str(tiny_dataset),
        output=tmp_path / "single",
        options=EvalOptions(progress=False, n_bootstrap=0, cache_dir=tmp_path / "c1"),
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "cirbench.cli",
        "eval",
        "-m",
        "random",
        "-t",
        str(tiny_dataset),
        "-o",
        str(tmp_path / "ddp"),
        "--cache-dir",
        str(tmp_path / "c2"),
        "-q",
        "--bootstrap",
        "0",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ddp = json.loads((tmp_path / "ddp" / "result.json").read_text())
    # rank 0 encoded only its shard (5 gallery items -> 3, 3 queries -> 2); rank 1 did the rest
    assert ddp["encoding"]["document"]["encoded"] == 3 and ddp["encoding"]["query"]["encoded"] == 2
    assert pq.read_table(tmp_path / "ddp" / "run.parquet").equals(
        pq.read_table(tmp_path / "single" / "run.parquet")
    )
    assert ddp["scores"]["overall"]["overall"]["R@1"]["value"] == single.overall["R@1"].value
