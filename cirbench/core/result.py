"""The Result: scores per breakdown, the protocol, and the provenance needed to compare honestly.

`result.json` (schema 2.0; values are fractions in [0, 1], except MedR which is a rank) is described by the
JSON Schema shipped as `cirbench/schemas/result.schema.json` (`result_schema()`), and every result read is
validated against it:

    schema_version   "2.0"
    cirbench_version the package version that computed it
    task             {name, split, revision, num_queries, num_corpus, limit, has_labels, dataset_dir, version}
    model            {name, id, revision, dim, dtype, modalities, license, fingerprint, options, ...}
    protocol         the task's Protocol record (metrics, K, gallery, exclusions, AP normaliser, text
                     templating, caption joining, aggregate, recall_on, breakdowns, scorer, notes), plus
                     the instructions used per role and the search settings
    main_metric      e.g. "R@1"
    scores           {kind: {group: {metric: Score}}}: kind "overall" holds the one group "overall", then
                     one kind per breakdown of the protocol ("category", "subcategory", CIRCO's "aspect")
                     Score = {"value", "ci_low", "ci_high", "n"}: mean over the n queries with a
                     percentile-bootstrap 95% interval (seeded; see "bootstrap"); null where undefined
    bootstrap        {n_resamples, confidence, seed, method}
    encoding         per role: items, from_cache, encoded, seconds, items_per_s
    provenance       {started_at (UTC), wall_time_s, python, torch, platform, cpu, gpu, device}
    files            {"run": "run.parquet", "run_sha256": the run file's SHA-256, "submission": [...]}
                     relative to the result file; "submission_skipped" says why no server file was written
                     (a --limit run). Readers refuse a run file whose SHA-256 differs (`Result.read_run`):
                     result.json and run.parquet are one unit.

Older files are read and brought up to date in memory: 1.0 (no run_sha256: its run file is unchecked),
1.1 (adds files.run_sha256 and protocol.aggregate). In 1.x the overall scores were {metric: Score} and the
protocol kept its scorer and CIRCO's recall rule in `notes` (see `cirbench.core.protocol.upgrade_record`).
Any other major version is refused, naming it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from cirbench.core.io import write_json
from cirbench.core.protocol import upgrade_record
from cirbench.core.types import DatasetError

SCHEMA_VERSION = "2.0"
READS = ("1", "2")
"""Major schema versions this cirbench reads (1.x is brought up to date on reading)."""
OVERALL = "overall"
"""The kind, and its one group, of the headline scores."""

Scores = dict[str, dict[str, dict[str, "Score"]]]
"""{kind: {group: {metric: Score}}}."""


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
    scores: Scores
    bootstrap: dict[str, Any] = field(default_factory=dict)
    encoding: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)
    retrieval: dict[str, Any] = field(default_factory=dict)
    """How the run was made: the retriever and the reranker chain (names, fingerprints), the tail rule,
    and the cost per stage (seconds, model calls, tokens)."""
    cirbench_version: str = ""
    schema_version: str = SCHEMA_VERSION
    path: Path | None = field(default=None, compare=False, repr=False)
    skipped: bool = field(default=False, compare=False, repr=False)
    """True when `evaluate` found this identical result already on disk and computed nothing."""

    @property
    def overall(self) -> dict[str, Score]:
        """The headline scores, {metric: Score} (empty for a split scored by a server)."""
        return self.scores.get(OVERALL, {}).get(OVERALL, {})

    def breakdown_kinds(self) -> list[str]:
        """The kinds of the breakdowns this result has scores for, in their order ("overall" left out)."""
        return [k for k, groups in self.scores.items() if k != OVERALL and groups]

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
            "retrieval",
        ]
        return {k: d[k] for k in order}

    def write(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        d = _finite(self.to_dict())
        validate(d, path)  # never write what no reader would accept
        write_json(path, d)
        self.path = path
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | None = None) -> Result:
        where = path or "<dict>"
        if not isinstance(d, dict):
            raise DatasetError("not a cirbench result: the file holds no JSON object", file=where)
        for key in ("schema_version", "task", "model", "protocol", "main_metric", "scores"):
            if key not in d:
                raise DatasetError("not a cirbench result: field is missing", file=where, field=key)
        major = str(d["schema_version"]).split(".")[0]
        if major not in READS:
            raise DatasetError(
                f"result schema_version {d['schema_version']!r} is not one this cirbench reads "
                f"({', '.join(m + '.x' for m in READS)}); read it with the cirbench that wrote it "
                f"({d.get('cirbench_version') or 'unknown version'}) or evaluate again",
                file=where, field="schema_version")
        if major == "1":
            d = upgrade(d, where)
        validate(d, where)
        scores = {kind: {g: {m: Score(**s) for m, s in per_metric.items()}
                         for g, per_metric in groups.items()}
                  for kind, groups in d["scores"].items()}
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
            retrieval=d.get("retrieval", {}),
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


def upgrade(d: dict[str, Any], where: Path | str = "<dict>") -> dict[str, Any]:
    """A schema 1.x result as schema 2.0 (in memory; the file is left as it is; its schema_version is kept
    so that a reader can tell)."""
    scores = d.get("scores")
    if not isinstance(scores, dict) or not isinstance(scores.get(OVERALL, {}), dict):
        raise DatasetError("scores must be an object of breakdowns", file=where, field="scores")
    try:
        protocol = upgrade_record(d["protocol"]) if isinstance(d["protocol"], dict) else d["protocol"]
    except ValueError as e:
        raise DatasetError(str(e), file=where, field="protocol.notes.scorer") from None
    return {**d, "protocol": protocol, "scores": {**scores, OVERALL: {OVERALL: scores.get(OVERALL, {})}}}


@cache
def result_schema() -> dict[str, Any]:
    """The JSON Schema of result.json (draft 2020-12), shipped in the package."""
    text = resources.files("cirbench").joinpath("schemas/result.schema.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def validate(d: Any, where: Path | str = "<dict>") -> None:
    """Refuse a result that does not match the schema, naming the file and the first offending field."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(result_schema())
    errors = sorted(validator.iter_errors(d), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    if errors:
        e = errors[0]
        at = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise DatasetError(f"not a valid cirbench result (schema {SCHEMA_VERSION}): {e.message}", file=where,
                           field=at)


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null (e.g. MedR when no query found a relevant item)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
