"""Stage 1: the image pool (a folder, a hub dataset, an existing benchmark's corpus), near-duplicates dropped.

Source specs (`--sources`):
    folder:/data/photos                 every image file below the folder (a bare directory path works too)
    hf:user/dataset@train               a `datasets` dataset (hub id or local dir) and split; `image_column`,
                                        `id_column` in the config pick the columns
    dataset:/path/to/native@test        the corpus of a native cirbench dataset (a directory with
                                        cirbench.json works bare), or of a registered task: dataset:cirr@val

Near-duplicates: a perceptual hash per image (pHash from the `imagehash` library when it is installed, else a
64-bit dHash computed with PIL; `dedup.method` forces one), then, in pool order, an image within
`max_distance` bits of an image already kept is dropped and logged with the one it duplicates. Candidate pairs
come from a multi-index (the 64 bits in max_distance+1 bands; two hashes that close share a band exactly), so
the pass is near-linear, not quadratic.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cirbench.builders.core.images import safe_id

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
HASH_METHODS = ("auto", "phash", "dhash", "none")


@dataclass
class Pool:
    """Ordered image ids and a way to read each image's original encoded bytes."""

    spec: str
    ids: list[str]
    origins: dict[str, str]
    reader: Callable[[str], bytes]
    info: dict[str, Any] = field(default_factory=dict)

    def read(self, iid: str) -> bytes:
        return self.reader(iid)

    def image(self, iid: str) -> Image.Image:
        return Image.open(io.BytesIO(self.read(iid))).convert("RGB")


