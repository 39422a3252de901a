"""BLIP-2 adapter (`blip2:`) on a tiny random Blip2ForImageTextRetrieval saved and loaded through the adapter.

Expected vectors come from transformers' own `Blip2ForImageTextRetrieval.forward` (its ITC outputs for
images and texts, its ITM pass's Q-Former states for the fused query), so the adapter's reimplementation of
CoVR-2's fusion is checked against an independent computation.
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


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.tiny import build_tiny_blip2

    return build_tiny_blip2(tmp_path_factory.mktemp("blip2") / "tiny")


@pytest.fixture(scope="module")
def enc(blip2_dir: Path) -> Any:
    return get_model(f"blip2:{blip2_dir}")


@pytest.fixture(scope="module")
def items() -> list[Item]:
    from tests.helpers.tiny import demo_images

    a, b, c = demo_images(3, size=(40, 30))
    return [Item("composed", image=_png(a), text="Make it red!"), Item("image", image=_png(b)),
            Item("text", text="a blue dress"), Item("composed2", image=_png(c), text="a dress with stripes")]


def _by_hand(blip2_dir: Path, items: list[Item]) -> np.ndarray:
    """Each item through `Blip2ForImageTextRetrieval.forward`, one at a time, as transformers computes it."""
    import torch
    from transformers import AutoProcessor, Blip2ForImageTextRetrieval

    from cirbench.models.blip2 import pre_caption

    model = Blip2ForImageTextRetrieval.from_pretrained(blip2_dir).eval()
    proc = AutoProcessor.from_pretrained(blip2_dir)
    blank = items[1].load_image()  # ITC needs an image even for a text; the text feature ignores it
    rows = []
    for it in items:
        text = pre_caption(it.text) if it.text is not None else "x"
        inp = proc(images=[it.load_image() if it.image is not None else blank], text=[text],
                   return_tensors="pt")
        with torch.inference_mode():
            if it.image is not None and it.text is not None:  # CoVR-2: ITM pass, text_proj, token mean
                out = model(**inp, use_image_text_matching_head=True)
                h = out.text_model_output.last_hidden_state[:, : model.config.num_query_tokens]
                v = torch.nn.functional.normalize(model.text_projection(h), dim=-1).mean(1)
            elif it.image is not None:  # ITC image features (per query token), averaged
                v = model(**inp).image_embeds.mean(1)
            else:  # ITC text feature
                v = model(**inp).text_embeds
        rows.append(torch.nn.functional.normalize(v, dim=-1)[0].numpy())
    return np.stack(rows)


def test_vectors_match_transformers_forward(enc: Any, blip2_dir: Path, items: list[Item]) -> None:
    vecs, _ = encode_items(enc, items, role="query", workers=2, batch_size=3, progress=False)
    assert vecs.shape == (4, 16)
    np.testing.assert_allclose(vecs, _by_hand(blip2_dir, items), atol=2e-5)
    docs, _ = encode_items(enc, items, role="document", workers=0, progress=False)
    np.testing.assert_allclose(docs, vecs, atol=1e-6)  # no instructions, no role asymmetry


def test_mixed_batch_equals_one_at_a_time(enc: Any, items: list[Item]) -> None:
    prepared = [enc.preprocess(it.load_image()) if it.image is not None else None for it in items]
    together = enc.encode(Batch(items, prepared), role="query")
    for i, it in enumerate(items):
        alone = enc.encode(Batch([it], [prepared[i]]), role="query")
        np.testing.assert_allclose(alone[0], together[i], atol=2e-5)
    raw = enc.encode(Batch(items[:1], [items[0].load_image()]), role="query")  # PIL without preprocess
    np.testing.assert_allclose(raw[0], together[0], atol=1e-6)


def test_fusion_uses_both_inputs(enc: Any, items: list[Item]) -> None:
    img = items[0].load_image()
    base = enc.encode(Batch(items[:1], [img]), role="query")[0]
    other_text = Item("x", image=items[0].image, text="a blue dress")
    other_image = Item("y", image=items[1].image, text=items[0].text)
    assert not np.allclose(base, enc.encode(Batch([other_text], [img]), role="query")[0], atol=1e-4)
    assert not np.allclose(base, enc.encode(Batch([other_image], [items[1].load_image()]), role="query")[0],
                           atol=1e-4)


def test_pre_caption_follows_covr() -> None:
    from cirbench.models.blip2 import pre_caption

    assert pre_caption("Make it RED!  (and shiny).") == "make it red and shiny"
    assert pre_caption(" ".join(["w"] * 40), max_words=30) == " ".join(["w"] * 30)
    assert pre_caption("keep, commas? yes") == "keep, commas? yes"


def test_fingerprint_changes_with_everything_that_changes_a_vector(enc: Any, blip2_dir: Path,
                                                                   items: list[Item]) -> None:
    base = enc.fingerprint()
    json.dumps(base)
    assert get_model(f"blip2:{blip2_dir}").fingerprint() == base
    variants: list[dict[str, Any]] = [{"dtype": "bfloat16"}, {"max_length": 8}, {"pre_caption": False},
                                      {"max_words": 2}]
    prints = [get_model(f"blip2:{blip2_dir}", **v).fingerprint() for v in variants]
    assert all(p != base for p in prints)
    assert len({json.dumps(p, sort_keys=True) for p in prints}) == len(prints)
    raw = get_model(f"blip2:{blip2_dir}", pre_caption=False)
    b = Batch(items[:1], [items[0].load_image()])
    assert not np.allclose(raw.encode(b, role="query"), enc.encode(b, role="query"), atol=1e-4)
    bf16 = get_model(f"blip2:{blip2_dir}", dtype="bf16")
    cos = float(np.sum(bf16.encode(b, role="query") * enc.encode(b, role="query")))
    assert cos > 0.98


def test_aliases_and_refusals(tmp_path: Path) -> None:
    for name, hub in (("blip2", "Salesforce/blip2-itm-vit-g"),
                      ("blip2-coco", "Salesforce/blip2-itm-vit-g-coco")):
        spec = get_model_spec(name)
        assert spec is not None and spec.id == hub and spec.dim == 256
        assert spec.revision == "main" and "unpinned" in spec.description
        assert spec.modalities == ("image", "text", "image+text")
    not_blip = tmp_path / "clip"
    not_blip.mkdir()
    (not_blip / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError, match="blip-2"):
        get_model(f"blip2:{not_blip}")
    captioner = tmp_path / "opt"
    captioner.mkdir()
    (captioner / "config.json").write_text(json.dumps({"model_type": "blip-2", "qformer_config": {}}))
    with pytest.raises(ValueError, match="retrieval"):
        get_model(f"blip2:{captioner}")
    with pytest.raises(TypeError, match="unknown option"):
        get_model(f"blip2:{not_blip}", fusion="sum")


def test_evaluate_end_to_end(blip2_dir: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    import cirbench
    from cirbench.evaluation import EvalOptions

    result = cirbench.evaluate(f"blip2:{blip2_dir}", str(tiny_dataset), output=tmp_path / "out",
                               options=EvalOptions(progress=False, n_bootstrap=20))
    assert (tmp_path / "out" / "run.parquet").is_file()
    assert result.model["fingerprint"]["pooling"] == "mean-of-normalised-query-tokens"


def test_text_length_follows_covr_test_scripts(blip2_dir: Path) -> None:
    """CoVR's src/test/blip2/*.py tokenise at max_length=64 (not the model's training max_txt_len of 32): a
    composed query whose text runs past 32 tokens sees all of its first 64."""
    from tests.helpers.tiny import demo_images

    enc64: Any = get_model(f"blip2:{blip2_dir}")
    assert enc64.fingerprint()["max_length"] == 64 and "CIRR max" in enc64.fingerprint()["scorer"]
    img = demo_images(1, size=32)[0]
    text = "is purple and sleeveless with shiny golden buttons"  # the tiny vocab spells most words out
    n = len(enc64.tokenizer(text)["input_ids"])
    assert 32 < n <= 64
    batch = Batch([Item("q", image=_png(img), text=text)], [img])
    v64 = enc64.encode(batch, role="query")
    np.testing.assert_allclose(v64, get_model(f"blip2:{blip2_dir}", max_length=n).encode(batch, role="query"),
                               atol=1e-6)
    assert not np.allclose(v64, get_model(f"blip2:{blip2_dir}", max_length=32).encode(batch, role="query"),
                           atol=1e-4)


def _token_sets_by_hand(blip2_dir: Path, items: list[Item]) -> np.ndarray:
    """Per item, its normalised query-token outputs as CoVR's CIRR script keeps them (`vl_feat` for a
    composed query: ITM pass + text_proj; `image_embeds` for a gallery image), via transformers' forward."""
    import torch
    from transformers import AutoProcessor, Blip2ForImageTextRetrieval

    from cirbench.models.blip2 import pre_caption

    model = Blip2ForImageTextRetrieval.from_pretrained(blip2_dir).eval()
    proc = AutoProcessor.from_pretrained(blip2_dir)
    sets = []
    for it in items:
        inp = proc(images=[it.load_image()], text=[pre_caption(it.text) if it.text else "x"],
                   return_tensors="pt")
        with torch.inference_mode():
            if it.text is not None:
                out = model(**inp, use_image_text_matching_head=True)
                h = out.text_model_output.last_hidden_state[:, : model.config.num_query_tokens]
                sets.append(torch.nn.functional.normalize(model.text_projection(h), dim=-1)[0].numpy())
            else:
                sets.append(model(**inp).image_embeds[0].numpy())
    return np.stack(sets)


