"""open_clip adapter (`open_clip:`) on a tiny random open_clip model saved as safetensors.

The directory layout is open_clip's own `local-dir:` format (open_clip_config.json + weights), loaded by
open_clip.create_model_and_transforms exactly as for a downloaded model. Expected vectors come from
open_clip directly.
"""

from __future__ import annotations

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cirbench.core.types import Item  # noqa: E402
from cirbench.models import get_model  # noqa: E402
from cirbench.models.base import Batch, check_modalities  # noqa: E402
from cirbench.models.registry import get_model_spec  # noqa: E402
from cirbench.retrieval.encode import encode_items  # noqa: E402

pytest.importorskip("open_clip")


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def oc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.tiny import build_tiny_open_clip

    return build_tiny_open_clip(tmp_path_factory.mktemp("oc") / "tiny")


@pytest.fixture(scope="module")
def items() -> list[Item]:
    from tests.helpers.tiny import demo_images

    a, b = demo_images(2, size=(50, 40))
    return [Item("composed", image=_png(a), text="make it red"), Item("image", image=_png(b)),
            Item("text", text="a blue dress")]


def _direct(model_name: str, items: list[Item]) -> tuple[np.ndarray, np.ndarray]:
    import open_clip
    import torch

    model, _, pre = open_clip.create_model_and_transforms(model_name)
    tok = open_clip.get_tokenizer(model_name)
    with torch.inference_mode():
        pixels = torch.stack([pre(it.load_image()) for it in items if it.image is not None])
        fi = model.eval().encode_image(pixels, normalize=True)
        ft = model.encode_text(tok([it.text for it in items if it.text is not None]), normalize=True)
    return fi.numpy(), ft.numpy()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_local_dir_end_to_end(oc_dir: Path, items: list[Item]) -> None:
    enc = get_model(f"open_clip:local-dir:{oc_dir}")
    vecs, _ = encode_items(enc, items, role="query", workers=2, progress=False)
    fi, ft = _direct(f"local-dir:{oc_dir}", items)
    np.testing.assert_allclose(vecs[0], _unit(fi[0] + ft[0]), atol=1e-5)
    np.testing.assert_allclose(vecs[1], fi[1], atol=1e-5)
    np.testing.assert_allclose(vecs[2], ft[1], atol=1e-5)
    assert enc.spec.dim == 16
    for mode, want in {"image": fi[0], "text": ft[0], "weighted": _unit(0.8 * fi[0] + 0.2 * ft[0])}.items():
        got, _ = encode_items(get_model(f"open_clip:local-dir:{oc_dir}", fusion=mode, alpha=0.2), items[:1],
                              role="query", workers=0, progress=False)
        np.testing.assert_allclose(got[0], want, atol=1e-5, err_msg=mode)
    doc, _ = encode_items(enc, items[:1], role="document", workers=0, progress=False)
    np.testing.assert_allclose(doc[0], fi[0], atol=1e-5)  # gallery side: image tower


def test_architecture_plus_checkpoint_file(oc_dir: Path, items: list[Item], tmp_path: Path) -> None:
    import open_clip

    from tests.helpers.tiny import TINY_OPEN_CLIP_CFG

    cfg = tmp_path / "cirbench-tiny-oc.json"  # the file stem becomes the architecture name
    cfg.write_text(json.dumps(TINY_OPEN_CLIP_CFG))
    open_clip.add_model_config(cfg)
    ckpt = oc_dir / "open_clip_model.safetensors"
    by_file = get_model(f"open_clip:cirbench-tiny-oc/{ckpt}")  # NAME//abs/path.safetensors
    by_option = get_model("open_clip:cirbench-tiny-oc", pretrained=str(ckpt))
    by_dir = get_model(f"open_clip:local-dir:{oc_dir}")
    batch = Batch(items[2:], [None])
    np.testing.assert_allclose(by_file.encode(batch, role="query"), by_dir.encode(batch, role="query"),
                               atol=1e-6)
    assert by_file.fingerprint() != by_dir.fingerprint()  # different targets are different cache namespaces
    assert by_option.fingerprint()["local_digest"] == by_file.fingerprint()["local_digest"]
    with pytest.raises(ValueError, match="neither a file nor a pretrained tag"):
        get_model("open_clip:ViT-B-32/no-such-tag")
    with pytest.raises(ValueError, match="names no weights"):
        get_model("open_clip:ViT-B-32")


def test_pickles_refused_unless_allowed(oc_dir: Path, items: list[Item], tmp_path: Path) -> None:
    from cirbench.models._torch import PickleRefused
    from tests.helpers.tiny import build_tiny_open_clip

    pickled = build_tiny_open_clip(tmp_path / "pickled", fmt="pickle")
    with pytest.raises(PickleRefused, match="allow_pickle=True"):
        get_model(f"open_clip:local-dir:{pickled}")
    with pytest.raises(PickleRefused):
        get_model(f"open_clip:ViT-B-32/{pickled / 'open_clip_pytorch_model.bin'}")
    allowed = get_model(f"open_clip:local-dir:{pickled}", allow_pickle="true")
    batch = Batch(items[2:], [None])
    reference = get_model(f"open_clip:local-dir:{oc_dir}").encode(batch, role="query")
    np.testing.assert_allclose(allowed.encode(batch, role="query"), reference, atol=1e-6)


