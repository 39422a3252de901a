"""transformers CLIP / SigLIP / SigLIP2 adapter (`hf-clip:`) on tiny random models.

Every model is built from a config, saved with save_pretrained and loaded back through the adapter's own
from_pretrained call, the one a hub id goes through. Expected vectors are computed here directly with
transformers, so the adapter's routing, padding and fusion are checked against an independent computation.
"""

from __future__ import annotations

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cirbench.core.types import DatasetError, Item  # noqa: E402
from cirbench.models import get_model  # noqa: E402
from cirbench.models.base import Batch, check_modalities  # noqa: E402
from cirbench.models.registry import get_model_spec  # noqa: E402
from cirbench.retrieval.encode import encode_items  # noqa: E402

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.helpers.tiny import build_tiny_clip, build_tiny_siglip, build_tiny_siglip2

    root = tmp_path_factory.mktemp("two-tower")
    return {"clip": build_tiny_clip(root / "clip"), "siglip": build_tiny_siglip(root / "siglip"),
            "siglip2": build_tiny_siglip2(root / "siglip2")}


@pytest.fixture(scope="module")
def items() -> list[Item]:
    from tests.helpers.tiny import demo_images

    a, b = demo_images(2, size=(40, 30))
    return [Item("composed", image=_png(a), text="make it red and striped"),
            Item("image", image=_png(b)),
            Item("text", text="a blue dress")]


