"""The native dataset format: what `cirbench build` writes and `cirbench eval` reads.

Layout of a dataset directory (every table is parquet, so `datasets.load_dataset("parquet", ...)` reads it)::

    cirbench.json               name, version, description, licence, citation, protocol defaults, taxonomy,
                                instructions, and per split the file names (format_version 2)
    <split>/queries.parquet     id, reference_id, text, relevant_ids, candidate_ids, exclude_ids,
                                category, subcategory, hard_negative_ids, text_variants, meta (JSON string)
    <split>/corpus.parquet      id, image (the `datasets` Image() feature: {bytes, path}, nullable),
                                image_path (relative, nullable), caption
    <split>/references.parquet  optional: reference images not in the gallery (same columns as corpus)
    README.md                   the data card (a Hugging Face DatasetCard, metadata checked by cirbench.hub)
    images/...                  optional image files named by image_path

A query's reference image is looked up in the corpus first, then in references. A test split without labels
has empty relevant_ids and "has_labels": false in cirbench.json.

The image tables carry the `datasets` features in their parquet metadata, so `datasets.load_dataset` and the
Hub's viewer show the `image` column as pictures (format_version 2; version 1 stored plain bytes and is still
read).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cirbench.core.io import make_temp_dir
from cirbench.core.paths import Root
from cirbench.core.protocol import scorer_from_record
from cirbench.core.types import DatasetError, Item, Protocol, Query, Task, TaskMetadata
from cirbench.core.workers import pid_alive

FORMAT = "cirbench-dataset"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "cirbench.json"

QUERY_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("reference_id", pa.string()),
        ("text", pa.string()),
        ("relevant_ids", pa.list_(pa.string())),
        ("candidate_ids", pa.list_(pa.string())),
        ("exclude_ids", pa.list_(pa.string())),
        ("category", pa.string()),
        ("subcategory", pa.string()),
        ("hard_negative_ids", pa.list_(pa.string())),
        ("text_variants", pa.list_(pa.string())),
        ("meta", pa.string()),
    ]
)
HF_IMAGE_FEATURES = {
    "id": {"dtype": "string", "_type": "Value"},
    "image": {"_type": "Image"},
    "image_path": {"dtype": "string", "_type": "Value"},
    "caption": {"dtype": "string", "_type": "Value"},
}
"""The `datasets` Features of an image table, stored where `datasets` looks for them (parquet metadata)."""
IMAGE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("image_path", pa.string()),
        ("caption", pa.string()),
    ],
    metadata={"huggingface": json.dumps({"info": {"features": HF_IMAGE_FEATURES}})},
)
REQUIRED_QUERY_COLUMNS = ("id", "text", "relevant_ids")
REQUIRED_IMAGE_COLUMNS = ("id",)


@dataclass
class ImageRecord:
    id: str
    image: bytes | None = None
    image_path: str | None = None
    caption: str | None = None


@dataclass
class QueryRecord:
    id: str
    text: str
    relevant_ids: list[str]
    reference_id: str | None = None
    candidate_ids: list[str] | None = None
    exclude_ids: list[str] = field(default_factory=list)
    category: str | None = None
    subcategory: str | None = None
    hard_negative_ids: list[str] = field(default_factory=list)
    text_variants: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class SplitData:
    queries: list[QueryRecord]
    corpus: list[ImageRecord]
    references: list[ImageRecord] = field(default_factory=list)
    has_labels: bool = True


def safe_path(root: Path | Root, rel: Any, *, file: Path, record: str | int, field_name: str) -> Path:
    """A relative path inside the dataset root; anything that escapes it (`..`, an absolute path, a symlink
    out) is refused naming the file, record and field (the shared check of `cirbench.core.paths`)."""
    if not isinstance(rel, str):
        raise DatasetError(f"expected a relative path (a string), found {type(rel).__name__}", file=file,
                           record=record, field=field_name)
    guard = root if isinstance(root, Root) else Root(root)
    return guard.join(rel, file=file, record=record, field=field_name)


# ----------------------------------------------------------------------------------------------- writing


def _image_table(records: Sequence[ImageRecord]) -> pa.Table:
    return pa.table(
        {
            "id": [r.id for r in records],
            "image": [None if r.image is None else {"bytes": r.image, "path": None} for r in records],
            "image_path": [r.image_path for r in records],
            "caption": [r.caption for r in records],
        },
        schema=IMAGE_SCHEMA,
    )


def _query_table(records: Sequence[QueryRecord]) -> pa.Table:
    return pa.table(
        {
            "id": [r.id for r in records],
            "reference_id": [r.reference_id for r in records],
            "text": [r.text for r in records],
            "relevant_ids": [list(r.relevant_ids) for r in records],
            "candidate_ids": [None if r.candidate_ids is None else list(r.candidate_ids) for r in records],
            "exclude_ids": [list(r.exclude_ids) for r in records],
            "category": [r.category for r in records],
            "subcategory": [r.subcategory for r in records],
            "hard_negative_ids": [list(r.hard_negative_ids) for r in records],
            "text_variants": [list(r.text_variants) for r in records],
            "meta": [json.dumps(r.meta, sort_keys=True) if r.meta else None for r in records],
        },
        schema=QUERY_SCHEMA,
    )


def _write_parquet(table: pa.Table, path: Path) -> None:
    # Fixed writer options and no timestamps: the same data gives byte-identical files.
    pq.write_table(table, path, compression="zstd", write_statistics=False, store_schema=True)


def write_dataset(
    root: str | os.PathLike[str],
    splits: Mapping[str, SplitData],
    *,
    name: str,
    version: str = "1.0",
    description: str = "",
    license: str = "unknown",
    citation: str = "",
    protocol: Protocol | None = None,
    taxonomy: Mapping[str, str] | None = None,
    instructions: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    card: str | None = None,
    files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write a dataset atomically: into a temporary sibling directory, validated, then moved into place.

    `files` are extra files (relative path -> bytes) such as a contact sheet or images named by image_path.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    check_replaceable(root)
    remove_stale_temps(root)
    tmp = make_temp_dir(root.parent, f"{_temp_prefix(root)}{os.getpid()}-")
    try:
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": name,
            "version": version,
            "description": description,
            "license": license,
            "citation": citation,
            "protocol": (protocol or Protocol()).to_dict(),
            "taxonomy": dict(taxonomy or {}),
            "instructions": dict(instructions or {}),
            "splits": {},
            **(extra or {}),
        }
        for rel, data in (files or {}).items():
            p = safe_path(tmp, rel, file=tmp / rel, record=rel, field_name="files")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        for split, sd in splits.items():
            (tmp / split).mkdir()
            _write_parquet(_query_table(sd.queries), tmp / split / "queries.parquet")
            _write_parquet(_image_table(sd.corpus), tmp / split / "corpus.parquet")
            entry = {
                "queries": f"{split}/queries.parquet",
                "corpus": f"{split}/corpus.parquet",
                "num_queries": len(sd.queries),
                "num_corpus": len(sd.corpus),
                "has_labels": sd.has_labels,
            }
            if sd.references:
                _write_parquet(_image_table(sd.references), tmp / split / "references.parquet")
                entry["references"] = f"{split}/references.parquet"
            manifest["splits"][split] = entry
        manifest["revision"] = _tree_hash(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if card is not None:  # the builder's card, its Hub metadata completed and checked
            from cirbench.core.datacard import hub_card

            (tmp / "README.md").write_text(str(hub_card(tmp, manifest, card)))
        for split in splits:  # refuse to publish what we could not read back
            load_native(tmp, split)
        _replace_dir(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def check_replaceable(root: Path) -> None:
    """Refuse to write a dataset over a folder that is not one: replacing it would delete the user's files."""
    if root.is_dir() and not (root / MANIFEST).is_file() and any(root.iterdir()):
        raise DatasetError(f"the output folder exists and is not a cirbench dataset (no {MANIFEST}); writing "
                           "the dataset there would delete what it holds: choose a new or empty folder",
                           file=root)
    if root.exists() and not root.is_dir():
        raise DatasetError("the output path exists and is not a folder", file=root)