def test_covr_cirr_scorer_max_over_token_pairs(blip2_dir: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """`--retriever late-interaction` ranks as CoVR's cirr.py: einsum('iqe,jke->ijqk'), max, max, the
    reference set to -100, argsort descending."""
    import json

    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from cirbench.cli import app
    from cirbench.tasks.registry import get_task

    out = tmp_path / "li"
    res = CliRunner().invoke(app, ["eval", "--retriever", "late-interaction", "--retriever-option",
                                   f"model=blip2:{blip2_dir}", "-t", str(tiny_dataset), "-o", str(out), "-q",
                                   "--bootstrap", "5", "--no-cache"])
    assert res.exit_code == 0, res.output
    task = get_task(str(tiny_dataset))
    q = _token_sets_by_hand(blip2_dir, [x.item for x in task.queries])
    g = _token_sets_by_hand(blip2_dir, list(task.corpus))
    sims = np.einsum("iqe,jke->ijqk", q, g).max(-1).max(-1)
    ids = [it.id for it in task.corpus]
    for i, query in enumerate(task.queries):
        sims[i, ids.index(query.reference_id)] = -100  # type: ignore[arg-type]
    table = pq.read_table(out / "run.parquet").to_pylist()
    for i, row in enumerate(table):
        want = [ids[j] for j in np.argsort(-sims[i], kind="stable") if sims[i, j] > -100]
        assert row["ranked_ids"] == want[: len(row["ranked_ids"])]
        best = np.sort(sims[i][sims[i] > -100])[::-1]
        np.testing.assert_allclose(row["scores"], best[: len(row["scores"])], atol=2e-5)
    result = json.loads((out / "result.json").read_text())
    assert result["retrieval"]["retriever"]["name"] == "late-interaction"
    assert "max over" in result["protocol"]["search"]["scorer"]
    assert result["model"]["name"] == f"blip2:{blip2_dir}"
