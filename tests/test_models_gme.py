"""GME adapter (`gme:`) on a tiny random Qwen2-VL saved with save_pretrained and loaded by the adapter.

The pooled vectors are checked against a computation done by hand here: the prompt string written out
literally, the stock Qwen2-VL processor (or the same expansion by hand without torchvision), the model run
directly, the last token's hidden state taken and normalised.
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
from cirbench.models.base import Batch  # noqa: E402
from cirbench.models.registry import get_model_spec  # noqa: E402
from cirbench.retrieval.encode import encode_items  # noqa: E402

TINY = {"min_image_tokens": 4, "max_image_tokens": 4}  # 56x56 px -> 4 merged image tokens
INSTRUCTION = "Find an image that shows the reference image with the requested change."


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def gme_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.tiny import build_tiny_gme

    return build_tiny_gme(tmp_path_factory.mktemp("gme") / "tiny")


@pytest.fixture(scope="module")
def enc(gme_dir: Path) -> Any:
    return get_model(f"gme:{gme_dir}", **TINY)


@pytest.fixture(scope="module")
def items() -> list[Item]:
    from tests.helpers.tiny import demo_images

    a, b = demo_images(2, size=56)  # already a multiple of 28: the pre-resize leaves it as is
    return [Item("composed", image=_png(a), text="make it red"), Item("image", image=_png(b)),
            Item("text", text="a blue dress with long sleeves")]


def _by_hand(gme_dir: Path, items: list[Item], system: str, *, mrope: bool = False) -> np.ndarray:
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from tests.helpers.tiny import has_torchvision

    texts = []
    for it in items:
        slot = "<|vision_start|><|image_pad|><|vision_end|>" if it.image is not None else ""
        user = slot + (it.text or "")
        texts.append(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                     "<|im_start|>assistant\n<|endoftext|>")
    images = [it.load_image() for it in items if it.image is not None]
    if has_torchvision():
        from transformers import AutoImageProcessor, AutoProcessor

        proc = AutoProcessor.from_pretrained(gme_dir)
        proc.image_processor = AutoImageProcessor.from_pretrained(gme_dir, backend="pil")  # the default
        proc.tokenizer.padding_side = "right"
        inp = dict(proc(text=texts, images=images, padding=True, return_tensors="pt"))
    else:  # what Qwen2VLProcessor does: one <|image_pad|> per merged patch
        from transformers import AutoImageProcessor, AutoTokenizer

        tok, improc = AutoTokenizer.from_pretrained(gme_dir), AutoImageProcessor.from_pretrained(gme_dir,
                                                                                                 backend="pil")
        img = improc(images=images, return_tensors="pt")
        n = [int(g.prod()) // improc.merge_size ** 2 for g in img["image_grid_thw"]]
        k = iter(n)
        texts = [t.replace("<|image_pad|>", "<|image_pad|>" * next(k)) if "<|image_pad|>" in t else t
                 for t in texts]
        tok.padding_side = "right"
        inp = {**tok(texts, padding=True, return_tensors="pt"), **img}
        inp["mm_token_type_ids"] = (inp["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")).long()
    model = Qwen2VLForConditionalGeneration.from_pretrained(gme_dir).eval()
    b, n_tok = inp["input_ids"].shape
    kw = {k: inp[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    if mrope:
        kw["mm_token_type_ids"] = inp["mm_token_type_ids"]
    else:  # gme_inference.py calls the decoder with position_ids=None: plain sequential positions
        kw["position_ids"] = torch.arange(n_tok).view(1, 1, n_tok).expand(3, b, n_tok)
    with torch.inference_mode():
        hidden = model.model(**kw).last_hidden_state
    last = inp["attention_mask"].sum(1) - 1
    endoftext = model.config.text_config.pad_token_id  # the tiny tokenizer's <|endoftext|> id
    assert (inp["input_ids"][torch.arange(b), last] == endoftext).all()  # pooled: the appended <|endoftext|>
    return torch.nn.functional.normalize(hidden[torch.arange(b), last], dim=-1).numpy()


def test_pooling_matches_a_direct_computation(enc: Any, gme_dir: Path, items: list[Item]) -> None:
    vecs, _ = encode_items(enc, items, role="query", instruction=INSTRUCTION, workers=2, progress=False)
    assert vecs.shape == (3, 32)
    np.testing.assert_allclose(vecs, _by_hand(gme_dir, items, INSTRUCTION), atol=2e-5)
    # documents use GME's default instruction whatever the task says
    docs, _ = encode_items(enc, items, role="document", instruction=INSTRUCTION, workers=0, progress=False)
    np.testing.assert_allclose(docs, _by_hand(gme_dir, items, "You are a helpful assistant."), atol=2e-5)


def test_mrope_option_matches_qwen2vl_positions(gme_dir: Path, items: list[Item]) -> None:
    enc = get_model(f"gme:{gme_dir}", position_ids="mrope", **TINY)
    vecs, _ = encode_items(enc, items, role="query", instruction=INSTRUCTION, workers=0, progress=False)
    np.testing.assert_allclose(vecs, _by_hand(gme_dir, items, INSTRUCTION, mrope=True), atol=2e-5)


def test_mixed_batch_equals_one_at_a_time(enc: Any, items: list[Item]) -> None:
    prepared = [enc.preprocess(it.load_image()) if it.image is not None else None for it in items]
    together = enc.encode(Batch(items, prepared), role="query", instruction=INSTRUCTION)
    for i, it in enumerate(items):
        alone = enc.encode(Batch([it], [prepared[i]]), role="query", instruction=INSTRUCTION)
        np.testing.assert_allclose(alone[0], together[i], atol=2e-5)
    # a raw PIL image (a loop without preprocess) gives the same vector
    raw = enc.encode(Batch(items[:1], [items[0].load_image()]), role="query", instruction=INSTRUCTION)
    np.testing.assert_allclose(raw[0], together[0], atol=1e-6)


def test_instruction_rules(enc: Any, gme_dir: Path, items: list[Item]) -> None:
    batch = Batch(items[2:], [None])
    q_none = enc.encode(batch, role="query", instruction=None)
    q_default = enc.encode(batch, role="query", instruction="You are a helpful assistant.")
    q_task = enc.encode(batch, role="query", instruction=INSTRUCTION)
    np.testing.assert_allclose(q_none, q_default, atol=1e-6)
    assert not np.allclose(q_none, q_task, atol=1e-4)
    d_task = enc.encode(batch, role="document", instruction=INSTRUCTION)
    np.testing.assert_allclose(d_task, q_none, atol=1e-6)  # documents: always the default
    instructed = get_model(f"gme:{gme_dir}", instruct_documents=True, **TINY)
    np.testing.assert_allclose(instructed.encode(batch, role="document", instruction=INSTRUCTION), q_task,
                               atol=1e-6)


def test_image_token_budget(gme_dir: Path) -> None:
    from tests.helpers.tiny import demo_images

    img = demo_images(1, size=112)[0]
    small: Any = get_model(f"gme:{gme_dir}", min_image_tokens=4, max_image_tokens=4)
    large: Any = get_model(f"gme:{gme_dir}", min_image_tokens=16, max_image_tokens=16)
    assert int(small.preprocess(img)["image_grid_thw"].prod()) // 4 == 4
    assert int(large.preprocess(img)["image_grid_thw"].prod()) // 4 == 16
    assert small.fingerprint()["max_pixels"] == 4 * 28 * 28
    pixels = get_model(f"gme:{gme_dir}", min_pixels=56 * 56, max_pixels=56 * 56)
    assert pixels.fingerprint() == small.fingerprint()  # the same budget, said in pixels
    item = Item("i", image=_png(img), text="x")
    a = small.encode(Batch([item], [small.preprocess(img)]), role="query")
    b = large.encode(Batch([item], [large.preprocess(img)]), role="query")
    assert not np.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="max_length"):  # truncation inside the image tokens
        tight: Any = get_model(f"gme:{gme_dir}", max_length=40, **TINY)
        tight.encode(Batch([item], [tight.preprocess(img)]), role="query", instruction=INSTRUCTION)


def test_fingerprint_changes_with_everything_that_changes_a_vector(enc: Any, gme_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    from tests.helpers.tiny import put_in_hub_cache

    base = enc.fingerprint()
    json.dumps(base)
    assert get_model(f"gme:{gme_dir}", **TINY).fingerprint() == base
    variants: list[dict[str, Any]] = [{"dtype": "bfloat16"}, {"max_image_tokens": 8}, {"min_image_tokens": 2},
                {"position_ids": "mrope"}, {"instruct_documents": True}, {"attn_implementation": "eager"},
                {"max_length": 512}, {"image_backend": "torchvision"}]
    prints = [get_model(f"gme:{gme_dir}", **{**TINY, **v}).fingerprint() for v in variants]
    assert all(p != base for p in prints)
    assert len({json.dumps(p, sort_keys=True) for p in prints}) == len(prints)
    # revisions of a hub id (served offline from a hub cache)
    cache = tmp_path / "hub"
    put_in_hub_cache(gme_dir, cache, "org/tiny-gme", "1" * 40, main=False)
    put_in_hub_cache(gme_dir, cache, "org/tiny-gme", "2" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    r1 = get_model("gme:org/tiny-gme", revision="1" * 40, **TINY).fingerprint()
    r2 = get_model("gme:org/tiny-gme", revision="2" * 40, **TINY).fingerprint()
    assert r1 != r2 and r1["commit"] == "1" * 40 and r2["revision"] == "2" * 40


def test_dtype_defaults_and_bf16(gme_dir: Path, enc: Any, items: list[Item]) -> None:
    assert enc.spec.dtype == "float32"  # CPU default; float16 is the GPU default (gme_inference.py)
    bf16 = get_model(f"gme:{gme_dir}", dtype="bf16", **TINY)
    batch = Batch(items[2:], [None])
    cos = float(np.sum(bf16.encode(batch, role="query") * enc.encode(batch, role="query")))
    assert cos > 0.98


def test_aliases_and_refusals(tmp_path: Path) -> None:
    gme2, gme7 = get_model_spec("gme"), get_model_spec("gme-7b")
    assert gme2 is not None and gme7 is not None
    assert gme2.id == "Alibaba-NLP/gme-Qwen2-VL-2B-Instruct" and gme2.dim == 1536
    assert gme7.id == "Alibaba-NLP/gme-Qwen2-VL-7B-Instruct" and gme7.dim == 3584
    for s in (gme2, gme7):
        assert s.revision is not None and len(s.revision) == 40
        assert s.modalities == ("image", "text", "image+text") and s.dtype == "float16"
        assert s.default_instructions["document"] == "You are a helpful assistant."
    not_qwen = tmp_path / "clip"
    not_qwen.mkdir()
    (not_qwen / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError, match="qwen2_vl"):
        get_model(f"gme:{not_qwen}")
    with pytest.raises(TypeError, match="unknown option"):
        get_model(f"gme:{not_qwen}", fusion="sum")


def test_smart_resize_follows_qwen_vl_utils() -> None:
    from cirbench.models.gme import smart_resize

    assert smart_resize(56, 56) == (56, 56)
    assert smart_resize(100, 60) == (112, 56)
    assert smart_resize(10, 10) == (56, 56)  # grown to the 4*28*28 minimum
    h, w = smart_resize(8000, 6000)  # shrunk to the 16384*28*28 maximum
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 16384 * 28 * 28 and abs(h / w - 4 / 3) < 0.05


def test_evaluate_end_to_end(gme_dir: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    import cirbench
    from cirbench.evaluation import EvalOptions

    result = cirbench.evaluate(f"gme:{gme_dir}", str(tiny_dataset), output=tmp_path / "out",
                               options=EvalOptions(progress=False, n_bootstrap=20),
                               model_options={"min_image_tokens": "4", "max_image_tokens": "4"})
    assert (tmp_path / "out" / "run.parquet").is_file()
    assert result.model["fingerprint"]["max_pixels"] == 4 * 28 * 28
