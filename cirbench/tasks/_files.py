"""Helpers the benchmark loaders share: reading released JSON, checking images, naming protocol variants.

Loaders read files that users downloaded by hand, so every failure must say which file, which record and
which field is wrong, and what layout was expected. Image checks scan each image directory once
(`os.scandir`), never one `stat` per file: CIRCO's gallery alone has about 123k images.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cirbench.core.types import DatasetError

SHOW_MISSING = 5
"""How many missing names an error message lists."""


# ----------------------------------------------------------------------------------------------------
# Data directory and options
# ----------------------------------------------------------------------------------------------------


def require_data_dir(data_dir: Path | None, task: str, layout: str) -> Path:
    """The data directory, or a DatasetError that says how to pass one and what it must hold."""
    if data_dir is None:
        raise DatasetError(
            f"no data directory for task {task!r}: pass --data-dir DIR or set CIRBENCH_DATA "
            f"(then $CIRBENCH_DATA/{task} is used). Expected layout:\n{layout}")
    if not data_dir.is_dir():
        raise DatasetError(f"data directory for task {task!r} does not exist. Expected layout:\n{layout}",
                           file=data_dir)
    return data_dir








def check_options(options: Mapping[str, Any], known: Iterable[str], task: str) -> None:
    """Refuse a misspelt option instead of silently ignoring it (with a suggestion and the known ones)."""
    from cirbench.core.options import check_options as check

    check(f"task {task!r}", options, known, flag="--task-option")


# ----------------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------------


class JsonFile:
    """A parsed JSON file plus the digest of its bytes (for the task revision)."""

    def __init__(self, path: Path, data: Any, digest: str) -> None:
        self.path, self.data, self.digest = path, data, digest


def read_json(path: Path, layout: str = "") -> JsonFile:
    """Parse a JSON file; a missing or malformed file raises DatasetError naming it (and the layout)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        hint = f". Expected layout:\n{layout}" if layout else ""
        raise DatasetError(f"annotation file is missing{hint}", file=path) from e
    except OSError as e:
        raise DatasetError(f"annotation file cannot be read: {e}", file=path) from e
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"malformed JSON: {e}", file=path) from e
    return JsonFile(path, data, hashlib.sha1(raw).hexdigest())


def revision(files: Sequence[JsonFile]) -> str:
    """A short digest of the annotation files: two runs with the same revision read the same labels."""
    h = hashlib.sha1()
    for f in files:
        h.update(f"{f.path.name}:{f.digest}\n".encode())
    return "sha1:" + h.hexdigest()[:16]


def expect_list(f: JsonFile, what: str = "a JSON list") -> list[Any]:
    if not isinstance(f.data, list):
        raise DatasetError(f"expected {what}, found {type(f.data).__name__}", file=f.path)
    return f.data


def expect_dict(f: JsonFile, what: str = "a JSON object") -> dict[str, Any]:
    if not isinstance(f.data, dict):
        raise DatasetError(f"expected {what}, found {type(f.data).__name__}", file=f.path)
    return f.data


def get_field(rec: Any, name: str, types: type | tuple[type, ...], *, file: Path, record: str | int,
              optional: bool = False, label: str | None = None) -> Any:
    """`rec[name]` checked against `types`; DatasetError naming file, record and field otherwise.

    `label` names the field in messages when it is nested ("img_set.members"). `bool` is refused where an
    int is expected (JSON true is not a pair id).
    """
    label = label or name
    if not isinstance(rec, dict):
        raise DatasetError(f"record must be a JSON object, found {type(rec).__name__}", file=file,
                           record=record, field=label if label != name else None)
    if name not in rec:
        if optional:
            return None
        raise DatasetError("required field is missing", file=file, record=record, field=label)
    value = rec[name]
    want = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, want) or (isinstance(value, bool) and bool not in want):
        names = " or ".join(t.__name__ for t in want)
        raise DatasetError(f"expected {names}, found {type(value).__name__} {value!r:.60}", file=file,
                           record=record, field=label)
    return value


def typed_list(rec: Any, name: str, *, file: Path, record: str | int, item_types: tuple[type, ...] = (str,),
               optional: bool = False, label: str | None = None) -> list[Any] | None:
    """A list field whose items all have one of `item_types` (None only when optional and absent)."""
    value = get_field(rec, name, list, file=file, record=record, optional=optional, label=label)
    if value is None:
        return None
    for i, v in enumerate(value):
        if not isinstance(v, item_types) or isinstance(v, bool):
            raise DatasetError(f"item {i} has type {type(v).__name__}, expected "
                               f"{' or '.join(t.__name__ for t in item_types)}", file=file, record=record,
                               field=label or name)
    return value


