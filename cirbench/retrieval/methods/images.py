"""Generated images as artifacts: content-addressed files beside the artifact store's JSONL records.

A generated image (a mental image, a synthetic gallery twin) is an artifact like a caption: its key is the
SHA-256 of the generator's fingerprint, the prompt's hash, the call and storage settings, the item's seed and
its content (`ArtifactSpec.key`). The pixels go to `<stage folder>/images/<key[:2]>/<key>.<ext>`, written
atomically (temporary file, then rename) *before* the record that names them is appended to the stage's
JSONL part. So after a SIGKILL either the image is there whole or not at all, and an image whose record was
lost with the kill is adopted on the next run instead of being generated again: nothing finished is lost,
nothing is generated twice.

Format: PNG by default. It is lossless, so the stored file is exactly what the generator produced and every
later feature is computed from the generator's own pixels; at 512x512 it is ~0.3-0.4 MB an image, which
matches the 41.4 GB Paracosm reports for CIRCO's 123k. `webp` or `jpeg` at a fixed quality is ~5x smaller;
the format and quality are part of the artifact key, because they change the pixels the encoder sees.
Features are always computed from the stored file, never from the in-memory image, so a run that generated
an image and a run that reused it give the same numbers.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from cirbench.core.io import atomic_write
from cirbench.core.types import DatasetError
from cirbench.retrieval.methods.artifacts import ArtifactJob, ArtifactSpec, ArtifactStore, Shard

FORMATS = {"png": "png", "webp": "webp", "jpeg": "jpg"}
STALE_TEMP_SECONDS = 600
"""A temporary image file older than this was left by a killed process (a write takes milliseconds)."""

Render = Callable[[Sequence[ArtifactJob]], Sequence[Image.Image]]
"""Makes the images of a batch of jobs, in order: a pure function of the generator, prompt, seed and item."""


@dataclass(frozen=True)
class ImageFormat:
    """How generated images are stored: png (lossless), or webp / jpeg at a fixed quality."""

    format: str = "png"
    quality: int = 95
    """webp / jpeg only (1-100); png is lossless and ignores it."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"image format {self.format!r}: choose one of {', '.join(FORMATS)}")
        if not 1 <= int(self.quality) <= 100:
            raise ValueError(f"image quality {self.quality}: need 1..100")

    @property
    def ext(self) -> str:
        return FORMATS[self.format]

    def record(self) -> dict[str, Any]:
        return {"format": self.format, "quality": None if self.format == "png" else int(self.quality)}

    def encode(self, image: Image.Image) -> bytes:
        buf = io.BytesIO()
        img = image.convert("RGB")
        if self.format == "png":
            img.save(buf, format="PNG", optimize=False, compress_level=6)
        elif self.format == "webp":
            img.save(buf, format="WEBP", quality=int(self.quality), method=4)
        else:
            img.save(buf, format="JPEG", quality=int(self.quality), subsampling=0)
        return buf.getvalue()


def image_file(store: ArtifactStore, spec: ArtifactSpec, key: str, fmt: ImageFormat) -> Path:
    """Where the image of artifact `key` lives (inside the stage's folder of the store)."""
    return store.folder(spec) / "images" / key[:2] / f"{key}.{fmt.ext}"


def _sweep_stale_temps(folder: Path) -> None:
    """Remove temporary image files a killed process left (old ones only: another shard may be writing)."""
    now = time.time()
    for tmp in folder.glob("images/*/.*.tmp") if folder.is_dir() else []:
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                tmp.unlink()
        except OSError:
            continue


@dataclass
class ImageStageReport:
    """What an image stage did in this run: generated, adopted (file there, record lost) or reused."""

    generated: int = 0
    adopted: int = 0


def image_maker(
    store: ArtifactStore, spec: ArtifactSpec, render: Render, fmt: ImageFormat, report: ImageStageReport
) -> Callable[[Sequence[ArtifactJob]], list[dict[str, Any]]]:
    """The per-item work of an image stage, as `ArtifactStore.generate` (or a distributed engine) calls it:
    jobs -> records naming each stored image. Each image is a pure function of the generator, the prompt,
    the job's seed and content; an image already on disk under its key (a lost record) is adopted."""
    if spec.decoding.get("image_format") != fmt.record():
        raise ValueError(f"stage {spec.stage!r}: the artifact spec must carry the image format it stores")

    def make(jobs: Sequence[ArtifactJob]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for job in jobs:
            key = spec.key(job.id, job.content_key)
            path = image_file(store, spec, key, fmt)
            if path.is_file():  # written before a kill took its record: adopt it, do not generate again
                data = path.read_bytes()
                report.adopted += 1
            else:
                (image,) = render([job])
                data = fmt.encode(image)
                with atomic_write(path, binary=True) as f:
                    f.write(data)
                report.generated += 1
            out.append({
                "file": path.relative_to(store.folder(spec)).as_posix(),
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
            })
        return out

    return make


def image_stage(
    store: ArtifactStore,
    spec: ArtifactSpec,
    items: Sequence[tuple[str, str]],
    render: Render,
    fmt: ImageFormat,
    *,
    shard: Shard | None = None,
    report: ImageStageReport | None = None,
) -> dict[str, Path]:
    """item id -> the stored image of each (id, content key) this shard owns, generating what is missing.

    One image per batch (`batch_size=1`): each image's record is on disk before the next one is started,
    and batching can never change a diffusion output. `spec.decoding` must include `fmt.record()`.
    """
    make = image_maker(store, spec, render, fmt, report if report is not None else ImageStageReport())
    _sweep_stale_temps(store.folder(spec))
    got = store.generate(spec, items, make, shard=shard or Shard(), batch_size=1)
    return {i: image_path(store, spec, i, v) for i, v in got.items()}


def image_path(store: ArtifactStore, spec: ArtifactSpec, item_id: str, value: Any) -> Path:
    """The image file a record names; one that is missing (records merged without their images) is refused."""
    if not isinstance(value, dict) or not isinstance(value.get("file"), str):
        raise DatasetError("not an image artifact record", file=store.folder(spec), record=item_id)
    folder = store.folder(spec)
    path = (folder / value["file"]).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        raise DatasetError(
            "the image this artifact record names is missing (copy the stage's images/ folder with its "
            "records)", file=folder / str(value["file"]), record=item_id,
        )
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


__all__ = [
    "FORMATS", "ImageFormat", "ImageStageReport", "Render", "file_sha256", "image_file", "image_maker",
    "image_path", "image_stage",
]