def _unique_ids(raws: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for raw in raws:
        sid = safe_id(raw)
        if sid in seen:
            sid = f"{sid}-{hashlib.sha1(raw.encode()).hexdigest()[:8]}"
        seen.add(sid)
        out.append(sid)
    return out


def _split_at(rest: str) -> tuple[str, str | None]:
    if "@" in rest:
        name, split = rest.rsplit("@", 1)
        return name, split or None
    return rest, None


def folder_pool(spec: str, root: Path) -> Pool:
    if not root.is_dir():
        raise FileNotFoundError(f"sources {spec!r}: {root} is not a directory")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    rels = [p.relative_to(root).with_suffix("").as_posix() for p in files]
    # a name used by two extensions (a.png, a.jpg) keeps them apart
    counts = Counter(rels)
    raws = [r if counts[r] == 1 else p.relative_to(root).as_posix() for r, p in zip(rels, files, strict=True)]
    ids = _unique_ids(raws)
    paths = dict(zip(ids, files, strict=True))
    return Pool(
        spec,
        ids,
        {i: str(p.relative_to(root)) for i, p in paths.items()},
        lambda i: paths[i].read_bytes(),
        {"kind": "folder", "root": str(root)},
    )


def hub_pool(
    spec: str, name: str, split: str | None, image_column: str | None, id_column: str | None
) -> Pool:
    import datasets

    ds = datasets.load_dataset(name, split=split or "train")
    col = image_column or next((c for c, f in ds.features.items() if isinstance(f, datasets.Image)), None)
    if col is None or col not in ds.column_names:
        raise ValueError(
            f"sources {spec!r}: no image column (set sources.image_column; columns: {ds.column_names})"
        )
    ds = ds.cast_column(col, datasets.Image(decode=False))
    raws = [str(v) for v in ds[id_column]] if id_column else [f"{k:07d}" for k in range(len(ds))]
    ids = _unique_ids(raws)
    row = {i: k for k, i in enumerate(ids)}

    def read(iid: str) -> bytes:
        v = ds[row[iid]][col]
        if v.get("bytes"):
            return bytes(v["bytes"])
        return Path(v["path"]).read_bytes()

    return Pool(
        spec,
        ids,
        {i: f"{name}@{split or 'train'}#{r}" for i, r in zip(ids, raws, strict=True)},
        read,
        {"kind": "hub", "dataset": name, "split": split or "train", "image_column": col},
    )


def dataset_pool(spec: str, target: str, split: str | None) -> Pool:
    from cirbench.tasks import get_task

    task = get_task(target, split)
    items = {it.id: it for it in task.corpus}
    ids = _unique_ids(list(items))
    back = dict(zip(ids, items, strict=True))

    def read(iid: str) -> bytes:
        img = items[back[iid]].image
        if isinstance(img, bytes):
            return img
        if img is None:
            raise ValueError(f"corpus item {back[iid]!r} has no image")
        return Path(img).read_bytes()

    return Pool(
        spec,
        ids,
        {i: f"{target}#{back[i]}" for i in ids},
        read,
        {"kind": "dataset", "dataset": target, "split": task.split, "revision": task.revision},
    )


def open_pool(spec: str, cfg: dict[str, Any] | None = None) -> Pool:
    """The pool a source spec names (see the module docstring)."""
    cfg = cfg or {}
    kind, _, rest = spec.partition(":")
    if kind == "folder":
        return folder_pool(spec, Path(rest).expanduser())
    if kind == "hf":
        name, split = _split_at(rest)
        return hub_pool(spec, name, split, cfg.get("image_column"), cfg.get("id_column"))
    if kind == "dataset":
        target, split = _split_at(rest)
        return dataset_pool(spec, target, split)
    path = Path(spec).expanduser()
    if (path / "cirbench.json").is_file():
        return dataset_pool(spec, str(path), None)
    if path.is_dir():
        return folder_pool(spec, path)
    raise ValueError(
        f"sources {spec!r}: expected folder:DIR, hf:NAME[@SPLIT], dataset:PATH_OR_TASK[@SPLIT] "
        "or an existing directory"
    )


# ---------------------------------------------------------------------------------------------- hashing


def dhash(img: Image.Image, size: int = 8) -> int:
    """64-bit difference hash: is each pixel of a (size+1) x size greyscale thumbnail brighter than its right
    neighbour? Robust to re-encoding and rescaling, cheap, PIL and numpy only."""
    a = np.asarray(img.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = 0
    for b in (a[:, :-1] > a[:, 1:]).ravel():
        bits = (bits << 1) | int(b)
    return bits


def resolve_method(method: str) -> str:
    if method not in HASH_METHODS:
        raise ValueError(f"dedup.method must be one of {list(HASH_METHODS)}, got {method!r}")
    if method != "auto":
        return method
    try:
        import imagehash  # noqa: F401
    except ImportError:
        return "dhash"
    return "phash"


def perceptual_hash(img: Image.Image, method: str) -> int:
    if method == "phash":
        import imagehash

        return int(str(imagehash.phash(img)), 16)
    return dhash(img)


def near_duplicates(hashes: Sequence[int], max_distance: int, bits: int = 64) -> list[int | None]:
    """For each hash in order: the index of an earlier kept hash within max_distance bits, or None (kept)."""
    bands = max(1, max_distance + 1)
    width = -(-bits // bands)
    tables: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    out: list[int | None] = []
    for i, h in enumerate(hashes):
        keys = [(h >> (b * width)) & ((1 << width) - 1) for b in range(bands)]
        cands = sorted({j for b, k in enumerate(keys) for j in tables[b].get(k, ())})
        dup = next((j for j in cands if bin(h ^ hashes[j]).count("1") <= max_distance), None)
        out.append(dup)
        if dup is None:
            for b, k in enumerate(keys):
                tables[b].setdefault(k, []).append(i)
    return out


def scan_pool(
    pool: Pool,
    *,
    method: str = "auto",
    max_distance: int = 4,
    min_size: int = 0,
    progress: Callable[[Iterator[str]], Iterator[str]] | None = None,
) -> dict[str, Any]:
    """Decode and hash every image: the kept ids (pool order) and every dropped one with its reason."""
    used = resolve_method(method)
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    hashes: list[int] = []
    ids: Iterator[str] = iter(pool.ids)
    for iid in progress(ids) if progress else ids:
        try:
            img = pool.image(iid)
        except (OSError, ValueError, KeyError) as e:
            dropped.append({"id": iid, "reason": f"cannot decode ({type(e).__name__}: {e})"})
            continue
        w, h = img.size
        if min(w, h) < min_size:
            dropped.append({"id": iid, "reason": f"too small ({w}x{h} < {min_size} px)"})
            continue
        hashes.append(perceptual_hash(img, used) if used != "none" else 0)
        kept.append(
            {
                "id": iid,
                "origin": pool.origins.get(iid, iid),
                "width": w,
                "height": h,
                "hash": f"{hashes[-1]:016x}" if used != "none" else None,
            }
        )
    if used != "none":
        dup_of = near_duplicates(hashes, max_distance)
        survivors = []
        for rec, d, h in zip(kept, dup_of, hashes, strict=True):
            if d is None:
                survivors.append(rec)
            else:
                dist = bin(h ^ hashes[d]).count("1")
                dropped.append(
                    {
                        "id": rec["id"],
                        "reason": f"near-duplicate ({used} distance {dist} <= "
                        f"{max_distance} to {kept[d]['id']})",
                        "duplicate_of": kept[d]["id"],
                        "distance": dist,
                    }
                )
        kept = survivors
    return {
        "spec": pool.spec,
        "info": pool.info,
        "method": used,
        "max_distance": max_distance,
        "min_size": min_size,
        "scanned": len(pool.ids),
        "images": kept,
        "dropped": dropped,
    }


def rank_by_hash(ids: Sequence[str], salt: str) -> list[str]:
    """A seeded, order-independent shuffle: ids sorted by sha256(salt:id)."""
    return sorted(ids, key=lambda i: hashlib.sha256(f"{salt}:{i}".encode()).hexdigest())


def split_pool(kept_ids: Sequence[str], *, seed: int, distractors: int) -> tuple[list[str], list[str]]:
    """(sources in pool order, distractors): the distractors are a seeded sample the editor never touches."""
    picked = set(rank_by_hash(kept_ids, f"{seed}:distractor")[: max(0, distractors)])
    return [i for i in kept_ids if i not in picked], [i for i in kept_ids if i in picked]
