"""HUG (`hug:`) on a tiny random checkpoint saved in HUG's train.py layout (LAVIS names, three heads).

Expected values are HUG's own computation written out here: the means from transformers' stock
`Blip2ForImageTextRetrieval` (its ITM forward for the fused query tokens, its ITC forward's text output for
the [CLS], the Q-Former on the query tokens for images), the standard deviations from the test's own copy
of HUG's estimators, the dynamic weighting and `uncertainty_aware_distance` in numpy, for every pair.
cirbench's scores must be exactly −d and its ranking d's.
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
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from cirbench.cli import app  # noqa: E402
from cirbench.core.types import Item  # noqa: E402
from cirbench.models import get_model  # noqa: E402
from cirbench.retrieval.encode import encode_items  # noqa: E402

runner = CliRunner(env={"COLUMNS": "300"})
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def hug(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    from tests.helpers.lavis import hug_heads, tiny_blip2_zero_k_bias, write_hug_checkpoint

    root = tmp_path_factory.mktemp("hug")
    blip2 = tiny_blip2_zero_k_bias(root / "blip2")
    heads = hug_heads(32)
    ckpt = write_hug_checkpoint(root / "run" / "best_model.pth", blip2, heads)
    return blip2, ckpt, heads


def _clean(text: str) -> str:
    import re

    text = re.sub(r"\s{2,}", " ", re.sub(r"([.!\"()*#:;~])", " ", text.lower())).strip(" ")
    return " ".join(text.split(" ")[:50])


def _by_hand(blip2_dir: Path, heads: Any, queries: list[Item], gallery: list[Item]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d, mu_q, mu_c): HUG's distance for every (query, gallery) pair, computed as HUG's eval does."""
    import torch
    from transformers import AutoTokenizer, Blip2ForImageTextRetrieval

    model = Blip2ForImageTextRetrieval.from_pretrained(blip2_dir).eval()
    size = model.config.vision_config.image_size
    tok = AutoTokenizer.from_pretrained(blip2_dir)
    nq = model.config.num_query_tokens

    def image_tokens(pv: torch.Tensor) -> torch.Tensor:  # extract_features(mode="image").image_embeds
        emb = model.vision_model(pixel_values=pv).last_hidden_state
        return model.qformer(query_embeds=model.query_tokens.expand(len(pv), -1, -1),
                             encoder_hidden_states=emb).last_hidden_state

    def pixels(it: Item) -> torch.Tensor:  # HUG's eval transform: PIL bicubic resize, CLIP mean/std
        from PIL import Image

        img = it.load_image().convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return ((x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)).unsqueeze(0).float()

    def sd(x: torch.Tensor) -> np.ndarray:
        return x.double().numpy()

    mus_q, vars_q, mus_c, vars_c = [], [], [], []
    with torch.inference_mode():
        for it in queries:
            pv = pixels(it)
            t = tok([_clean(str(it.text))], truncation=True, max_length=77, return_tensors="pt")
            # transformers' forward drops the <image> placeholders its processor puts before the text
            ids = torch.cat([torch.full((1, nq), model.config.image_token_index), t["input_ids"]], 1)
            mask = torch.cat([torch.ones(1, nq, dtype=torch.long), t["attention_mask"]], 1)
            itm = model(pixel_values=pv, input_ids=ids, attention_mask=mask,
                        use_image_text_matching_head=True)
            mu = itm.text_model_output.last_hidden_state[:, :nq]
            itc = model(pixel_values=pv, input_ids=ids, attention_mask=mask)
            cls = itc.text_model_output.last_hidden_state[:, :1].expand(-1, nq, -1)
            s_m = sd(heads.multimodal_uncertainty_estimator(mu))
            s_r = sd(heads.visual_uncertainty_estimator(image_tokens(pv)))
            s_t = sd(heads.text_uncertainty_estimator(cls))
            w = [np.exp(-(s**2)) for s in (s_r, s_t, s_m)]
            den = w[0] + w[1] + w[2] + 1e-6
            var = (w[0] * s_r**2 + w[1] * s_t**2 + w[2] * s_m**2) / den + 1e-6  # sigma_q**2
            mus_q.append(sd(mu)[0])
            vars_q.append(var[0])
        for it in gallery:
            mu = image_tokens(pixels(it))
            mus_c.append(sd(mu)[0])
            vars_c.append(sd(heads.visual_uncertainty_estimator(mu))[0] ** 2)
    d = np.zeros((len(queries), len(gallery)))
    for i in range(len(queries)):
        for j in range(len(gallery)):
            d[i, j] = (((mus_q[i] - mus_c[j]) ** 2).sum() + vars_q[i].sum() + vars_c[j].sum())
    return d, np.stack(mus_q), np.stack(mus_c)


