"""Check a test-server submission file before uploading it: every problem found, in one list.

The CIRR and CIRCO servers answer a bad file late (CIRCO by email) or with a terse error, so
`cirbench validate-submission FILE --task T` runs the structural checks the servers document
(benchmarks.md §1.5, §2.4) and, when the dataset is on disk, checks every id against the split.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cirbench.core.types import DatasetError
from cirbench.tasks import circo, cirr
from cirbench.tasks.registry import data_root

SHOW = 5
_EXTENSION = re.compile(r"\.(png|jpe?g|gif|bmp|webp)$", re.IGNORECASE)
_INT_KEY = re.compile(r"^(0|[1-9][0-9]*)$")

__all__ = ["check_circo_payload", "check_cirr_payload", "validate_submission"]


class _Problems:
    """Collects offending keys per kind of problem, so 4,000 bad lists give one line, not 4,000."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._kinds: dict[str, list[str]] = {}

    def add(self, line: str) -> None:
        self.lines.append(line)

    def group(self, kind: str, example: str) -> None:
        self._kinds.setdefault(kind, []).append(example)

    def result(self) -> list[str]:
        out = list(self.lines)
        for kind, examples in self._kinds.items():
            more = f", ... ({len(examples) - SHOW} more)" if len(examples) > SHOW else ""
            out.append(f"{len(examples)} {kind}: {', '.join(examples[:SHOW])}{more}")
        return out


def _few(ids: list[str] | set[str]) -> str:
    items = sorted(ids, key=lambda s: (len(s), s)) if isinstance(ids, set) else list(ids)
    more = f", ... ({len(items) - SHOW} more)" if len(items) > SHOW else ""
    return ", ".join(items[:SHOW]) + more


# ----------------------------------------------------------------------------------------------------
# CIRR
# ----------------------------------------------------------------------------------------------------


@dataclass
class CirrSplit:
    """What the id checks need from cap.rc2.test1.json and split.rc2.test1.json."""

    references: dict[str, str]
    members: dict[str, set[str]]
    images: set[str]


def _cirr_split(data_dir: Path) -> CirrSplit:
    task = cirr.load(data_dir, "test1", check_images="false")
    return CirrSplit(
        references={q.id: q.reference_id or "" for q in task.queries},
        members={q.id: set(q.candidate_ids or ()) - {q.reference_id} for q in task.queries},
        images={it.id for it in task.corpus},
    )


def check_cirr_payload(data: Any, *, n_bytes: int | None = None, split: CirrSplit | None = None) -> list[str]:
    """Problems of one parsed CIRR file (recall or recall_subset); empty when the server should accept it."""
    p = _Problems()
    if n_bytes is not None and n_bytes > cirr.SERVER_MAX_BYTES:
        p.add(f"file is {n_bytes:,} bytes; the server accepts at most 5 MB ({cirr.SERVER_MAX_BYTES:,} bytes)")
    if not isinstance(data, dict):
        p.add(f"top level must be a JSON object, found {type(data).__name__}")
        return p.result()
    version = data.get("version")
    if version is None:
        p.add(f'missing "version" entry (must be "{cirr.VERSION}")')
    elif version != cirr.VERSION:
        p.add(f'"version" is {version!r}; must be "{cirr.VERSION}"')
    metric = data.get("metric")
    if metric is None:
        p.add('missing "metric" entry (must be "recall" or "recall_subset")')
    elif metric not in cirr.SERVER_TOPK:
        p.add(f'"metric" is {metric!r}; must be "recall" or "recall_subset"')
    k = cirr.SERVER_TOPK.get(metric) if isinstance(metric, str) else None
    keys = [key for key in data if key not in ("version", "metric")]
    for key in keys:
        if not _INT_KEY.match(key):
            p.group("keys are not pair ids", repr(key))
            continue
        names = data[key]
        if not isinstance(names, list):
            p.group("values are not lists", key)
            continue
        if not all(isinstance(n, str) for n in names):
            p.group("lists hold non-string names", key)
            continue
        if k is not None and len(names) != k:
            p.group(f"lists do not hold exactly {k} names ({metric})", f"{key} ({len(names)})")
        if len(set(names)) != len(names):
            p.group("lists repeat a name", key)
        bad = [n for n in names if _EXTENSION.search(n) or "/" in n or "\\" in n]
        if bad:
            p.group("lists hold file names or paths instead of image names without extension",
                    f"{key} ({bad[0]!r})")
        if split is None:
            if any(not n.startswith("test1-") for n in names):
                p.group("lists hold names that are not test1 images", key)
            continue
        unknown = [n for n in names if n not in split.images]
        if unknown:
            p.group("lists hold names that are not in split.rc2.test1.json", f"{key} ({unknown[0]!r})")
        if key in split.references and split.references[key] in names:
            p.group("lists contain the query's own reference (the server expects it removed)", key)
        if metric == "recall_subset" and key in split.members:
            outside = [n for n in names if n not in split.members[key]]
            if outside:
                p.group("recall_subset lists hold names outside img_set.members minus the reference",
                        f"{key} ({outside[0]!r})")
    valid_keys = {key for key in keys if _INT_KEY.match(key)}
    if split is not None:
        missing = set(split.references) - valid_keys
        extra = valid_keys - set(split.references)
        if missing:
            p.add(f"{len(missing)} of {len(split.references)} test1 pair ids are missing: {_few(missing)}")
        if extra:
            p.add(f"{len(extra)} pair ids are not in cap.rc2.test1.json: {_few(extra)}")
    elif len(valid_keys) != cirr.TEST1_PAIRS:
        p.add(f"file has {len(valid_keys)} pair ids; CIRR rc2 test1 has {cirr.TEST1_PAIRS} "
              "(pass the data directory to list the missing ones)")
    return p.result()