def _temp_prefix(root: Path) -> str:
    """`.<name>.tmp-<host>-`: the pid that follows tells a rerun which temporary folders are orphans."""
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"
    return f".{root.name}.tmp-{host}-"


def remove_stale_temps(root: Path) -> list[Path]:
    """Delete what a killed write of `root` left beside it (`.<name>.tmp-<host>-<pid>-*`, `.<name>.old-<pid>`)
    when that process is gone; folders of a live writer, or of another host, are left alone."""
    removed = []
    prefix = _temp_prefix(root)
    for p in root.parent.glob(f".{glob.escape(root.name)}.*"):
        rest = (p.name[len(prefix):] if p.name.startswith(prefix)
                else p.name[len(f".{root.name}.old-"):] if p.name.startswith(f".{root.name}.old-") else None)
        pid = rest.split("-", 1)[0] if rest else ""
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _replace_dir(src: Path, dst: Path) -> None:
    """Move src to dst, replacing dst; the old tree is removed only after the new one is in place."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def _tree_hash(root: Path) -> str:
    """A content hash of the manifests: the dataset revision recorded in results."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.parquet")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- reading


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DatasetError(f"not a cirbench dataset: {MANIFEST} is missing", file=path)
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"malformed JSON: {e}", file=path) from e
    if not isinstance(manifest, dict):
        raise DatasetError(f"expected a JSON object, found {type(manifest).__name__}", file=path)
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"expected format {FORMAT!r}", file=path, field="format")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise DatasetError(
            f"unsupported format_version {manifest.get('format_version')!r}",
            file=path,
            field="format_version",
        )
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise DatasetError("expected an object of splits (split name -> its files)", file=path,
                           field="splits")
    for name, entry in splits.items():
        if not isinstance(entry, dict):
            raise DatasetError(f"expected an object, found {type(entry).__name__}", file=path, record=name,
                               field="splits")
        for key in ("queries", "corpus"):
            if not isinstance(entry.get(key), str):
                raise DatasetError("required file name is missing or not a string", file=path, record=name,
                                   field=f"splits.{name}.{key}")
    if not isinstance(manifest.get("name"), str):
        raise DatasetError("required field is missing or not a string", file=path, field="name")
    return manifest


