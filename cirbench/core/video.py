"""Video frames for composed video retrieval (WebVid-CoVR), decoded with PyAV.

The frame choices follow lucas-ventura/CoVR: the query is the frame at index `n_frames // 2`
(`src/data/utils.py::get_middle_frame`); a target is `n` frames at the middle of `n` equal segments
(`src/data/embs.py::sample_frames`, n = 15). The frame count is the container's frame count when it has one
(what OpenCV's CAP_PROP_FRAME_COUNT reads), else the number of decoded frames.

Frames are written once to JPEG/PNG files (`extract_frames`), so Items hold paths and the encode loop never
decodes video. `expand_corpus` gives the evaluator the frames to average for each target.

PyAV is an optional dependency: `pip install av` (extra `video`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cirbench.core.types import DatasetError, Item, Task

__all__ = [
    "expand_corpus",
    "extract_frames",
    "frame_count",
    "middle_frame",
    "middle_index",
    "read_frames",
    "sample_frames",
    "sample_indices",
]


def _av() -> Any:
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("video decoding needs PyAV: pip install av (or cirbench[video])") from e
    return av


def _decode_error(path: Path, e: BaseException, record: str | None) -> DatasetError:
    return DatasetError(f"video cannot be decoded: {type(e).__name__}: {e}", file=path, record=record,
                        field="video")


def _open(path: Path, record: str | None) -> Any:
    av = _av()
    if not path.is_file():
        raise DatasetError("video file is missing", file=path, record=record, field="video")
    try:
        container = av.open(os.fspath(path))
        if not container.streams.video:
            container.close()
            raise DatasetError("file has no video stream", file=path, record=record, field="video")
        return container
    except DatasetError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        raise _decode_error(path, e, record) from e


def middle_index(n_frames: int) -> int:
    """CoVR's query frame: `total_frames // 2` (0-based)."""
    return n_frames // 2


def sample_indices(n_frames: int, n: int = 15) -> list[int]:
    """CoVR's target frames (`sample_frames(vlen, n)`): the middle of each of min(n, vlen) equal segments."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    k = min(n_frames, n)
    if k <= 0:
        return []
    bounds = np.linspace(0, n_frames, num=k + 1).astype(int)
    return [int((a + b - 1) // 2) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def frame_count(path: str | os.PathLike[str], *, record: str | None = None) -> int:
    """Frames in the first video stream: the container's count, else a full decode count."""
    path = Path(path)
    container = _open(path, record)
    try:
        stream = container.streams.video[0]
        if stream.frames and stream.frames > 0:
            return int(stream.frames)
        return _decode_count(container, path, record)
    finally:
        container.close()


def _decode_count(container: Any, path: Path, record: str | None) -> int:
    av = _av()
    n = 0
    try:
        for _ in container.decode(video=0):
            n += 1
    except (av.FFmpegError, OSError, ValueError) as e:
        raise _decode_error(path, e, record) from e
    return n


def _decode_at(path: Path, indices: Sequence[int], record: str | None) -> tuple[dict[int, Image.Image], int]:
    """The frames at `indices` (decoded in one sequential pass) and the number of frames decoded."""
    av = _av()
    wanted = set(indices)
    last = max(wanted) if wanted else -1
    got: dict[int, Image.Image] = {}
    n = 0
    container = _open(path, record)
    try:
        for frame in container.decode(video=0):
            if n in wanted:
                got[n] = frame.to_image().convert("RGB")
            n += 1
            if n > last:
                break
    except (av.FFmpegError, OSError, ValueError) as e:
        raise _decode_error(path, e, record) from e
    finally:
        container.close()
    return got, n


def read_frames(path: str | os.PathLike[str], indices: Sequence[int], *, record: str | None = None
                ) -> list[Image.Image]:
    """Frames at the given 0-based indices, in the order given; DatasetError when one does not exist."""
    path = Path(path)
    got, n = _decode_at(path, indices, record)
    missing = [i for i in indices if i not in got]
    if missing:
        raise DatasetError(f"video has only {n} decodable frames; frame {missing[0]} was requested",
                           file=path, record=record, field="video")
    return [got[i] for i in indices]


