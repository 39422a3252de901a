"""ReCALL (`recall:`) on a tiny random Qwen2-VL and a LoRA adapter saved in ReCALL's (VLM2Vec's) format.

Expected vectors are computed independently of the adapter: ReCALL's prompt written out literally, the stock
Qwen2VLProcessor, stock peft (`PeftModel.from_pretrained`) and `Qwen2VLForConditionalGeneration`'s last
hidden state at the last token, one input at a time, normalised.
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
from typer.testing import CliRunner  # noqa: E402

from cirbench.cli import app  # noqa: E402
from cirbench.core.types import Item  # noqa: E402
from cirbench.models import get_model  # noqa: E402
from cirbench.models.base import Batch  # noqa: E402

pytest.importorskip("peft")

TINY = {"min_image_tokens": 4, "max_image_tokens": 4}  # 56x56 px -> 4 merged image tokens
SYSTEM = ("You are a multimodal retrieval encoder (not a conversational assistant). Your sole function is to "
          "map any input—image(s), text, or image(s) plus text—into a compact embedding for nearest-neighbor "
          "retrieval in a shared space.")


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.helpers.tiny import build_tiny_gme, build_tiny_qwen2vl_lora

    root = tmp_path_factory.mktemp("recall")
    base = build_tiny_gme(root / "base")
    # ReCALL's trainer: plain LoRA (r=16 in the paper; 4 here), saved by transformers 4's Qwen2-VL classes
    lora = build_tiny_qwen2vl_lora(root / "lora", base, use_dora=False, layout="transformers-4")
    return base, lora


@pytest.fixture(scope="module")
def items() -> list[Item]:
    from tests.helpers.tiny import demo_images

    a, b = demo_images(2, size=56)
    return [Item("composed", image=_png(a), text="make it red"), Item("image", image=_png(b))]


def _prompt(body: str) -> str:
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<|image_pad|>{body}<|im_end|>\n"
            "<|im_start|>assistant\n<|endoftext|>")


def _by_hand(model: Any, base: Path, items: list[Item]) -> np.ndarray:
    import torch
    from transformers import AutoImageProcessor, AutoProcessor

    proc = AutoProcessor.from_pretrained(base)
    proc.image_processor = AutoImageProcessor.from_pretrained(base, backend="pil")
    bodies = {"composed": "Modify this image with <make it red>\nRepresent the modified image in one word:",
              "image": "Represent the given image in one word:"}
    rows = []
    for it in items:
        inp = dict(proc(text=[_prompt(bodies[it.id])], images=[it.load_image()], return_tensors="pt"))
        n = inp["input_ids"].shape[1]
        inp["position_ids"] = torch.arange(n).view(1, 1, n).expand(3, 1, n)  # no <|vision_start|>: sequential
        inp.pop("mm_token_type_ids", None)
        with torch.inference_mode():
            hidden = model(**inp, output_hidden_states=True).hidden_states[-1]
        rows.append(torch.nn.functional.normalize(hidden[0, -1], dim=-1).numpy())
    return np.stack(rows)


def test_prompt_pair_and_last_token_pooling(dirs: tuple[Path, Path], items: list[Item]) -> None:
    from peft import PeftModel
    from transformers import Qwen2VLForConditionalGeneration

    base, lora = dirs
    enc: Any = get_model(f"recall:{lora}", **TINY)
    batch = Batch(items, [it.load_image() for it in items])
    vecs = np.concatenate([enc.encode(batch, role="query")[:1], enc.encode(batch, role="document")[1:]])
    # stock peft needs this transformers' tensor names: the same adapter (same seed) saved with them
    from tests.helpers.tiny import build_tiny_qwen2vl_lora

    v5 = build_tiny_qwen2vl_lora(base.parent / "lora-v5", base, use_dora=False, layout="transformers-5")
    merged = PeftModel.from_pretrained(Qwen2VLForConditionalGeneration.from_pretrained(base).eval(),
                                       str(v5)).merge_and_unload().eval()
    np.testing.assert_allclose(vecs, _by_hand(merged, base, items), atol=2e-5)
    # the LoRA changes the vectors: the base model alone gives others
    plain: Any = get_model(f"recall:{base}", **TINY)
    v_base = np.concatenate([plain.encode(batch, role="query")[:1], plain.encode(batch, role="document")[1:]])
    np.testing.assert_allclose(v_base, _by_hand(Qwen2VLForConditionalGeneration.from_pretrained(base).eval(),
                                                base, items), atol=2e-5)
    assert not np.allclose(vecs, v_base, atol=1e-3)
    # the role does not pick the prompt, the item does (an image is always the gallery prompt)
    np.testing.assert_allclose(enc.encode(batch, role="document"), enc.encode(batch, role="query"), atol=1e-6)


def test_qwen25vl_backbone(dirs: tuple[Path, Path], items: list[Item], tmp_path: Path) -> None:
    """ReCALL's main backbone: a Qwen2.5-VL checkpoint loads through the same path, as Qwen2_5_VLModel."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from tests.helpers.tiny import build_tiny_qwen25vl

    q25 = build_tiny_qwen25vl(tmp_path / "q25", dirs[0])
    enc: Any = get_model(f"recall:{q25}", **TINY)
    assert type(enc.model).__name__ == "Qwen2_5_VLModel" and enc.fingerprint()["model_type"] == "qwen2_5_vl"
    batch = Batch(items, [it.load_image() for it in items])
    vecs = enc.encode(batch, role="query")
    stock = Qwen2_5_VLForConditionalGeneration.from_pretrained(q25).eval()
    np.testing.assert_allclose(vecs, _by_hand(stock, dirs[0], items), atol=2e-5)