def _unit(x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _direct(model_dir: Path, items: list[Item]) -> tuple[np.ndarray, np.ndarray]:
    """Image and text tower outputs computed with transformers alone (the model cards' usage)."""
    import torch
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(model_dir).eval()
    proc = AutoProcessor.from_pretrained(model_dir)
    siglip = model.config.model_type in ("siglip", "siglip2")
    limit = model.config.text_config.max_position_embeddings
    with torch.inference_mode():
        img = proc.image_processor(images=[it.load_image() for it in items if it.image is not None],
                                   return_tensors="pt")
        fi = model.get_image_features(**img).pooler_output
        tok = proc.tokenizer([it.text for it in items if it.text is not None],
                             padding="max_length" if siglip else True, max_length=limit, truncation=True,
                             return_tensors="pt")
        ft = model.get_text_features(input_ids=tok["input_ids"],
                                     attention_mask=tok["attention_mask"]).pooler_output
    return _unit(fi.numpy()), _unit(ft.numpy())


@pytest.mark.parametrize("arch", ["clip", "siglip", "siglip2"])
def test_end_to_end_matches_direct_computation(dirs: dict[str, Path], items: list[Item], arch: str) -> None:
    enc = get_model(f"hf-clip:{dirs[arch]}")
    vecs, stats = encode_items(enc, items, role="query", workers=2, progress=False)
    assert vecs.shape == (3, enc.spec.dim) and stats["encoded"] == 3
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    fi, ft = _direct(dirs[arch], items)  # images: composed, image; texts: composed, text
    np.testing.assert_allclose(vecs[0], _unit(fi[0] + ft[0]), atol=1e-5)  # sum: normalise(î + t̂)
    np.testing.assert_allclose(vecs[1], fi[1], atol=1e-5)
    np.testing.assert_allclose(vecs[2], ft[1], atol=1e-5)


def test_fusion_modes(dirs: dict[str, Path], items: list[Item]) -> None:
    d = dirs["clip"]
    fi, ft = _direct(d, items)
    i_hat, t_hat = fi[0], ft[0]
    expected = {"image": i_hat, "text": t_hat, "sum": _unit(i_hat + t_hat),
                "weighted": _unit(0.7 * i_hat + 0.3 * t_hat)}
    for mode, want in expected.items():
        enc = get_model(f"hf-clip:{d}", fusion=mode, alpha=0.3)
        got, _ = encode_items(enc, items[:1], role="query", workers=0, progress=False)
        np.testing.assert_allclose(got[0], want, atol=1e-5, err_msg=mode)
        # the gallery side is always the image tower, whatever the fusion mode
        doc, _ = encode_items(enc, items[:1], role="document", workers=0, progress=False)
        np.testing.assert_allclose(doc[0], i_hat, atol=1e-5, err_msg=mode)
    half = get_model(f"hf-clip:{d}", fusion="weighted", alpha=0.5)
    got, _ = encode_items(half, items[:1], role="query", workers=0, progress=False)
    np.testing.assert_allclose(got[0], expected["sum"], atol=1e-5)  # alpha=0.5 is exactly `sum`


def test_modalities_per_fusion_mode(dirs: dict[str, Path], items: list[Item]) -> None:
    image_only = get_model(f"hf-clip:{dirs['clip']}", fusion="image")
    assert image_only.spec.modalities == ("image", "image+text")
    assert image_only.spec.name.endswith("+image")
    with pytest.raises(ValueError, match="needs 'text' input"):
        check_modalities(image_only.spec, {"query": "text", "corpus": "image"})
    check_modalities(image_only.spec, {"query": "image+text", "corpus": "image"})
    with pytest.raises(DatasetError, match="text-only"):
        image_only.encode(Batch([items[2]], [None]), role="query")
    for mode in ("sum", "weighted", "text"):
        spec = get_model(f"hf-clip:{dirs['clip']}", fusion=mode).spec
        check_modalities(spec, {"query": "text", "corpus": "image"})
        check_modalities(spec, {"query": "image+text", "corpus": "image"})


def test_fingerprint_changes_with_everything_that_changes_a_vector(dirs: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    d = dirs["clip"]
    base = get_model(f"hf-clip:{d}").fingerprint()
    assert get_model(f"hf-clip:{d}").fingerprint() == base  # stable
    json.dumps(base)  # usable as a cache key
    variants: list[dict[str, Any]] = [
        {"dtype": "bfloat16"}, {"fusion": "image"}, {"fusion": "text"}, {"fusion": "weighted", "alpha": 0.3},
        {"fusion": "weighted", "alpha": 0.4}, {"lowercase": True}, {"max_length": 16}]
    prints = [get_model(f"hf-clip:{d}", **v).fingerprint() for v in variants]
    assert all(p != base for p in prints)
    assert len({json.dumps(p, sort_keys=True) for p in prints}) == len(prints)
    # different weights in a local directory -> different fingerprint
    from tests.helpers.tiny import build_tiny_clip

    other = build_tiny_clip(tmp_path / "clip-seed1", seed=1)
    assert get_model(f"hf-clip:{other}").fingerprint()["local_digest"] != base["local_digest"]


def test_revision_pins_the_weights(dirs: dict[str, Path], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id at two commits, served from a hub cache offline: revision picks the weights and the print."""
    import huggingface_hub.constants

    from tests.helpers.tiny import build_tiny_clip, put_in_hub_cache

    cache = tmp_path / "hub"
    put_in_hub_cache(dirs["clip"], cache, "org/tiny-clip", COMMIT_A, main=False)
    put_in_hub_cache(build_tiny_clip(tmp_path / "seed1", seed=1), cache, "org/tiny-clip", COMMIT_B)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    batch = Batch([Item("t", text="red")], [None])
    a = get_model("hf-clip:org/tiny-clip", revision=COMMIT_A)
    b = get_model("hf-clip:org/tiny-clip", revision=COMMIT_B)
    main = get_model("hf-clip:org/tiny-clip")
    assert not np.allclose(a.encode(batch, role="query"), b.encode(batch, role="query"))
    np.testing.assert_allclose(main.encode(batch, role="query"), b.encode(batch, role="query"))
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint()["commit"] == COMMIT_A and main.fingerprint()["commit"] == COMMIT_B
    assert a.spec.revision == COMMIT_A


def test_aliases_carry_metadata_and_load_through_the_same_adapter(dirs: dict[str, Path]) -> None:
    from cirbench.models.clip import ALIASES, HFTwoTowerEncoder

    names = {s.name for s in ALIASES}
    assert {"clip-b32", "clip-l14", "siglip-b16", "siglip2"} <= names
    for spec in ALIASES:
        assert get_model_spec(spec.name) == spec
        assert spec.revision and len(spec.revision) == 40 and int(spec.revision, 16) >= 0
        assert spec.dim and spec.license and spec.modalities == ("image", "text", "image+text")
    assert get_model_spec("siglip2").extra["options"] == {"lowercase": True}  # type: ignore[union-attr]
    # the alias factory with the weights swapped for the tiny model: metadata kept, fusion in the name
    registered = get_model_spec("clip-b32")
    assert registered is not None
    spec = dataclasses.replace(registered, id=str(dirs["clip"]))
    enc = HFTwoTowerEncoder(spec, fusion="weighted", alpha=0.25)
    assert enc.spec.name == "clip-b32+weighted0.25" and enc.spec.license == spec.license
    assert enc.spec.dim == 512  # the registry's dim is kept as metadata


def test_remote_code_and_pickles_are_refused(dirs: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants
    import torch
    from safetensors.torch import load_file

    from cirbench.models._torch import PickleRefused, RemoteCodeRefused
    from tests.helpers.tiny import put_in_hub_cache

    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "config.json").write_text(json.dumps(
        {"model_type": "my_custom_clip", "auto_map": {"AutoModel": "modeling_my.MyModel"}}))
    with pytest.raises(RemoteCodeRefused, match="trust_remote_code=True"):
        get_model(f"hf-clip:{custom}")

    pickled = tmp_path / "pickled"
    shutil.copytree(dirs["clip"], pickled)
    state = load_file(str(pickled / "model.safetensors"))
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")
    with pytest.raises(PickleRefused, match="allow_pickle=True"):
        get_model(f"hf-clip:{pickled}")
    batch = Batch([Item("t", text="red")], [None])
    put_in_hub_cache(pickled, tmp_path / "hub", "org/pickled", "9" * 40)  # the hub-id path refuses too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(PickleRefused, match="allow_pickle=True"):
        get_model("hf-clip:org/pickled")
    allowed = get_model(f"hf-clip:{pickled}", allow_pickle=True)
    np.testing.assert_allclose(allowed.encode(batch, role="query"),
                               get_model(f"hf-clip:{dirs['clip']}").encode(batch, role="query"), atol=1e-6)


def test_bad_options_fail_loudly(dirs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="unknown fusion mode"):
        get_model(f"hf-clip:{dirs['clip']}", fusion="imgae")
    with pytest.raises(TypeError, match="unknown option"):
        get_model(f"hf-clip:{dirs['clip']}", fusoin="image")
    with pytest.raises(ValueError, match="alpha"):
        get_model(f"hf-clip:{dirs['clip']}", fusion="weighted", alpha=1.5)


def test_bfloat16_close_to_float32(dirs: dict[str, Path], items: list[Item]) -> None:
    f32, _ = encode_items(get_model(f"hf-clip:{dirs['clip']}"), items, role="query", workers=0,
                          progress=False)
    enc = get_model(f"hf-clip:{dirs['clip']}", dtype="bf16")
    assert enc.spec.dtype == "bfloat16"
    b16, _ = encode_items(enc, items, role="query", workers=0, progress=False)
    assert b16.dtype == np.float32
    assert (np.sum(f32 * b16, axis=1) > 0.99).all()


def test_evaluate_end_to_end(dirs: dict[str, Path], tiny_dataset: Path, tmp_path: Path) -> None:
    import cirbench
    from cirbench.evaluation import EvalOptions

    result = cirbench.evaluate(f"hf-clip:{dirs['clip']}", str(tiny_dataset), output=tmp_path / "out",
                               options=EvalOptions(progress=False, n_bootstrap=20),
                               model_options={"fusion": "weighted", "alpha": "0.3"})
    assert (tmp_path / "out" / "result.json").is_file() and (tmp_path / "out" / "run.parquet").is_file()
    assert result.model["fingerprint"]["fusion"] == "weighted" and result.model["fingerprint"]["alpha"] == 0.3


# ----------------------------------------------------------------------------- decode=torchvision
@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Item]:
    from tests.helpers.tiny import image_files

    return image_files(tmp_path_factory.mktemp("files"))


def _pil_pixels(enc: Any, items: list[Item]) -> Any:
    import torch

    return torch.cat([enc.read_image(it)["pixel_values"] for it in items])


@pytest.mark.parametrize("arch", ["clip", "siglip"])
def test_torchvision_decode_matches_the_processor(dirs: dict[str, Path], files: list[Item],
                                                  arch: str) -> None:
    """Same pixels (within a quarter of a uint8 step on average) and same vectors as decode=pil.

    On the CPU both paths decode with libjpeg-turbo and resize uint8 tensors with torchvision (transformers
    5's image processors are torchvision-backed), so they agree to the bit here (measured: 0). The tolerance
    leaves room for another libjpeg build; in uint8 steps, so it means the same for CLIP's std and SigLIP's.
    """
    import torch

    from cirbench.models import _images

    pil = get_model(f"hf-clip:{dirs[arch]}")
    tv = get_model(f"hf-clip:{dirs[arch]}", decode="torchvision")
    want = _pil_pixels(pil, files)
    got = _images.pixels([tv.read_image(it) for it in files], tv.pixel_spec, "cpu")
    assert got.shape == want.shape and got.dtype == want.dtype
    steps = (got - want).abs() * torch.tensor(tv.pixel_spec.std).view(1, 3, 1, 1) * 255  # in uint8 steps
    assert float(steps.mean()) < 0.25 and float(steps.max()) <= 2.0
    a, _ = encode_items(pil, files, role="document", workers=2, progress=False)
    b, _ = encode_items(tv, files, role="document", workers=2, progress=False)
    assert (np.sum(a * b, axis=1) > 0.999).all()  # measured: 1.0 to float precision
    # a Batch built by hand with PIL images goes through the same torch ops
    by_hand = tv.encode(Batch(files, [it.load_image() for it in files]), role="document")
    np.testing.assert_allclose(by_hand, b, atol=1e-5)


def test_decode_option_is_recorded_and_checked(dirs: dict[str, Path]) -> None:
    d = dirs["clip"]
    pil, tv = get_model(f"hf-clip:{d}"), get_model(f"hf-clip:{d}", decode="torchvision")
    assert tv.fingerprint() != pil.fingerprint() and tv.fingerprint()["decode"] == "torchvision"
    assert "decode" not in pil.fingerprint()  # decode=pil keeps the cache keys of earlier runs
    assert get_model(f"hf-clip:{d}", decode="PIL").fingerprint() == pil.fingerprint()
    json.dumps(tv.fingerprint())
    assert pil.spec.extra["decode"] == "pil" and tv.spec.extra["decode"] == "torchvision"
    # its own result folder and leaderboard row: a PIL run and a torchvision run never overwrite each other
    assert tv.spec.name == f"{pil.spec.name}+decode-torchvision"
    with pytest.raises(ValueError, match="unknown decode mode 'nvjpeg'"):
        get_model(f"hf-clip:{d}", decode="nvjpeg")
    with pytest.raises(ValueError, match="Siglip2ImageProcessor: use decode=pil"):
        get_model(f"hf-clip:{dirs['siglip2']}", decode="torchvision")


def test_torchvision_decode_names_bad_files(dirs: dict[str, Path], files: list[Item], tmp_path: Path) -> None:
    enc = get_model(f"hf-clip:{dirs['clip']}", decode="torchvision")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 20)
    with pytest.raises(DatasetError, match="cannot be decoded") as err:
        encode_items(enc, [files[0], Item("broken", image=bad), files[1]], role="document", workers=2,
                     progress=False)
    assert err.value.record == "broken" and err.value.field == "image" and err.value.file == bad
    with pytest.raises(DatasetError, match="missing") as err:
        encode_items(enc, [Item("gone", image=tmp_path / "gone.jpg")], role="document", workers=2,
                     progress=False)
    assert err.value.record == "gone" and err.value.field == "image"


def test_cpu_batches_are_never_pinned(dirs: dict[str, Path], files: list[Item],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Pinned memory is for copies to CUDA; without a GPU, pin_memory() raises."""
    import torch

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("pin_memory called on a CPU run")

    monkeypatch.setattr(torch.Tensor, "pin_memory", refuse)
    for decode in ("pil", "torchvision"):
        enc = get_model(f"hf-clip:{dirs['clip']}", decode=decode)
        encode_items(enc, files[:3], role="document", workers=0, progress=False)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA device")
def test_cuda_paths_match_the_cpu(dirs: dict[str, Path], files: list[Item]) -> None:
    """nvjpeg + GPU resize against the CPU decode, and pinned PIL batches against CPU ones.

    Bounds not yet measured on a GPU: nvjpeg's IDCT and chroma upsampling differ from libjpeg-turbo's by a
    step or so here and there, so the mean difference is held under one uint8 step.
    """
    import torch

    from cirbench.models import _images

    d = dirs["clip"]
    tv = get_model(f"hf-clip:{d}", decode="torchvision")
    encoded = [tv.read_image(it) for it in files]
    on_cpu = _images.pixels(encoded, tv.pixel_spec, "cpu")
    on_gpu = _images.pixels(encoded, tv.pixel_spec, "cuda").cpu()
    assert on_gpu.shape == on_cpu.shape
    steps = (on_gpu - on_cpu).abs() * torch.tensor(tv.pixel_spec.std).view(1, 3, 1, 1) * 255
    assert float(steps.mean()) < 1.0
    a, _ = encode_items(tv, files, role="document", workers=2, progress=False)
    b, _ = encode_items(get_model(f"hf-clip:{d}", decode="torchvision", device="cuda"), files,
                        role="document", workers=2, progress=False)
    assert (np.sum(a * b, axis=1) > 0.99).all()
    pil_cpu, _ = encode_items(get_model(f"hf-clip:{d}"), files, role="document", workers=2, progress=False)
    pil_gpu, _ = encode_items(get_model(f"hf-clip:{d}", device="cuda"), files, role="document", workers=2,
                              progress=False)  # through pinned memory
    assert (np.sum(pil_gpu * pil_cpu, axis=1) > 0.9999).all()  # same pixels; TF32 convs may round differently