def _select(path: Path, choose: Any, record: str | None) -> tuple[list[int], list[Image.Image]]:
    """Frames chosen from the frame count; when the container over-reports its count, choose again from
    the number of frames that really decode (a second pass)."""
    n = frame_count(path, record=record)
    if n <= 0:
        raise DatasetError("video has no frames", file=path, record=record, field="video")
    idx = choose(n)
    got, decoded = _decode_at(path, idx, record)
    if any(i not in got for i in idx):
        if decoded <= 0:
            raise DatasetError("video has no decodable frames", file=path, record=record, field="video")
        idx = choose(decoded)
        got, _ = _decode_at(path, idx, record)
    return idx, [got[i] for i in idx]


def middle_frame(path: str | os.PathLike[str], *, record: str | None = None) -> Image.Image:
    """The query frame of a video (CoVR `vid_query_method: middle`)."""
    return _select(Path(path), lambda n: [middle_index(n)], record)[1][0]


def sample_frames(path: str | os.PathLike[str], n: int = 15, *, record: str | None = None
                  ) -> list[Image.Image]:
    """min(n, frames) frames evenly spread over the video (CoVR's target frames)."""
    return _select(Path(path), lambda c: sample_indices(c, n), record)[1]


# ----------------------------------------------------------------------------------------------------
# Frames on disk
# ----------------------------------------------------------------------------------------------------


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def extract_frames(video: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, method: str,
                   n: int = 15, fmt: str = "jpg", record: str | None = None) -> list[Path]:
    """Write the chosen frames of `video` under `out_dir` and return their paths (cached).

    `method` is "middle" (one frame) or "sample" (`n` frames). A small `frames-<method>.json` beside the
    frames records the video's size and mtime, so a changed video is decoded again and an unchanged one
    never is. Files are written to a temporary name and renamed, so an interrupted run leaves no half
    frame behind.
    """
    video, out = Path(video), Path(out_dir)
    if method not in ("middle", "sample"):
        raise ValueError(f"method must be 'middle' or 'sample', not {method!r}")
    if fmt not in ("jpg", "png"):
        raise ValueError(f"fmt must be 'jpg' or 'png', not {fmt!r}")
    if not video.is_file():
        raise DatasetError("video file is missing", file=video, record=record, field="video")
    tag = "middle" if method == "middle" else f"sample{n}"
    marker = out / f"frames-{tag}.json"
    fp = _fingerprint(video)
    if marker.is_file():
        try:
            info = json.loads(marker.read_text())
            paths = [out / name for name in info["files"]]
            if info.get("video") == fp and info.get("format") == fmt and all(p.is_file() for p in paths):
                return paths
        except (ValueError, KeyError, TypeError, OSError):
            pass
    chooser = (lambda c: [middle_index(c)]) if method == "middle" else (lambda c: sample_indices(c, n))
    idx, frames = _select(video, chooser, record)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in zip(idx, frames, strict=True):
        p = out / f"{tag}-{i:06d}.{fmt}"
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        img.save(tmp, format="JPEG" if fmt == "jpg" else "PNG", **({"quality": 95} if fmt == "jpg" else {}))
        os.replace(tmp, p)
        paths.append(p)
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"video": fp, "format": fmt, "indices": idx,
                               "files": [p.name for p in paths]}))
    os.replace(tmp, marker)
    return paths


# ----------------------------------------------------------------------------------------------------
# Corpus-side frame averaging
# ----------------------------------------------------------------------------------------------------


def expand_corpus(task: Task) -> tuple[list[Item], list[list[int]], list[list[float]] | None]:
    """(items to encode, rows per corpus item, weights per corpus item or None) for frame averaging.

    A task whose targets are videos lists each target's frame Items in `Task.corpus_frames`
    ({corpus id: [Item, ...]}) and optional weights in `Task.corpus_frame_weights`. A corpus item
    with no frames stands for itself. The evaluator encodes the returned items, then sets each corpus
    vector to the (weighted) mean of its rows, re-normalised, as it already does for a query's alt_items.
    """
    frames = task.corpus_frames or {}
    weights = task.corpus_frame_weights or {}
    items: list[Item] = []
    rows: list[list[int]] = []
    row_w: list[list[float]] = []
    for it in task.corpus:
        group = frames.get(it.id) or [it]
        rows.append(list(range(len(items), len(items) + len(group))))
        items.extend(group)
        w = weights.get(it.id)
        row_w.append(list(w) if w is not None and len(w) == len(group) else [1.0 / len(group)] * len(group))
    return items, rows, (row_w if weights else None)