def _read_table(path: Path, required: Iterable[str]) -> pa.Table:
    if not path.is_file():
        raise DatasetError("file is missing", file=path)
    try:
        table = pq.ParquetFile(path).read()
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"malformed parquet: {e}", file=path) from e
    for col in required:
        if col not in table.column_names:
            raise DatasetError(f"required column is missing (has {table.column_names})", file=path, field=col)
    return table


def _images(root: Root, path: Path) -> list[Item]:
    table = _read_table(path, REQUIRED_IMAGE_COLUMNS)
    cols = {c: table.column(c).to_pylist() for c in table.column_names}
    n = table.num_rows
    ids, blobs, rels = cols["id"], cols.get("image", [None] * n), cols.get("image_path", [None] * n)
    captions = cols.get("caption", [None] * n)
    items = []
    seen: set[str] = set()
    for i in range(n):
        iid = ids[i]
        if not isinstance(iid, str) or not iid:
            raise DatasetError("id must be a non-empty string", file=path, record=i, field="id")
        if iid in seen:
            raise DatasetError("duplicate id", file=path, record=iid, field="id")
        seen.add(iid)
        image: bytes | Path | None
        blob = blobs[i]["bytes"] if isinstance(blobs[i], dict) else blobs[i]  # v2: Image(); v1: bytes
        if blob is not None:
            image = blob
        elif rels[i] is not None:
            image = safe_path(root, rels[i], file=path, record=iid, field_name="image_path")
        else:
            raise DatasetError(
                "record has neither image bytes nor image_path", file=path, record=iid, field="image"
            )
        items.append(Item(id=iid, image=image, caption=captions[i]))
    return items


