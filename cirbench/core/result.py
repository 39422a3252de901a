"""The Result: scores overall and per category, the protocol, and the provenance needed to compare honestly.

`result.json` schema (version 1.0; values are fractions in [0, 1], except MedR which is a rank):

    schema_version   "1.0"
    cirbench_version the package version that computed it
    task             {name, split, revision, num_queries, num_corpus, limit, has_labels, dataset_dir}
    model            {name, id, revision, dim, dtype, modalities, license, fingerprint, options}
    protocol         the task's Protocol (gallery, exclusions, K values, AP normaliser, text templating,
                     caption joining, notes), plus the instructions used per role and the search settings
    main_metric      e.g. "R@1"
    scores           {"overall": {metric: Score}, "category": {name: {metric: Score}},
                      "subcategory": {...}, <other breakdowns, e.g. "aspect">: {...}}
                     Score = {"value", "ci_low", "ci_high", "n"}: mean over the n queries with a
                     percentile-bootstrap 95% interval (seeded; see "bootstrap")
    bootstrap        {n_resamples, confidence, seed}
    encoding         per role: items, from_cache, encoded, seconds, items_per_s
    provenance       {started_at (UTC), wall_time_s, python, torch, platform, cpu, gpu, device, hostname-free}
    files            {"run": "run.parquet", "run_sha256": the run file's SHA-256, "submission": [...]}
                     relative to the result file; "submission_skipped" says why no server file was written
                     (a --limit run). Readers refuse a run file whose SHA-256 differs (`Result.read_run`):
                     result.json and run.parquet are one unit.

Schema 1.1 adds files.run_sha256 and protocol.aggregate; a 1.0 result is read, its run file unchecked.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cirbench.core.io import write_json
from cirbench.core.types import DatasetError

SCHEMA_VERSION = "1.1"


@dataclass
class Score:
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0


@dataclass
class Result:
    task: dict[str, Any]
    model: dict[str, Any]
    protocol: dict[str, Any]
    main_metric: str
    scores: dict[str, dict[str, Any]]
    bootstrap: dict[str, Any] = field(default_factory=dict)
    encoding: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)
    cirbench_version: str = ""
    schema_version: str = SCHEMA_VERSION
    path: Path | None = field(default=None, compare=False, repr=False)
    skipped: bool = field(default=False, compare=False, repr=False)
    """True when `evaluate` found this identical result already on disk and computed nothing."""

    @property
    def overall(self) -> dict[str, Score]:
        return self.scores["overall"]

    def main_score(self) -> float:
        return self.overall[self.main_metric].value

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        d.pop("skipped")
        order = [
            "schema_version",
            "cirbench_version",
            "task",
            "model",
            "protocol",
            "main_metric",
            "scores",
            "bootstrap",
            "encoding",
            "provenance",
            "files",
        ]
        return {k: d[k] for k in order}

    def write(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        write_json(path, _finite(self.to_dict()))
        self.path = path
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | None = None) -> Result:
        where = path or "<dict>"
        for key in ("schema_version", "task", "model", "protocol", "main_metric", "scores"):
            if key not in d:
                raise DatasetError("not a cirbench result: field is missing", file=where, field=key)
        major = str(d["schema_version"]).split(".")[0]
        if major != SCHEMA_VERSION.split(".")[0]:
            raise DatasetError(
                f"unsupported schema_version {d['schema_version']!r}", file=where, field="schema_version"
            )
        scores = {
            kind: {
                g: ({m: Score(**s) for m, s in v.items()} if kind != "overall" else Score(**v))
                for g, v in groups.items()
            }
            for kind, groups in d["scores"].items()
        }
        return cls(
            task=d["task"],
            model=d["model"],
            protocol=d["protocol"],
            main_metric=d["main_metric"],
            scores=scores,
            bootstrap=d.get("bootstrap", {}),
            encoding=d.get("encoding", {}),
            provenance=d.get("provenance", {}),
            files=d.get("files", {}),
            cirbench_version=d.get("cirbench_version", ""),
            schema_version=d["schema_version"],
            path=path,
        )

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Result:
        path = Path(path)
        if path.is_dir():
            path = path / "result.json"
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise DatasetError("result file is missing", file=path) from e
        except json.JSONDecodeError as e:
            raise DatasetError(f"malformed JSON: {e}", file=path) from e
        return cls.from_dict(d, path)

    def run_path(self) -> Path | None:
        if self.path is None or "run" not in self.files:
            return None
        return self.path.parent / self.files["run"]

    def read_run(self) -> Any:
        """The run table beside this result, checked to be the one this result was computed from."""
        from cirbench.core.run import read_run_table

        path = self.run_path()
        if path is None:
            raise DatasetError("the result names no run file (files.run)", file=self.path or "<result>",
                               field="files.run")
        return read_run_table(path, sha256=self.files.get("run_sha256"))


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null (e.g. MedR when no query found a relevant item)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