# ----------------------------------------------------------------------------------------------------
# CIRCO
# ----------------------------------------------------------------------------------------------------


@dataclass
class CircoSplit:
    query_ids: set[str]
    gallery: set[int] | None


def _circo_split(data_dir: Path, *, with_gallery: bool = True) -> CircoSplit:
    task = circo.load(data_dir, "test", check_images="false")
    return CircoSplit(query_ids={q.id for q in task.queries},
                      gallery={int(it.id) for it in task.corpus} if with_gallery else None)


def check_circo_payload(data: Any, *, split: CircoSplit | None = None) -> list[str]:
    """Problems of a parsed CIRCO test file; empty when the server should accept it."""
    p = _Problems()
    if not isinstance(data, dict):
        p.add(f"top level must be a JSON object, found {type(data).__name__}")
        return p.result()
    k = circo.SERVER_TOPK
    valid_keys: set[str] = set()
    for key, ids in data.items():
        if not _INT_KEY.match(key):
            p.group("keys are not query ids (decimal integers)", repr(key))
            continue
        valid_keys.add(key)
        if not isinstance(ids, list):
            p.group("values are not lists", key)
            continue
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            p.group("lists hold non-integer image ids (ids must be JSON integers)", key)
            continue
        if len(ids) != k:
            p.group(f"lists do not hold exactly {k} image ids", f"{key} ({len(ids)})")
        if len(set(ids)) != len(ids):
            p.group("lists repeat an image id", key)
        if split is not None and split.gallery is not None:
            unknown = [i for i in ids if i not in split.gallery]
            if unknown:
                p.group("lists hold ids that are not COCO 2017 unlabeled images", f"{key} ({unknown[0]})")
    expected = split.query_ids if split is not None else {str(i) for i in range(circo.TEST_QUERIES)}
    missing, extra = expected - valid_keys, valid_keys - expected
    if missing:
        p.add(f"{len(missing)} of {len(expected)} test query ids are missing: {_few(missing)}")
    if extra:
        p.add(f"{len(extra)} keys are not test query ids: {_few(extra)}")
    return p.result()


# ----------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------


def _read(path: Path) -> tuple[Any, int, list[str]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, 0, [f"file not found: {path}"]
    except OSError as e:
        return None, 0, [f"cannot read {path}: {e}"]
    try:
        return json.loads(raw), len(raw), []
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, len(raw), [f"{path}: not valid JSON: {e}"]


def validate_submission(path: str | os.PathLike[str], task_name: str,
                        data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Every problem found in a test-server file for `task_name` ("cirr" or "circo"); [] means OK.

    With a data directory (`data_dir`, else $CIRBENCH_DATA/<task>), ids are also checked against the
    released test split; a data directory that cannot be read is reported as a problem, not skipped.
    """
    name = task_name.lower()
    if name not in ("cirr", "circo"):
        from cirbench.core.options import did_you_mean

        raise ValueError(f"task {task_name!r} has no test-server submission format"
                         f"{did_you_mean(task_name, ('cirr', 'circo'))}; known: cirr, circo")
    data, n_bytes, problems = _read(Path(path))
    if problems:
        return problems
    root = data_root(data_dir, name)
    try:
        if name == "cirr":
            cirr_split = _cirr_split(root) if root is not None else None
            return check_cirr_payload(data, n_bytes=n_bytes, split=cirr_split)
        circo_split = _circo_split(root) if root is not None else None
        return check_circo_payload(data, split=circo_split)
    except DatasetError as e:
        structural = (check_cirr_payload(data, n_bytes=n_bytes) if name == "cirr"
                      else check_circo_payload(data))
        return [f"ids not checked against the split: {e}"] + structural
