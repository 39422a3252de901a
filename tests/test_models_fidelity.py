"""Each VLM adapter follows its model's own inference code: conventions pinned from first principles.

The expected numbers are worked out here by hand from the official code's rules (qwen_vl_utils' smart_resize
and the processor's budget for GME, VLM2Vec's eval.py budget, LLaVA-NeXT's anyres arithmetic, PEFT's DoRA
merge formula), and the instruction strings are written out literally. Tiny random models stand in for the
checkpoints; the Qwen2-VL ones carry a preprocessor_config.json in the layout the hub checkpoints have.
"""

from __future__ import annotations

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cirbench.core.types import Item, Task  # noqa: E402
from cirbench.models import get_model  # noqa: E402
from cirbench.models.base import Batch  # noqa: E402
from cirbench.models.registry import get_model_spec  # noqa: E402
from cirbench.retrieval.encode import encode_items  # noqa: E402

TINY = {"min_image_tokens": 4, "max_image_tokens": 4}


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _image(w: int, h: int) -> Any:
    from tests.helpers.tiny import demo_images

    return demo_images(1, size=(w, h))[0]


def _tokens(enc: Any, img: Any) -> int:
    return int(enc.preprocess(img)["image_grid_thw"].prod()) // 4  # 2x2 patches merge into one token


@pytest.fixture(scope="module")
def hub_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2-VL whose processor config says what Qwen2-VL-2B-Instruct's says: 4 .. 16384 tokens."""
    from tests.helpers.tiny import build_tiny_gme

    return build_tiny_gme(tmp_path_factory.mktemp("hubqwen") / "tiny", min_pixels=4 * 28 * 28,
                          max_pixels=16384 * 28 * 28)


# ----------------------------------------------------------------------------- GME
def test_gme_image_tokens_follow_gme_inference(hub_qwen: Path) -> None:
    """gme_inference.py: fetch_image's smart_resize (28-multiples, >= 4·28² px), then the processor within
    256·28² .. 1280·28² px, one token per 28x28 px. Worked by hand:
      224x224: 50176 px < 200704 -> x2 per side -> 448x448 -> 16x16 = 256 tokens
      300x200: fetch -> 308x196; x1.823 -> ceil 21 x 13 (28-px cells) -> 273
      40x30:   fetch -> 28x28 < 3136 px -> 84x56; x6.53 -> 20 x 14 -> 280
      90x150:  fetch -> 84x140; x4.13 -> 13 x 21 -> 273
    The checkpoint's own 4 .. 16384-token config must not win (transformers 5 lets it override `size=`)."""
    enc: Any = get_model(f"gme:{hub_qwen}")
    for (w, h), n in {(224, 224): 256, (300, 200): 273, (40, 30): 280, (90, 150): 273}.items():
        assert _tokens(enc, _image(w, h)) == n, (w, h)
    fp = enc.fingerprint()
    assert (fp["min_pixels"], fp["max_pixels"]) == (256 * 28 * 28, 1280 * 28 * 28)
    size = enc.image_processor.size  # what the processor itself will resize to
    assert (size["shortest_edge"], size["longest_edge"]) == (fp["min_pixels"], fp["max_pixels"])
    capped: Any = get_model(f"gme:{hub_qwen}", min_image_tokens=4, max_image_tokens=64)
    assert _tokens(capped, _image(224, 224)) == 64  # 50176 px = 64 * 784, exactly the cap
    assert _tokens(capped, _image(1000, 1000)) == 64  # fetch -> 1008²; /4.5 per side -> 224² -> 8x8
    assert capped.fingerprint()["max_pixels"] == 64 * 28 * 28


def test_image_backend_is_pil_by_default_and_recorded(hub_qwen: Path) -> None:
    pytest.importorskip("torchvision")
    enc: Any = get_model(f"gme:{hub_qwen}", **TINY)
    tv: Any = get_model(f"gme:{hub_qwen}", image_backend="torchvision", **TINY)
    assert enc.fingerprint()["image_backend"] == "pil" == enc.fingerprint()["image_processor"]["backend"]
    assert tv.fingerprint()["image_processor"]["backend"] == "torchvision"
    assert enc.fingerprint() != tv.fingerprint()
    img = _image(300, 200)  # resized by both backends: PIL's and torchvision's bicubic differ slightly
    batch = Batch([Item("i", image=_png(img), text="make it red")], [img])
    diff = np.abs(enc.encode(batch, role="query") - tv.encode(batch, role="query")).max()
    assert 0 < diff < 1e-2
    with pytest.raises(ValueError, match="image_backend"):
        get_model(f"gme:{hub_qwen}", image_backend="opencv")