def test_scores_are_minus_the_hug_distance_for_every_pair(hug: tuple[Path, Path, Any]) -> None:
    from tests.helpers.tiny import demo_images

    blip2, ckpt, heads = hug
    enc = get_model(f"hug:{ckpt.parent}", backbone=str(blip2))
    imgs = [_png(i) for i in demo_images(7, size=(40, 30), seed=3)]
    texts = ["Make it red!", "a blue dress with stripes", "the dress, and make it blue"]
    queries = [Item(f"q{i}", image=imgs[i], text=t) for i, t in enumerate(texts)]
    gallery = [Item(f"g{j}", image=imgs[3 + j]) for j in range(4)] + [Item("g-ref", image=imgs[0])]
    qv, _ = encode_items(enc, queries, role="query", progress=False, workers=0)
    cv, _ = encode_items(enc, gallery, role="document", progress=False, workers=0)
    d, mu_q, _ = _by_hand(blip2, heads, queries, gallery)
    assert qv.shape[1] == cv.shape[1] == 4 * 32 + 2
    # the vectors are not unit: the gallery's last entry is the constant 1, the query's middle one -1
    assert np.allclose(cv[:, -1], 1.0) and np.allclose(qv[:, -2], -1.0)
    np.testing.assert_allclose(qv[:, : 4 * 32] / 2, mu_q.reshape(3, -1), rtol=1e-4, atol=1e-4)
    scores = qv.astype(np.float64) @ cv.astype(np.float64).T
    np.testing.assert_allclose(scores, -d, rtol=1e-5, atol=1e-3)
    assert (np.argsort(-scores, axis=1, kind="stable") == np.argsort(d, axis=1, kind="stable")).all()


def _circo_with_distinct_images(root: Path) -> Path:
    from tests.helpers.tiny import demo_images
    from tests.test_tasks_circo import write_circo

    data = write_circo(root)
    files = sorted((data / "COCO2017_unlabeled" / "unlabeled2017").iterdir())
    for f, img in zip(files, demo_images(len(files), size=(36, 28), seed=11), strict=True):
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=95)
        f.write_bytes(buf.getvalue())
    return data


