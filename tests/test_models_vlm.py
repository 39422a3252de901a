"""VLM embedders on tiny random models: RzenEmbed and VLM2Vec-V2 (Qwen2-VL), E5-V (LLaVA-NeXT).

Each model is built from a config, saved with save_pretrained and loaded through the adapter's own loader.
Expected vectors are computed here independently: the prompt written out literally, the stock transformers
processor, the full model's forward (`hidden_states[-1]`), the last real token taken and normalised, one
input at a time (so batching and padding in the adapter are checked too).
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
QUERY_INST = "Given an image, find a similar everyday image with the described changes:"
DOC_INST = "Represent the given image."
SLOT = "<|vision_start|><|image_pad|><|vision_end|>"


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.tiny import build_tiny_gme

    return build_tiny_gme(tmp_path_factory.mktemp("qwen2vl") / "tiny")


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.tiny import build_tiny_llava_next

    return build_tiny_llava_next(tmp_path_factory.mktemp("llava") / "tiny")


@pytest.fixture(scope="module")
def items() -> list[Item]:
    from tests.helpers.tiny import demo_images

    a, b = demo_images(2, size=56)
    return [Item("composed", image=_png(a), text="make it red"), Item("image", image=_png(b)),
            Item("text", text="a blue dress with long sleeves")]


def _last_token(model: Any, inp: dict[str, Any]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        hidden = model(**inp, output_hidden_states=True).hidden_states[-1]
    last = inp["attention_mask"].sum(1) - 1  # one input, no padding: the last position
    return torch.nn.functional.normalize(hidden[0, last[0]], dim=-1).numpy()


def _qwen_by_hand(qwen_dir: Path, prompts: list[str], images: list[Any], *, sequential: bool) -> np.ndarray:
    """Stock Qwen2VLProcessor + Qwen2VLForConditionalGeneration, one input at a time."""
    import torch
    from transformers import AutoImageProcessor, AutoProcessor, Qwen2VLForConditionalGeneration

    proc = AutoProcessor.from_pretrained(qwen_dir)
    proc.image_processor = AutoImageProcessor.from_pretrained(qwen_dir, backend="pil")  # adapters' default
    model = Qwen2VLForConditionalGeneration.from_pretrained(qwen_dir).eval()
    rows = []
    for text, img in zip(prompts, images):
        inp = dict(proc(text=[text], images=[img] if img is not None else None, return_tensors="pt"))
        if sequential:  # rzen/gme: position_ids=None on the old decoder; VLM2Vec: no vision start
            n = inp["input_ids"].shape[1]
            inp["position_ids"] = torch.arange(n).view(1, 1, n).expand(3, 1, n)
            inp.pop("mm_token_type_ids", None)
        rows.append(_last_token(model, inp))
    return np.stack(rows)


# ----------------------------------------------------------------------------- RzenEmbed
def test_rzen_instructs_both_sides_in_the_user_turn(qwen_dir: Path, items: list[Item]) -> None:
    enc = get_model(f"rzen:{qwen_dir}", **TINY)
    images = [it.load_image() if it.image is not None else None for it in items]
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    end = "<|im_end|>\n<|im_start|>assistant\n<|endoftext|>"
    for role, inst in (("query", QUERY_INST + " "), ("document", DOC_INST)):
        prompts = [system + (SLOT if it.image is not None else "") + inst + (it.text or "") + end
                   for it in items]
        vecs, _ = encode_items(enc, items, role=role, instruction=inst, workers=2, progress=False)  # type: ignore[arg-type]
        np.testing.assert_allclose(vecs, _qwen_by_hand(qwen_dir, prompts, images, sequential=True), atol=2e-5)
    plain = enc.encode(Batch(items[2:], [None]), role="query", instruction=None)  # no instruction: text alone
    prompt = system + str(items[2].text) + end
    np.testing.assert_allclose(plain, _qwen_by_hand(qwen_dir, [prompt], [None], sequential=True), atol=2e-5)
    fp = enc.fingerprint()
    assert fp["adapter"].startswith("rzen/") and "instruct_documents" not in fp and fp["max_length"] == 2000
    with pytest.raises(TypeError, match="instruct_documents"):
        get_model(f"rzen:{qwen_dir}", instruct_documents=True)


# ----------------------------------------------------------------------------- VLM2Vec-V2
def test_vlm2vec_prompts() -> None:
    from cirbench.models.vlm import vlm2vec_prompt

    pad = "<|image_pad|>"
    assert vlm2vec_prompt(QUERY_INST, "Show three bottles.", True, newline=True) == \
        f"{pad}\n{QUERY_INST} Show three bottles.\n"  # MMEB-V2 image_i2i_vg, query side
    assert vlm2vec_prompt(DOC_INST, None, True) == f"{pad}\n{DOC_INST}"  # target side, no caption
    assert vlm2vec_prompt(QUERY_INST, "x", True, style="mteb") == f"{pad} {QUERY_INST} x"
    assert vlm2vec_prompt(None, "a dress", False) == "a dress"


def test_vlm2vec_matches_stock_qwen2vl(qwen_dir: Path, items: list[Item]) -> None:
    enc: Any = get_model(f"vlm2vec:{qwen_dir}", **TINY)
    images = [it.load_image() if it.image is not None else None for it in items]
    pad = "<|image_pad|>"
    prompts = [f"{pad}\n{QUERY_INST} make it red\n", f"{pad}\n{QUERY_INST}",
               f"{QUERY_INST} {items[2].text}\n"]
    vecs, _ = encode_items(enc, items, role="query", instruction=QUERY_INST, workers=2, progress=False)
    # VLM2Vec's own Qwen2-VL gives 3-D positions only after <|vision_start|>, which its prompts lack
    np.testing.assert_allclose(vecs, _qwen_by_hand(qwen_dir, prompts, images, sequential=True), atol=2e-5)
    mrope: Any = get_model(f"vlm2vec:{qwen_dir}", position_ids="mrope", **TINY)
    v_mrope, _ = encode_items(mrope, items, role="query", instruction=QUERY_INST, workers=0, progress=False)
    np.testing.assert_allclose(v_mrope, _qwen_by_hand(qwen_dir, prompts, images, sequential=False), atol=2e-5)
    assert not np.allclose(v_mrope[:2], vecs[:2], atol=1e-5)  # the image items move; the text item does not
    # one at a time == mixed, left-padded batch (positions come from the mask)
    prepared = [enc.preprocess(im) if im is not None else None for im in images]
    together = enc.encode(Batch(items, prepared), role="document", instruction=DOC_INST)
    for i, it in enumerate(items):
        alone = enc.encode(Batch([it], [prepared[i]]), role="document", instruction=DOC_INST)
        np.testing.assert_allclose(alone[0], together[i], atol=2e-5)


def test_vlm2vec_peft_adapter_equals_merged_checkpoint(qwen_dir: Path, items: list[Item],
                                                       tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from transformers import AutoProcessor

    from tests.helpers.tiny import build_tiny_qwen2vl_lora

    # transformers-5 names: stock peft loads it too, which gives the reference merged checkpoint
    adapter = build_tiny_qwen2vl_lora(tmp_path / "adapter", qwen_dir, layout="transformers-5")
    enc = get_model(f"vlm2vec:{adapter}", **TINY)
    from peft import PeftModel
    from transformers import Qwen2VLForConditionalGeneration

    merged = PeftModel.from_pretrained(Qwen2VLForConditionalGeneration.from_pretrained(qwen_dir),
                                       str(adapter)).merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    AutoProcessor.from_pretrained(qwen_dir).save_pretrained(tmp_path / "merged")
    full = get_model(f"vlm2vec:{tmp_path / 'merged'}", **TINY)
    base = get_model(f"vlm2vec:{qwen_dir}", **TINY)
    batch = Batch(items, [it.load_image() if it.image is not None else None for it in items])
    v_adapter, v_full = enc.encode(batch, role="query"), full.encode(batch, role="query")
    np.testing.assert_allclose(v_adapter, v_full, atol=2e-5)
    assert not np.allclose(v_adapter, base.encode(batch, role="query"), atol=1e-3)
    fp = enc.fingerprint()
    assert fp["adapter"].startswith("vlm2vec/") and fp["peft"]["use_dora"] is True
    assert fp["base"]["id"] == str(qwen_dir)


def test_vlm2vec_adapter_without_peft_says_so(qwen_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(qwen_dir)}))
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match="pip install peft"):
        get_model(f"vlm2vec:{tmp_path}")


# ----------------------------------------------------------------------------- E5-V
def test_e5v_matches_llava_next_forward(llava_dir: Path, items: list[Item]) -> None:
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    enc = get_model(f"e5v:{llava_dir}")
    vecs, _ = encode_items(enc, items, role="query", instruction="ignored", workers=2, progress=False)
    tpl = ("<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>assistant"
           "<|end_header_id|>\n\n \n")
    prompts = [tpl.format('<image>Modify this image with "make it red", desribe modified image in one word:'),
               tpl.format("<image>\n Describe this image in one word:"),
               tpl.format(f"{items[2].text}\nSummary above sentence in one word: ")]
    proc = AutoProcessor.from_pretrained(llava_dir)
    model = LlavaNextForConditionalGeneration.from_pretrained(llava_dir).eval()
    for i, it in enumerate(items):
        kw = {"images": [it.load_image()]} if it.image is not None else {}
        expected = _last_token(model, dict(proc(text=[prompts[i]], return_tensors="pt", **kw)))
        np.testing.assert_allclose(vecs[i], expected, atol=2e-5)
    docs = enc.encode(Batch(items, [it.load_image() if it.image is not None else None for it in items]),
                      role="document", instruction=None)
    np.testing.assert_allclose(docs, vecs, atol=2e-5)  # no instructions; batching does not move a vector


def test_e5v_prompt_sets(llava_dir: Path, items: list[Item]) -> None:
    from cirbench.models.e5v import e5v_prompt

    assert "change the style of this shirt to make it red\n Desribe this modified shirt" in \
        e5v_prompt("make it red", True, "fashioniq-toptee")
    assert '[INST] <image> Modify this image with "{x}" Describe' in e5v_prompt("{x}", True, "mteb")
    base = get_model(f"e5v:{llava_dir}")
    batch = Batch(items[:1], [items[0].load_image()])
    fiq = get_model(f"e5v:{llava_dir}", prompts="fashioniq-dress")
    assert fiq.fingerprint() != base.fingerprint()
    assert not np.allclose(fiq.encode(batch, role="query"), base.encode(batch, role="query"), atol=1e-4)
    with pytest.raises(ValueError, match="prompts must be 'task' or one of"):
        get_model(f"e5v:{llava_dir}", prompts="cirr")


# ----------------------------------------------------------------------------- all three
@pytest.mark.parametrize("family", ["rzen", "vlm2vec", "e5v"])
def test_fingerprints_change_with_options(family: str, qwen_dir: Path, llava_dir: Path) -> None:
    src, base_opts = (llava_dir, {}) if family == "e5v" else (qwen_dir, TINY)
    base = get_model(f"{family}:{src}", **base_opts).fingerprint()
    json.dumps(base)
    assert get_model(f"{family}:{src}", **base_opts).fingerprint() == base
    variants: list[dict[str, Any]] = [{"dtype": "bfloat16"}, {"max_length": 4000},
                                      {"attn_implementation": "eager"}, {"image_backend": "torchvision"}]
    if family != "e5v":
        variants.append({"max_image_tokens": 8})
    if family == "vlm2vec":
        variants += [{"prompt_style": "mteb"}, {"document_newline": True}, {"position_ids": "mrope"}]
    if family == "e5v":
        variants.append({"prompts": "e5v"})
    prints = [get_model(f"{family}:{src}", **{**base_opts, **v}).fingerprint() for v in variants]
    assert all(p != base for p in prints)
    assert len({json.dumps(p, sort_keys=True) for p in prints}) == len(prints)


def test_aliases_and_refusals(qwen_dir: Path, llava_dir: Path) -> None:
    expect = {"rzenembed": ("qihoo360/RzenEmbed", 3584), "vlm2vec-v2": ("VLM2Vec/VLM2Vec-V2.0", 1536),
              "e5-v": ("royokong/e5-v", 4096)}
    for name, (hub, dim) in expect.items():
        spec = get_model_spec(name)
        assert spec is not None and spec.id == hub and spec.dim == dim
        assert spec.revision is not None and len(spec.revision) == 40
    assert get_model_spec("vlm2vec-v2").default_instructions["document"] == DOC_INST  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="qwen2_vl"):
        get_model(f"vlm2vec:{llava_dir}")
    with pytest.raises(ValueError, match="llava_next"):
        get_model(f"e5v:{qwen_dir}")
    with pytest.raises(TypeError, match="unknown option"):
        get_model(f"e5v:{llava_dir}", fusion="sum")
    with pytest.raises(ValueError, match="prompt_style"):
        get_model(f"vlm2vec:{qwen_dir}", prompt_style="chat")


def test_evaluate_end_to_end(llava_dir: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    import cirbench
    from cirbench.evaluation import EvalOptions

    result = cirbench.evaluate(f"e5v:{llava_dir}", str(tiny_dataset), output=tmp_path / "out",
                               options=EvalOptions(progress=False, n_bootstrap=20))
    assert (tmp_path / "out" / "run.parquet").is_file()
    assert result.model["fingerprint"]["prompts"] == "task"  # not FashionIQ: the CIRR set
    assert result.model["fingerprint"]["prompt_texts"][0] == "<image>\n Describe this image in one word:"