# ----------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------


class DirIndex:
    """File names per directory, each directory scanned once with os.scandir (no stat per file)."""

    def __init__(self) -> None:
        self._names: dict[str, frozenset[str]] = {}

    def names(self, directory: str | os.PathLike[str]) -> frozenset[str]:
        key = os.fspath(directory)
        if key not in self._names:
            try:
                with os.scandir(key) as it:
                    self._names[key] = frozenset(e.name for e in it)
            except (FileNotFoundError, NotADirectoryError):
                self._names[key] = frozenset()
        return self._names[key]


def group_by_dir(paths: Iterable[str]) -> dict[str, list[str]]:
    """Directory -> file names, for paths spread over several folders (CIRR's train/<n>/)."""
    groups: dict[str, list[str]] = {}
    for p in paths:
        d, name = os.path.split(p)
        groups.setdefault(d, []).append(name)
    return groups


def find_missing(groups: Mapping[str, Sequence[str]], index: DirIndex | None = None) -> list[str]:
    """Paths (directory joined with name) whose file is absent; one scan per directory."""
    index = index or DirIndex()
    missing: list[str] = []
    for d, names in groups.items():
        present = index.names(d)
        missing += [os.path.join(d, n) for n in names if n not in present]
    return missing


def missing_images_error(missing: Sequence[str], total: int, *, task: str, split: str, root: Path,
                         layout: str) -> DatasetError:
    """One message with the count, the first few names, the layout and the way out."""
    shown = ", ".join(os.path.relpath(p, root) if p.startswith(os.fspath(root)) else p
                      for p in missing[:SHOW_MISSING])
    more = f", ... ({len(missing) - SHOW_MISSING} more)" if len(missing) > SHOW_MISSING else ""
    return DatasetError(
        f"{len(missing)} of {total} images of {task} {split} are missing under {root} "
        f"(first: {shown}{more}). Expected layout:\n{layout}\n"
        "Fix the paths, or pass --task-option check_images=false to load the annotations anyway.")


def check_images(groups: Mapping[str, Sequence[str]], *, task: str, split: str, root: Path, layout: str,
                 index: DirIndex | None = None) -> None:
    """Raise one DatasetError listing the missing files of `groups` (directory -> file names)."""
    missing = find_missing(groups, index)
    if missing:
        total = sum(len(v) for v in groups.values())
        raise missing_images_error(missing, total, task=task, split=split, root=root, layout=layout)


# ----------------------------------------------------------------------------------------------------
# Protocol variant names
# ----------------------------------------------------------------------------------------------------


def variant_names(axes: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """Every protocol name a benchmark accepts, "official" first.

    Each axis lists its choices with the official one first. A name joins the non-official choices with
    "+" in axis order ("union-val+c2-and-c1"); all-official is "official". Listing them all keeps
    `TaskSpec.protocols` an exact menu for `cirbench tasks` and for the registry's check.
    """
    names = []
    for combo in itertools.product(*axes):
        parts = [c for c, axis in zip(combo, axes, strict=True) if c != axis[0]]
        names.append("+".join(parts) if parts else "official")
    return tuple(names)


def parse_variant(name: str, axes: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """The choice on each axis for a protocol name made by `variant_names`."""
    if name not in variant_names(axes):
        raise ValueError(f"unknown protocol {name!r}; protocols: {list(variant_names(axes))}")
    tokens = set() if name == "official" else set(name.split("+"))
    return tuple(next((c for c in axis[1:] if c in tokens), axis[0]) for axis in axes)


# ----------------------------------------------------------------------------------------------------
# CSV files
# ----------------------------------------------------------------------------------------------------


@dataclass
class CsvFile:
    path: Path
    rows: list[dict[str, str]]
    line_numbers: list[int]
    digest: str

    def record(self, n: int) -> str:
        return f"line {self.line_numbers[n]}"


def read_csv(path: Path, required: Sequence[str], layout: str = "") -> CsvFile:
    """Rows of a CSV with a header; DatasetError naming the file when it or a required column is missing."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        hint = f". Expected layout:\n{layout}" if layout else ""
        raise DatasetError(f"CSV file is missing{hint}", file=path) from e
    except OSError as e:
        raise DatasetError(f"CSV file cannot be read: {e}", file=path) from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"CSV file is not UTF-8: {e}", file=path) from e
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetError(f"required column(s) {missing} missing; the header has {header}", file=path,
                           field=missing[0])
    rows, lines = [], []
    try:
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as e:
        raise DatasetError(f"malformed CSV: {e}", file=path, record=f"line {reader.line_num}") from e
    return CsvFile(path, rows, lines, hashlib.sha1(raw).hexdigest())