def _str_list(v: Any, *, file: Path, record: str, field_name: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise DatasetError("expected a list of strings", file=file, record=record, field=field_name)
    return tuple(v)


def load_native(root: str | os.PathLike[str], split: str = "test") -> Task:
    """Read one split of a native dataset into a Task, validating every id against the corpus."""
    root = Path(root)
    manifest = read_manifest(root)
    if split not in manifest["splits"]:
        from cirbench.core.options import did_you_mean

        raise DatasetError(
            f"unknown split {split!r}{did_you_mean(split, manifest['splits'])}; available: "
            f"{', '.join(sorted(manifest['splits']))}",
            file=root / MANIFEST,
            field="splits",
        )
    entry = manifest["splits"][split]
    guard = Root(root)
    corpus = _images(
        guard, safe_path(guard, entry["corpus"], file=root / MANIFEST, record=split, field_name="corpus")
    )
    refs = {it.id: it for it in corpus}
    if "references" in entry:
        for it in _images(
            guard,
            safe_path(guard, entry["references"], file=root / MANIFEST, record=split,
                      field_name="references"),
        ):
            refs.setdefault(it.id, it)
    qpath = safe_path(guard, entry["queries"], file=root / MANIFEST, record=split, field_name="queries")
    table = _read_table(qpath, REQUIRED_QUERY_COLUMNS)
    cols = {c: table.column(c).to_pylist() for c in table.column_names}
    n = table.num_rows
    get = lambda c: cols.get(c, [None] * n)  # noqa: E731
    has_labels = bool(entry.get("has_labels", True))
    queries: list[Query] = []
    for i in range(n):
        qid = cols["id"][i]
        if not isinstance(qid, str) or not qid:
            raise DatasetError("id must be a non-empty string", file=qpath, record=i, field="id")
        text = cols["text"][i]
        if not isinstance(text, str):
            raise DatasetError("text must be a string", file=qpath, record=qid, field="text")
        ref_id = get("reference_id")[i]
        image = None
        if ref_id is not None:
            if ref_id not in refs:
                raise DatasetError(
                    f"unknown reference image {ref_id!r}", file=qpath, record=qid, field="reference_id"
                )
            image = refs[ref_id].image
        relevant = _str_list(cols["relevant_ids"][i], file=qpath, record=qid, field_name="relevant_ids")
        if has_labels and not relevant:
            raise DatasetError(
                "labelled split has a query with no relevant id", file=qpath, record=qid, field="relevant_ids"
            )
        cand = get("candidate_ids")[i]
        variants = _str_list(get("text_variants")[i], file=qpath, record=qid, field_name="text_variants")
        meta_s = get("meta")[i]
        try:
            meta = json.loads(meta_s) if meta_s else {}
        except json.JSONDecodeError as e:
            raise DatasetError(f"malformed JSON: {e}", file=qpath, record=qid, field="meta") from e
        queries.append(
            Query(
                id=qid,
                item=Item(id=qid, image=image, text=text),
                relevant_ids=relevant,
                reference_id=ref_id,
                candidate_ids=None
                if cand is None
                else _str_list(cand, file=qpath, record=qid, field_name="candidate_ids"),
                exclude_ids=_str_list(
                    get("exclude_ids")[i], file=qpath, record=qid, field_name="exclude_ids"
                ),
                category=get("category")[i],
                subcategory=get("subcategory")[i],
                alt_items=tuple(
                    Item(id=f"{qid}#{j}", image=image, text=t) for j, t in enumerate(variants, 1)
                ),
                hard_negative_ids=_str_list(
                    get("hard_negative_ids")[i], file=qpath, record=qid, field_name="hard_negative_ids"
                ),
                meta=meta,
            )
        )
    p = manifest.get("protocol", {})
    known = set(Protocol.__dataclass_fields__)
    fields: dict[str, Any] = {k: (tuple(v) if k == "metrics" else v) for k, v in p.items() if k in known}
    try:  # a scorer is named, never imported: only one a loaded task registered can be used
        fields["scorer"] = scorer_from_record(fields.get("scorer"))
        protocol = Protocol(**fields)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"bad protocol: {e}", file=root / MANIFEST, field="protocol") from e
    metadata = TaskMetadata(
        name=manifest["name"],
        description=manifest.get("description", ""),
        source=str(manifest.get("source", root)),
        license=manifest.get("license", "unknown"),
        citation=manifest.get("citation", ""),
        taxonomy=manifest.get("taxonomy", {}),
        instructions=manifest.get("instructions", {}),
        pitfalls=tuple(manifest.get("pitfalls", ())),
    )
    task = Task(
        metadata=metadata,
        split=split,
        queries=queries,
        corpus=corpus,
        protocol=protocol,
        revision=manifest.get("revision"),
        has_labels=has_labels,
        extra={"dataset_dir": str(root), "version": manifest.get("version")},
    )
    try:
        task.validate()
    except DatasetError as e:  # ids of the queries refer to the corpus: the query file is the one to fix
        if e.file is not None:
            raise
        raise DatasetError(e.message, file=qpath, record=e.record, field=e.field) from e
    return task