def test_fingerprint_records_the_transformers_version(hub_qwen: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    enc: Any = get_model(f"gme:{hub_qwen}", **TINY)
    fp = enc.fingerprint()
    assert fp["runtime"]["transformers"] == transformers.__version__
    monkeypatch.setattr(transformers, "__version__", "4.51.3")
    assert enc.fingerprint() != fp


# ----------------------------------------------------------------------------- VLM2Vec
def test_vlm2vec_uses_eval_py_pixel_budget(hub_qwen: Path) -> None:
    """eval.py runs resize_min_pixels=4·28², resize_max_pixels=1280·28², whatever the checkpoint says:
      224x224:   50176 px, inside -> 8x8 = 64 tokens (GME's 256-token floor does not apply)
      2000x2000: 1988² > 1003520 -> /1.996 per side -> 35x35 cells = 1225 tokens
                 (the checkpoint's own 16384-token cap would keep 71x71 = 5041)
      20x10:     a side under 28 px: Qwen2_VL_process_fn resizes to 56x56 first -> 2x2 = 4 tokens"""
    enc: Any = get_model(f"vlm2vec:{hub_qwen}")
    assert _tokens(enc, _image(224, 224)) == 64
    assert _tokens(enc, _image(2000, 2000)) == 1225
    assert _tokens(enc, _image(20, 10)) == 4
    assert (enc.fingerprint()["min_pixels"], enc.fingerprint()["max_pixels"]) == (3136, 1003520)
    own: Any = get_model(f"vlm2vec:{hub_qwen}", pixel_budget="checkpoint")
    assert _tokens(own, _image(2000, 2000)) == 5041
    assert own.fingerprint()["max_pixels"] == 16384 * 28 * 28 and own.fingerprint() != enc.fingerprint()


def test_vlm2vec_positions_are_sequential_from_the_mask(hub_qwen: Path) -> None:
    """VLM2Vec's get_rope_index finds no <|vision_start|> in its prompts: position = cumsum(mask) - 1 for
    every token, images included; left padding then moves nothing. Checked against the stock model run with
    those positions written out by hand, one input at a time and in a padded batch."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    enc: Any = get_model(f"vlm2vec:{hub_qwen}", **TINY)
    model = Qwen2VLForConditionalGeneration.from_pretrained(hub_qwen).eval()
    img = _image(56, 56)
    items = [Item("q", image=_png(img), text="make it red and much larger"), Item("g", image=_png(img))]
    got = enc.encode(Batch(items, [img, img]), role="query", instruction="Find it:")  # lengths differ: padded
    for row, it in zip(got, items):
        pre = enc.preprocess(img)
        text = enc.prompt_for(it, "query", "Find it:").replace("<|image_pad|>", "<|image_pad|>" * 4)
        ids = enc.tokenizer([text], return_tensors="pt")["input_ids"]
        n = ids.shape[1]
        positions = torch.arange(n).view(1, 1, n).expand(3, 1, n)  # 0, 1, ..., n-1 on all three axes
        with torch.inference_mode():
            out = model.model(input_ids=ids, pixel_values=pre["pixel_values"],
                              image_grid_thw=pre["image_grid_thw"], position_ids=positions)
        h = out.last_hidden_state[0, -1]
        np.testing.assert_allclose(row, torch.nn.functional.normalize(h, dim=-1).numpy(), atol=2e-5)
    assert enc.fingerprint()["position_ids"] == "sequential"
    assert get_model(f"vlm2vec:{hub_qwen}", position_ids="mrope", **TINY).fingerprint() != enc.fingerprint()


@pytest.fixture(scope="module")
def dora(hub_qwen: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DoRA adapter with VLM2Vec's target modules, its tensors named as VLM2Vec's transformers-4 class
    saved them (`base_model.model.model.layers...`), like VLM2Vec/VLM2Vec-V2.0's adapter_model.safetensors."""
    pytest.importorskip("peft")
    from tests.helpers.tiny import build_tiny_qwen2vl_lora

    return build_tiny_qwen2vl_lora(tmp_path_factory.mktemp("dora") / "adapter", hub_qwen)


def test_vlm2vec_dora_adapter_every_tensor_applied(dora: Path, hub_qwen: Path) -> None:
    """Each adapted weight equals PEFT's DoRA merge worked out from the file's own tensors:
    W' = m / ||W + s·B·A||_row * (W + s·B·A), s = lora_alpha / r."""
    import torch
    from safetensors.torch import load_file
    from transformers import Qwen2VLForConditionalGeneration

    state = load_file(str(dora / "adapter_model.safetensors"))
    assert any(k.startswith("base_model.model.model.layers.") for k in state)  # transformers-4 names
    acfg = json.loads((dora / "adapter_config.json").read_text())
    assert acfg["use_dora"] is True
    scale = acfg["lora_alpha"] / acfg["r"]
    enc: Any = get_model(f"vlm2vec:{dora}", **TINY)
    merged = enc.model.state_dict()  # Qwen2VLModel: language_model.layers.<i>...
    base = Qwen2VLForConditionalGeneration.from_pretrained(hub_qwen).state_dict()
    prefix, suffix = "base_model.model.", ".lora_A.weight"
    modules = sorted(k[len(prefix):-len(suffix)] for k in state if k.endswith(suffix))
    assert len(modules) == 2 * 7  # 2 layers x q, k, v, o, gate, up, down
    for name in modules:  # "model.layers.0.self_attn.q_proj" in transformers 4's naming
        here = name.replace("model.layers.", "language_model.layers.", 1)
        w = base[f"model.{here}.weight"]
        a, b = state[f"{prefix}{name}.lora_A.weight"], state[f"{prefix}{name}.lora_B.weight"]
        m = state[f"{prefix}{name}.lora_magnitude_vector"]
        v = w + scale * (b @ a)
        expected = (m / torch.linalg.norm(v, dim=1)).unsqueeze(1) * v
        torch.testing.assert_close(merged[f"{here}.weight"], expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(merged[f"{here}.weight"], w, atol=1e-4)
    assert enc.fingerprint()["peft"]["tensors_loaded"] == len(state) == 3 * len(modules)
    plain: Any = get_model(f"vlm2vec:{hub_qwen}", **TINY)
    img = _image(56, 56)
    batch = Batch([Item("i", image=_png(img), text="make it red")], [img])
    assert not np.allclose(enc.encode(batch, role="query"), plain.encode(batch, role="query"), atol=1e-3)
    assert enc.fingerprint() != plain.fingerprint()


def test_vlm2vec_adapter_that_does_not_fit_is_refused(dora: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    state = load_file(str(dora / "adapter_model.safetensors"))
    key = next(k for k in state if k.endswith("q_proj.lora_A.weight"))
    for case, edit, message in (
        ("unmatched", lambda s: {**s, key.replace("layers.0.", "layers.99."): s[key].clone()},
         "match no adapter parameter"),
        ("missing", lambda s: {k: v for k, v in s.items() if k != key}, "does not set"),
    ):
        bad = tmp_path / case
        shutil.copytree(dora, bad)
        save_file(edit(dict(state)), str(bad / "adapter_model.safetensors"))
        with pytest.raises(ValueError, match=message):
            get_model(f"vlm2vec:{bad}", **TINY)


# ----------------------------------------------------------------------------- instructions per task
MMEB_CIRR = "Given an image, find a similar everyday image with the described changes:"
GME_FIQ = "Find a fashion image that aligns with the reference image and style note."


@pytest.mark.parametrize("model, task, role, expected", [
    ("vlm2vec-v2", "cirr", "query", MMEB_CIRR),
    ("vlm2vec-v2", "fashioniq", "query", "Find an image to match the fashion image and style note:"),
    ("vlm2vec-v2", "cirr", "document", "Represent the given image."),
    ("rzenembed", "cirr", "query", MMEB_CIRR + " "),
    ("rzenembed", "fashioniq", "document", "Represent the given image."),
    ("gme", "cirr", "query",
     "Retrieve a day-to-day image that aligns with the modification instructions of the provided image."),
    ("gme", "fashioniq", "query", GME_FIQ),
    ("gme", "fashioniq", "document", "You are a helpful assistant."),
    ("gme-7b", "fashioniq", "query", GME_FIQ),
])
def test_instruction_per_task(model: str, task: str, role: str, expected: str) -> None:
    """MMEB's instructions for VLM2Vec-V2 and RzenEmbed (evaluated on MMEB), the GME authors' own for GME:
    a model's instruction for a task wins over the task's generic one (CIRR's is M-BEIR's wording)."""
    from cirbench.evaluation import resolve_instruction
    from cirbench.tasks.registry import get_task_spec

    spec = get_model_spec(model)
    assert spec is not None
    t = Task(metadata=get_task_spec(task).metadata, split="val", queries=[], corpus=[])
    assert resolve_instruction(SimpleNamespace(spec=spec), t, role) == expected  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- E5-V
@pytest.fixture(scope="module")
def llava_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same tiny LLaVA-NeXT twice: processor saved by transformers 5, and as E5-V's release (4.41) did."""
    from tests.helpers.tiny import build_tiny_llava_next

    root = tmp_path_factory.mktemp("llava")
    return (build_tiny_llava_next(root / "v5"),
            build_tiny_llava_next(root / "v441", processor_layout="transformers-4.41"))


def test_e5v_loads_a_processor_saved_without_patch_size(llava_dirs: tuple[Path, Path]) -> None:
    """A 56x56 image on 28 px tiles of 14 px patches: base tile 2x2 = 4 patch features (CLS dropped by the
    "default" strategy); anyres picks 56x56 = 2x2 tiles -> a 4x4 patch grid = 16 features + 4 row newlines;
    4 + 16 + 4 = 24 image tokens, as transformers 4.41's model expanded them itself."""
    v5, v441 = llava_dirs
    assert not (v441 / "processor_config.json").exists()
    old: Any = get_model(f"e5v:{v441}")
    new: Any = get_model(f"e5v:{v5}")
    img = _image(56, 56)
    assert old.preprocess(img)["n_tokens"] == 24 == new.preprocess(img)["n_tokens"]
    assert old.fingerprint()["image_tokens"]["source"].startswith("model config")
    batch = Batch([Item("q", image=_png(img), text="make it red"), Item("g", image=_png(img))], [img, img])
    np.testing.assert_allclose(old.encode(batch, role="query"), new.encode(batch, role="query"), atol=1e-6)


def _e5v_by_hand(llava: Path, bodies: list[str], img: Any) -> np.ndarray:
    """retrieval.py: the stock processor and model on each prompt, raw last states summed, normalised."""
    import torch
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    proc = AutoProcessor.from_pretrained(llava, backend="pil")
    model = LlavaNextForConditionalGeneration.from_pretrained(llava).eval()
    total = 0
    for body in bodies:
        text = ("<|start_header_id|>user<|end_header_id|>\n\n" + body
                + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n \n")
        inp = dict(proc(text=[text], images=[img], return_tensors="pt"))
        inp.pop("token_type_ids", None)
        with torch.inference_mode():
            total = total + model(**inp, output_hidden_states=True).hidden_states[-1][0, -1]
    return torch.nn.functional.normalize(total, dim=-1).numpy()  # type: ignore[union-attr]


def test_e5v_fashioniq_prompts_and_caption_orders_follow_the_task(llava_dirs: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    """retrieval.py on FashionIQ: the category's prompts (toptee named "shirt"), the two captions stripped of
    '.?, ' and joined by ', ' in both orders, the raw states of both orders summed."""
    import cirbench
    from cirbench.evaluation import EvalOptions
    from cirbench.models.base import bind_task
    from cirbench.tasks.registry import get_task
    from tests.test_tasks_fashioniq import write_fiq

    v5, _ = llava_dirs
    root = write_fiq(tmp_path / "fiq")
    task = get_task("fashioniq", "val", data_dir=root)
    enc = get_model(f"e5v:{v5}")
    bound, btask = bind_task(enc, task)
    q = next(q for q in btask.queries
             if q.category == "toptee" and q.meta["captions"] == [" green", "has more buttons."])
    prompt = ("<image> change the style of this shirt to {}\n Desribe this modified shirt in one word "
              "based on its style:")
    assert (q.item.text, q.item.caption) == (prompt.format("green, has more buttons"),
                                             prompt.format("has more buttons, green"))
    assert q.alt_items == ()
    img = q.item.load_image()
    got, _ = encode_items(bound, [q.item], role="query", workers=0, progress=False)
    np.testing.assert_allclose(got[0], _e5v_by_hand(v5, [q.item.text, q.item.caption], img), atol=2e-5)
    gid = btask.galleries["dress"][0] if btask.galleries else ""
    g = next(it for it in btask.corpus if it.id == gid)
    assert g.text == "<image>\n Describe this dress in one word based on its style:"
    gv, _ = encode_items(bound, [g], role="document", workers=0, progress=False)
    np.testing.assert_allclose(gv[0], _e5v_by_hand(v5, [str(g.text)], g.load_image()), atol=2e-5)
    assert bound.fingerprint() != enc.fingerprint()
    assert bound.fingerprint()["prompts"] == "task:fashioniq/e5v"
    result = cirbench.evaluate(f"e5v:{v5}", "fashioniq", data_dir=root, output=tmp_path / "out",
                               options=EvalOptions(progress=False, n_bootstrap=10))
    assert result.protocol["caption_join"] == "e5v-both-orders-sum"
    assert "per-category" in result.protocol["notes"]["model_prompts"]
    assert result.model["fingerprint"]["prompts"] == "task:fashioniq/e5v"
    assert result.protocol["query_vector"] == "single item"
    fixed = cirbench.evaluate(f"e5v:{v5}", "fashioniq", data_dir=root, output=tmp_path / "fixed",
                              model_options={"prompts": "fashioniq-dress"},
                              options=EvalOptions(progress=False, n_bootstrap=10))
    assert fixed.protocol["caption_join"] == "both-orders"  # a fixed set: the task's own join
