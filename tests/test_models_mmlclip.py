"""MML-CLIP (`mml-clip:`) on a tiny random checkpoint saved in mml-codebase's key layout (weights_best.pth).

Expected vectors are computed here from the file's tensors with numpy: the Equal Earth projection, the
random Fourier features and the MLPs written out from mml-codebase's location_encoder.py, the projection heads
as matrix products, the image resize as a half-pixel bilinear loop, and the stock CLIPModel for the backbone.
"""

from __future__ import annotations

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from cirbench.cli import app  # noqa: E402
from cirbench.core.geo import gps_text  # noqa: E402
from cirbench.core.types import Item  # noqa: E402
from cirbench.models import get_model  # noqa: E402
from cirbench.models.base import Batch  # noqa: E402

runner = CliRunner(env={"COLUMNS": "300"})
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.helpers.tiny import build_tiny_clip, build_tiny_mml_clip

    root = tmp_path_factory.mktemp("mmlclip")
    clip = build_tiny_clip(root / "clip")
    return clip, build_tiny_mml_clip(root / "ckpt", clip)


@pytest.fixture(scope="module")
def state(dirs: tuple[Path, Path]) -> dict[str, np.ndarray]:
    import torch

    raw = torch.load(dirs[1] / "weights_best.pth", weights_only=True)
    return {k: v.numpy() for k, v in raw.items()}


def _mlp(x: np.ndarray, s: dict[str, np.ndarray], p: str) -> np.ndarray:
    h = np.maximum(x @ s[f"{p}.0.weight"].T + s[f"{p}.0.bias"], 0)
    return h @ s[f"{p}.2.weight"].T + s[f"{p}.2.bias"]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _gps_by_hand(points: list[tuple[float, float]], s: dict[str, np.ndarray]) -> np.ndarray:
    rows = []
    for lat, lon in points:
        phi, lam = math.radians(lat), math.radians(lon)
        theta = math.asin(math.sqrt(3) / 2 * math.sin(phi))
        a1, a2, a3, a4 = 1.340264, -0.081106, 0.000893, 0.003796
        x = (
            2
            * math.sqrt(3)
            * lam
            * math.cos(theta)
            / (3 * (a1 + 3 * a2 * theta**2 + theta**6 * (7 * a3 + 9 * a4 * theta**2)))
        )
        y = theta * (a1 + a2 * theta**2 + theta**6 * (a3 + a4 * theta**2))
        total = 0.0
        i = 0
        while f"location_encoder.LocEnc{i}.head.weight" in s:
            p = f"location_encoder.LocEnc{i}"
            vp = 2 * np.pi * np.array([x, y]) @ s[f"{p}.capsule.0.b"].T
            h = np.concatenate([np.cos(vp), np.sin(vp)])
            for layer in (1, 3, 5):
                h = np.maximum(h @ s[f"{p}.capsule.{layer}.weight"].T + s[f"{p}.capsule.{layer}.bias"], 0)
            total = total + h @ s[f"{p}.head.weight"].T + s[f"{p}.head.bias"]
            i += 1
        rows.append(total)
    assert i == 3
    return _unit(np.stack(rows))


def _resize_by_hand(img: Any, size: int) -> np.ndarray:
    """cv2.resize INTER_LINEAR semantics: half-pixel centres, edge clamped, no antialiasing, rounded."""
    a = np.asarray(img, dtype=np.float64)
    h, w = a.shape[:2]
    out = np.zeros((size, size, 3))
    for oy in range(size):
        sy = max((oy + 0.5) * h / size - 0.5, 0.0)
        y0 = min(int(sy), h - 1)
        y1, fy = min(y0 + 1, h - 1), sy - int(sy)
        for ox in range(size):
            sx = max((ox + 0.5) * w / size - 0.5, 0.0)
            x0 = min(int(sx), w - 1)
            x1, fx = min(x0 + 1, w - 1), sx - int(sx)
            top = a[y0, x0] * (1 - fx) + a[y0, x1] * fx
            bottom = a[y1, x0] * (1 - fx) + a[y1, x1] * fx
            out[oy, ox] = top * (1 - fy) + bottom * fy
    return (np.round(out) / 255.0 - MEAN) / STD