def test_hf_hub_target_at_a_pinned_revision(oc_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    from tests.helpers.tiny import build_tiny_open_clip, put_in_hub_cache

    cache = tmp_path / "hub"
    put_in_hub_cache(oc_dir, cache, "laion/tiny-oc", "c" * 40, main=False)
    put_in_hub_cache(build_tiny_open_clip(tmp_path / "seed1", seed=1), cache, "laion/tiny-oc", "d" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    c = get_model("open_clip:hf-hub:laion/tiny-oc", revision="c" * 40)
    d = get_model("open_clip:hf-hub:laion/tiny-oc")
    batch = Batch([Item("t", text="red")], [None])
    assert not np.allclose(c.encode(batch, role="query"), d.encode(batch, role="query"))
    assert c.fingerprint()["commit"] == "c" * 40 and d.fingerprint()["commit"] == "d" * 40
    assert c.spec.revision == "c" * 40


def test_fingerprint_and_modalities(oc_dir: Path) -> None:
    target = f"open_clip:local-dir:{oc_dir}"
    base = get_model(target).fingerprint()
    json.dumps(base)
    assert get_model(target).fingerprint() == base
    variants: list[dict[str, Any]] = [
        {"dtype": "bf16"}, {"dtype": "fp16"}, {"fusion": "image"}, {"fusion": "text"},
        {"fusion": "weighted", "alpha": 0.3}, {"fusion": "weighted", "alpha": 0.6}, {"quick_gelu": True}]
    prints = [get_model(target, **v).fingerprint() for v in variants]
    assert all(p != base for p in prints)
    assert len({json.dumps(p, sort_keys=True) for p in prints}) == len(prints)
    image_only = get_model(target, fusion="image")
    with pytest.raises(ValueError, match="needs 'text' input"):
        check_modalities(image_only.spec, {"query": "text", "corpus": "image"})


def test_half_precision_close_to_float32(oc_dir: Path, items: list[Item]) -> None:
    f32, _ = encode_items(get_model(f"open_clip:local-dir:{oc_dir}"), items, role="query", workers=0,
                          progress=False)
    b16, _ = encode_items(get_model(f"open_clip:local-dir:{oc_dir}", dtype="bfloat16"), items, role="query",
                          workers=0, progress=False)
    assert (np.sum(f32 * b16, axis=1) > 0.99).all()


def test_aliases() -> None:
    from cirbench.models.openclip import ALIASES

    assert {"openclip-b32", "openclip-l14", "openclip-h14"} <= {s.name for s in ALIASES}
    for spec in ALIASES:
        assert get_model_spec(spec.name) == spec
        assert spec.revision is not None and len(spec.revision) == 40
        assert str(spec.extra["target"]).startswith("hf-hub:laion/") and spec.dim


# ----------------------------------------------------------------------------- decode=torchvision
def test_torchvision_decode_close_to_open_clip_preprocess(oc_dir: Path, tmp_path: Path) -> None:
    """Pixels within one uint8 step of open_clip's PIL transform, vectors the same to cosine 0.999.

    open_clip resizes with PIL; the torchvision path with torch's antialiased bicubic, which follows PIL's
    filter but rounds differently: measured here, per-image mean abs 0.00002-0.002 and max 0.015 on the
    normalised scale, i.e. at most one uint8 step (1/255/std = 0.015); vector cosines >= 0.9999994. Crop
    offsets round as torchvision's CenterCrop does (floored, as transformers does, the 41x97 image would be
    off by a row: mean 0.096).
    """
    import torch

    from cirbench.core.types import DatasetError
    from cirbench.models import _images
    from tests.helpers.tiny import image_files

    files = image_files(tmp_path / "files")
    target = f"open_clip:local-dir:{oc_dir}"
    pil, tv = get_model(target), get_model(target, decode="torchvision")
    want = torch.stack([pil.read_image(it) for it in files])
    got = _images.pixels([tv.read_image(it) for it in files], tv.pixel_spec, "cpu")
    assert got.shape == want.shape == (len(files), 3, 32, 32)
    steps = (got - want).abs() * torch.tensor(tv.pixel_spec.std).view(1, 3, 1, 1) * 255
    assert float(steps.mean()) < 0.25 and float(steps.max()) <= 1.01
    a, _ = encode_items(pil, files, role="document", workers=2, progress=False)
    b, _ = encode_items(tv, files, role="document", workers=2, progress=False)
    assert (np.sum(a * b, axis=1) > 0.999).all()

    assert tv.fingerprint() != pil.fingerprint() and "decode" not in pil.fingerprint()
    assert tv.spec.extra["decode"] == "torchvision"
    with pytest.raises(ValueError, match="unknown decode mode"):
        get_model(target, decode="gpu")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xdb" + bytes(range(256)))
    with pytest.raises(DatasetError, match="cannot be decoded") as err:
        encode_items(tv, [files[0], Item("broken", image=bad)], role="document", workers=0, progress=False)
    assert err.value.record == "broken" and err.value.file == bad