def test_fingerprint_options_and_refusals(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    base, lora = dirs
    enc: Any = get_model(f"recall:{lora}", **TINY)
    fp = enc.fingerprint()
    json.dumps(fp)
    assert fp["adapter"] == "recall/1" and fp["pooling"] == "last-token" and fp["padding"] == "left"
    assert fp["prompts"]["query"].startswith("Modify this image with <{text}>")
    assert fp["peft"]["type"] == "LORA" and fp["peft"]["use_dora"] is False
    assert enc.spec.modalities == ("image", "image+text")
    variants = [{"dtype": "bfloat16"}, {"max_image_tokens": 8}, {"position_ids": "mrope"}]
    prints = [get_model(f"recall:{lora}", **{**TINY, **v}).fingerprint() for v in variants]
    assert all(p != fp for p in prints) and get_model(f"recall:{base}", **TINY).fingerprint() != fp
    # ReCALL's budget: VLM2Vec's minimum (4 tokens of 28 px), the checkpoint's own maximum
    default: Any = get_model(f"recall:{base}")
    assert (default.min_pixels, default.max_pixels) == (4 * 28 * 28, 56 * 56)
    with pytest.raises(TypeError, match="prompt_style"):
        get_model(f"recall:{base}", prompt_style="vlm2vec")
    with pytest.raises(ValueError, match="text-only"):
        enc.encode(Batch([Item("t", text="a red dress")], [None]), role="query")
    # an adapter whose tensors do not fit the base model is refused, naming the tensors
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in lora.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    state = load_file(str(lora / "adapter_model.safetensors"))
    first = sorted(state)[0]
    state[first.replace("layers.0.", "layers.7.")] = state.pop(first)
    save_file(state, str(bad / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match=r"does not fit .*layers\.7\."):
        get_model(f"recall:{bad}", **TINY)


def test_cirbench_eval_end_to_end(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    from tests.test_tasks_cirr import write_cirr

    _, lora = dirs
    data = write_cirr(tmp_path / "cirr")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["eval", "--model", f"recall:{lora}", "--task", "cirr", "--split", "val",
                                   "--data-dir", str(data), "--output", str(out), "--quiet", "--bootstrap",
                                   "10", "--device", "cpu", "--no-cache", "--option", "min_image_tokens=4",
                                   "--option", "max_image_tokens=4"])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "result.json").read_text())
    assert result["model"]["name"] == f"recall:{lora}"
    assert result["model"]["fingerprint"]["base"]["id"] == str(dirs[0])
    assert result["model"]["fingerprint"]["peft"]["tensors_loaded"] > 0
    assert "R@1" in result["scores"]["overall"]["overall"]