def _clip_by_hand(clip_dir: Path, images: list[Any], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    import torch
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tok = AutoTokenizer.from_pretrained(clip_dir)
    px = torch.tensor(np.stack([_resize_by_hand(im, 32) for im in images]), dtype=torch.float32)
    with torch.inference_mode():
        img = model.visual_projection(model.vision_model(pixel_values=px.permute(0, 3, 1, 2)).pooler_output)
        t = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        txt = model.text_projection(model.text_model(**t).pooler_output)
    return img.numpy().astype(np.float64), txt.numpy().astype(np.float64)


def test_vectors_match_mml_codebase_by_hand(dirs: tuple[Path, Path], state: dict[str, np.ndarray]) -> None:
    from tests.helpers.tiny import demo_images

    clip_dir, ckpt = dirs
    enc: Any = get_model(f"mml-clip:{ckpt}", backbone=str(clip_dir))
    images = demo_images(2, size=(45, 29))
    texts = ["A tower by the bay", "A museum in town"]
    img_raw, txt_raw = _clip_by_hand(clip_dir, images, texts)
    items = [Item("a", image=_png(images[0])), Item("b", image=_png(images[1]))]
    got = enc.encode(Batch(items, [enc.preprocess(im) for im in images]), role="query")
    np.testing.assert_allclose(got, _unit(_mlp(img_raw, state, "ground_projector")), atol=1e-5)
    enc.views = {"query": "satellite", "document": "gps"}  # what for_views sets for s2c under gps-gallery
    sat = enc.encode(Batch(items, [enc.preprocess(im) for im in images]), role="query")
    np.testing.assert_allclose(sat, _unit(_mlp(img_raw, state, "satellite_projector")), atol=1e-5)
    assert not np.allclose(sat, got, atol=1e-3)  # the view picks the head
    t = enc.encode(Batch([Item("t0", text=texts[0]), Item("t1", text=texts[1])], [None, None]), role="query")
    np.testing.assert_allclose(t, _unit(_mlp(txt_raw, state, "text_projector")), atol=1e-5)
    points = [(40.0, -100.0), (-33.9, 151.2), (47.6, -122.3)]
    g = enc.encode(
        Batch([Item(f"p{i}", text=gps_text(*p)) for i, p in enumerate(points)], [None] * 3), role="document"
    )
    # float32 (as mml-codebase's `location.float()`) cos/sin of 2*pi*b*xy with b ~ 256: ~1e-4 off float64
    np.testing.assert_allclose(g, _gps_by_hand(points, state), atol=3e-4)


def test_views_follow_the_task_direction(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    from cirbench.models.base import bind_task
    from cirbench.tasks import get_task
    from tests.test_tasks_mmlandmarks import write_release

    data = write_release(tmp_path / "mml")
    enc: Any = get_model(f"mml-clip:{dirs[1]}", backbone=str(dirs[0]))
    expect = {
        ("mmlandmarks-g2s", None): ("ground", "satellite"),
        ("mmlandmarks-s2g", None): ("satellite", "ground"),
        ("mmlandmarks-t2g", None): ("text", "ground"),
        ("mmlandmarks-g2c", "gps-gallery"): ("ground", "gps"),
        ("mmlandmarks-t2c", "gps-gallery"): ("text", "gps"),
        ("mmlandmarks-s2c", "satellite-tiles"): ("satellite", "satellite"),
    }
    for (name, protocol), (q, d) in expect.items():
        task = get_task(name, data_dir=data, protocol=protocol)
        assert task.metadata.views == {"query": q, "document": d}, name  # declared by the task, as data
        bound, _ = bind_task(enc, task)
        assert bound.views == {"query": q, "document": d}, name  # type: ignore[attr-defined]
        assert bound.fingerprint()["views"] == {"query": q, "document": d}
    assert enc.views == {"query": "ground", "document": "ground"}  # binding copies, never mutates
    assert not hasattr(enc, "for_task")  # the encoder receives the views, never the task
    with pytest.raises(ValueError, match="no head for the view"):
        enc.for_views({"query": "sketch"})
    assert (
        get_model(f"mml-clip:{dirs[1]}", backbone=str(dirs[0]), image_view="satellite").fingerprint()
        != enc.fingerprint()
    )


def test_gps_gallery_end_to_end(
    dirs: tuple[Path, Path], state: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """`cirbench eval` on T2C under mml-codebase's GPS gallery: the top-1 point is the by-hand argmax."""
    from tests.test_tasks_mmlandmarks import IDX_SAT, LANDMARKS, write_release

    clip_dir, ckpt = dirs
    data = write_release(tmp_path / "mml")
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        [
            "eval",
            "--model",
            f"mml-clip:{ckpt}",
            "--option",
            f"backbone={clip_dir}",
            "--task",
            "mmlandmarks-t2c",
            "--protocol",
            "gps-gallery",
            "--data-dir",
            str(data),
            "--output",
            str(out),
            "--quiet",
            "--bootstrap",
            "10",
            "--device",
            "cpu",
            "--no-cache",
        ],
    )
    assert res.exit_code == 0, res.output
    result = json.loads((out / "result.json").read_text())
    assert result["protocol"]["name"] == "gps-gallery" and "Acc@1km" in result["scores"]["overall"]["overall"]
    assert result["model"]["fingerprint"]["views"] == {"query": "text", "document": "gps"}
    points = [*IDX_SAT.values(), *LANDMARKS.values()]
    ids = [f"gps/index/{i}" for i in IDX_SAT] + [f"gps/query/{lid}" for lid in LANDMARKS]
    import torch
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tok = AutoTokenizer.from_pretrained(clip_dir)
    with torch.inference_mode():
        t = tok(
            [f"A landmark number {lid}" for lid in LANDMARKS],
            padding="max_length",
            max_length=77,
            return_tensors="pt",
        )
        txt_raw = model.text_projection(model.text_model(**t).pooler_output).numpy().astype(np.float64)
    q = _unit(_mlp(txt_raw, state, "text_projector"))
    top1 = [ids[j] for j in np.argmax(q @ _gps_by_hand(points, state).T, axis=1)]
    run = pq.read_table(out / "run.parquet").to_pylist()
    assert [r["ranked_ids"][0] for r in run] == top1
    # a model without a location encoder cannot run the GPS gallery
    res = runner.invoke(
        app,
        [
            "eval",
            "--model",
            f"hf-clip:{clip_dir}",
            "--task",
            "mmlandmarks-t2c",
            "--protocol",
            "gps-gallery",
            "--data-dir",
            str(data),
            "--output",
            str(tmp_path / "o2"),
            "--quiet",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 2 and "gps" in res.output and not (tmp_path / "o2").exists()


def test_image_to_gps_and_satellite_tiles_end_to_end(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    from tests.test_tasks_mmlandmarks import write_release

    clip_dir, ckpt = dirs
    data = write_release(tmp_path / "mml")
    for task, protocol in (
        ("mmlandmarks-g2c", "gps-gallery"),
        ("mmlandmarks-s2c", "gps-gallery"),
        ("mmlandmarks-g2s", "paper-code"),
    ):
        out = tmp_path / task
        res = runner.invoke(
            app,
            [
                "eval",
                "--model",
                f"mml-clip:{ckpt / 'weights_best.pth'}",
                "--option",
                f"backbone={clip_dir}",
                "--task",
                task,
                "--protocol",
                protocol,
                "--data-dir",
                str(data),
                "--output",
                str(out),
                "--quiet",
                "--bootstrap",
                "10",
                "--device",
                "cpu",
                "--no-cache",
            ],
        )
        assert res.exit_code == 0, res.output
        result = json.loads((out / "result.json").read_text())
        assert result["main_metric"] in result["scores"]["overall"]["overall"]


def test_checkpoints_in_another_layout_are_refused(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    import torch

    from tests.test_tasks_mmlandmarks import write_release

    clip_dir, ckpt = dirs
    data = write_release(tmp_path / "mml")
    full = torch.load(ckpt / "weights_best.pth", weights_only=True)
    cases = {
        "missing": {k: v for k, v in full.items() if not k.startswith("satellite_projector.")},
        "unexpected": {**full, "image_encoder.extra_head.weight": torch.zeros(2, 2)},
        "renamed": {k.replace("image_encoder.clip_model.", "visual."): v for k, v in full.items()},
    }
    for name, sd in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(sd, path)
        res = runner.invoke(
            app,
            [
                "eval",
                "--model",
                f"mml-clip:{path}",
                "--option",
                f"backbone={clip_dir}",
                "--task",
                "mmlandmarks-g2s",
                "--data-dir",
                str(data),
                "--quiet",
                "--output",
                str(tmp_path / f"o-{name}"),
            ],
        )
        assert res.exit_code == 2, res.output
        line = " ".join(res.output.split())
        assert str(path) in line and "released key layout" in line, line
        assert (
            "satellite_projector.0.weight"
            if name == "missing"
            else "image_encoder.extra_head.weight"
            if name == "unexpected"
            else "visual."
        ) in line, line
        assert "Traceback" not in res.output
    # a pickle that would call a function when unpickled is refused, and the function never runs
    evil = tmp_path / "evil.pth"
    torch.save({"x": _Calls(str(tmp_path / "ran"))}, evil)
    with pytest.raises(ValueError, match="weights_only"):
        get_model(f"mml-clip:{evil}", backbone=str(clip_dir))
    assert not (tmp_path / "ran").exists()


class _Calls:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (Path(self.path),))


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