def test_eval_end_to_end_ranks_by_hug_distance(hug: tuple[Path, Path, Any], tmp_path: Path) -> None:
    """`cirbench eval --model hug:DIR --task circo`: every ranked id and score is HUG's, by hand."""
    from cirbench.core.types import query_exclusions
    from cirbench.tasks import get_task

    blip2, ckpt, heads = hug
    data = _circo_with_distinct_images(tmp_path / "CIRCO")
    out = tmp_path / "out"
    res = runner.invoke(app, ["eval", "--model", f"hug:{ckpt}", "--option", f"backbone={blip2}",
                              "--task", "circo", "--split", "val", "--data-dir", str(data),
                              "--output", str(out), "--quiet", "--bootstrap", "10", "--device", "cpu",
                              "--no-cache"])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "result.json").read_text())
    fp = result["model"]["fingerprint"]
    assert fp["unit_vectors"] is False and fp["adapter"] == "hug/1"
    assert "not L2-normalised" in json.dumps(result["protocol"])
    task = get_task("circo", "val", data_dir=data)
    excl = query_exclusions(task)
    d, _, _ = _by_hand(blip2, heads, [q.item for q in task.queries], list(task.corpus))
    ids = [it.id for it in task.corpus]
    run = {r["query_id"]: r for r in pq.read_table(out / "run.parquet").to_pylist()}
    for i, q in enumerate(task.queries):
        order = [j for j in np.argsort(d[i], kind="stable") if j not in set(excl[i])][:50]
        row = run[q.id]
        got = [ids.index(c) for c in row["ranked_ids"]]
        assert not set(got) & set(excl[i]) and len(got) == 50
        # ranked by d: the by-hand distances along cirbench's ranking are the 50 smallest, in order (float32
        # near-ties may swap neighbours), and each score is minus that pair's distance
        np.testing.assert_allclose(d[i, got], d[i, order], rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(row["scores"], -d[i, got], rtol=1e-6, atol=1e-4)
        assert sum(a != b for a, b in zip(got, order, strict=True)) <= 4


def test_a_checkpoint_in_another_layout_is_refused(hug: tuple[Path, Path, Any], tmp_path: Path) -> None:
    import torch

    from tests.test_tasks_circo import write_circo

    blip2, ckpt, _ = hug
    good = torch.load(ckpt, weights_only=True)
    data = write_circo(tmp_path / "CIRCO")

    def refused(name: str, obj: Any, *needles: str) -> None:
        path = tmp_path / name
        torch.save(obj, path)
        out = tmp_path / f"out-{name}"
        res = runner.invoke(app, ["eval", "--model", f"hug:{path}", "--option", f"backbone={blip2}",
                                  "--task", "circo", "--data-dir", str(data), "--output",
                                  str(out), "--quiet", "--device", "cpu", "--no-cache"])
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and "Traceback" not in res.output, res.output
        for n in (str(path), *needles):
            assert n in " ".join(res.output.split()), res.output
        assert not out.exists()

    state = dict(good["model_state_dict"])
    no_head = {k: v for k, v in state.items() if "text_uncertainty_estimator.uncertainty_head.3" not in k}
    refused("no-head.pth", {**good, "model_state_dict": no_head}, "missing 2 keys",
            "text_uncertainty_estimator.uncertainty_head.3.bias")
    renamed = {k.replace("ln_vision", "vision_norm"): v for k, v in state.items()}
    refused("renamed.pth", {**good, "model_state_dict": renamed}, "blip_backbone.blip_model.ln_vision.bias",
            "blip_backbone.blip_model.vision_norm.bias")
    refused("flat.pth", state, "'model_state_dict'")  # a bare state dict where HUG saves a wrapper
    wide = {**state, "visual_uncertainty_estimator.uncertainty_head.0.bias": torch.zeros(7)}
    refused("wide.pth", {**good, "model_state_dict": wide}, "do not fit",
            "visual_uncertainty_estimator.uncertainty_head.0.bias")
    refused("pickle.pth", {**good, "args": _Evil()}, "weights_only=True")


class _Evil:
    def __reduce__(self) -> Any:
        return (os.system, ("echo owned > /dev/null",))


def test_fingerprint_covers_every_vector_changing_option(hug: tuple[Path, Path, Any]) -> None:
    blip2, ckpt, _ = hug
    base = get_model(f"hug:{ckpt}", backbone=str(blip2)).fingerprint()
    for opts in ({"max_length": 12}, {"max_words": 5}, {"pre_caption": False}, {"uncertainty_heads": 2},
                 {"dtype": "bfloat16"}):
        fp = get_model(f"hug:{ckpt}", backbone=str(blip2), **opts).fingerprint()
        assert fp != base, opts
    with pytest.raises(ValueError, match="max_lenght"):
        get_model(f"hug:{ckpt}", backbone=str(blip2), max_lenght=12)
