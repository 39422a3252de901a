"""Pic2Word / SEARLE / LinCIR through `cirbench eval --method`: a tiny CLIP with the real CLIP BPE (so '$' is
259 and '*' is 265), tiny mapping nets saved in the released key layouts, the CIRR / CIRCO / FashionIQ
fixtures and synthetic-mini. Expected query vectors are computed here without the method's hook: the net by
hand in numpy, the pseudo-word by overwriting the placeholder's row of a copy of the token-embedding table
and running transformers' ordinary forward."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cirbench.cli import app
from cirbench.core.types import Item
from cirbench.models.registry import get_model
from cirbench.retrieval.methods.token_mapper import TokenMapper, pseudo_token_text_features
from cirbench.tasks.registry import get_task
from tests.helpers.tiny import (
    build_tiny_clip,
    build_tiny_clip_realtok,
    build_tiny_open_clip,
    build_tiny_phi,
    build_tiny_pic2word,
)
from tests.task_fixtures import WRITERS
from tests.test_method_cirevl import check_run, expected_scores

runner = CliRunner()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ti")
    return {
        "clip": build_tiny_clip_realtok(root / "clip"),
        "phi": build_tiny_phi(root / "phi.pt", in_dim=16, out_dim=32),
        "p2w": build_tiny_pic2word(root / "p2w.pt", in_dim=16, middle=8, out_dim=32),
        **{name: WRITERS[name](root / name) for name in ("cirr", "circo", "fashioniq", "synthetic-mini")},
    }


# ------------------------------------------------------------------------------------------ by hand


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def phi_by_hand(path: Path, x: np.ndarray) -> np.ndarray:
    sd = {k: v.double().numpy() for k, v in torch.load(path, weights_only=True)["Phi"].items()}
    h = gelu(x @ sd["layers.0.weight"].T + sd["layers.0.bias"])
    h = gelu(h @ sd["layers.3.weight"].T + sd["layers.3.bias"])
    return h @ sd["layers.6.weight"].T + sd["layers.6.bias"]


def pic2word_by_hand(path: Path, x: np.ndarray) -> np.ndarray:
    sd = {
        k: v.double().numpy() for k, v in torch.load(path, weights_only=True)["state_dict_img2text"].items()
    }
    h = np.maximum(0, x @ sd["module.layers.0.0.weight"].T + sd["module.layers.0.0.bias"])
    h = np.maximum(0, h @ sd["module.layers.1.0.weight"].T + sd["module.layers.1.0.bias"])
    return h @ sd["module.fc_out.weight"].T + sd["module.fc_out.bias"]


class HandCLIP:
    """transformers' CLIPModel used directly: raw image embeddings, and text features with the placeholder's
    row of the embedding table overwritten (the ordinary forward, one text at a time)."""

    def __init__(self, d: Path) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(d).eval()
        self.proc = CLIPProcessor.from_pretrained(d)

    def image_embeds(self, images: list[Any]) -> np.ndarray:
        import io

        from PIL import Image

        pil = [Image.open(io.BytesIO(p) if isinstance(p, bytes) else p).convert("RGB") for p in images]
        with torch.no_grad():
            out = self.model.get_image_features(**self.proc(images=pil, return_tensors="pt"))
        return np.asarray(getattr(out, "pooler_output", out).double().numpy())

    def text_with_token(self, text: str, token: np.ndarray, placeholder_id: int) -> np.ndarray:
        m = copy.deepcopy(self.model)
        with torch.no_grad():
            m.text_model.embeddings.token_embedding.weight[placeholder_id] = torch.as_tensor(token).float()
            ids = self.proc.tokenizer([text], return_tensors="pt")
            out = m.get_text_features(**ids)
        v = getattr(out, "pooler_output", out)[0].double().numpy()
        return np.asarray(v / np.linalg.norm(v))


def expected_queries(hand: HandCLIP, task: Any, net: Any, template: str, placeholder_id: int) -> np.ndarray:
    tokens = net(hand.image_embeds([q.item.image for q in task.queries]))
    rows = []
    for q, tok in zip(task.queries, tokens, strict=True):
        vs = [
            hand.text_with_token(template.format(text=it.text), tok, placeholder_id)
            for it in (q.item, *q.alt_items)
        ]
        m = np.mean(vs, axis=0)
        rows.append(m / np.linalg.norm(m))
    return np.stack(rows)


def write_config(path: Path, env: dict[str, Path], kind: str = "searle", **extra: Any) -> Path:
    weights = env["p2w"] if kind == "pic2word" else env["phi"]
    cfg: dict[str, Any] = {
        "method": "textual-inversion",
        "components": {
            "encoder": f"hf-clip:{env['clip']}",
            "mapper": {"kind": kind, "weights": str(weights)},
        },
        "prompts": {"template": "ti-pic2word" if kind == "pic2word" else "ti-searle"},
        **extra,
    }
    path.write_text(json.dumps(cfg))
    return path


def run_eval(cfg: Path | str, task: str, data_dir: Path, out: Path, cache: Path, *extra: str) -> Any:
    res = runner.invoke(
        app,
        [
            "eval",
            "--method",
            str(cfg),
            "--task",
            task,
            "--data-dir",
            str(data_dir),
            "-o",
            str(out),
            "--cache-dir",
            str(cache),
            "--bootstrap",
            "0",
            "-q",
            *extra,
        ],
    )
    assert res.exit_code == 0, res.output
    return json.loads((out / "result.json").read_text())


def query_scores(hand_q: np.ndarray, encoder: Any, task: Any) -> np.ndarray:
    """expected_scores of CIReVL's test, with query vectors given instead of texts."""
    from cirbench.retrieval.encode import encode_items

    gv, _ = encode_items(encoder, task.corpus, role="document", progress=False)
    base = expected_scores(encoder, task, ["x"] * len(task.queries))  # only for its -inf mask
    s = hand_q @ gv.T.astype(np.float64)
    return np.where(np.isfinite(base), s, -np.inf)


# ------------------------------------------------------------------------------------------ components


def test_injecting_the_placeholders_own_embedding_is_the_ordinary_forward(
    env: dict[str, Path], tmp_path: Path
) -> None:
    texts = ["a photo of $ that is red and shiny", "a photo of $ that has two dogs", "$ alone"]
    for name in (f"hf-clip:{env['clip']}", f"open_clip:local-dir:{build_tiny_open_clip(tmp_path / 'oc')}"):
        enc = get_model(name)
        emb = (
            (
                enc.model.text_model.embeddings.token_embedding
                if name.startswith("hf-clip")
                else enc.model.token_embedding
            )
            .weight.detach()
            .numpy()
        )
        own = np.repeat(emb[259][None], len(texts), 0)
        plain = enc.encode(_batch(texts), role="query")
        counts = {"rows_with_extra_placeholders": 0}
        got = pseudo_token_text_features(enc, texts, own, 259, counts)
        np.testing.assert_allclose(got, plain, atol=1e-6)
        shift = (
            np.random.default_rng(1).normal(size=own.shape).astype(np.float32)
        )  # not uniform: LayerNorm removes that
        other = pseudo_token_text_features(enc, texts, own + shift, 259, counts)
        assert np.abs(other - plain).max() > 1e-3  # the injected row is really used
        assert counts["rows_with_extra_placeholders"] == 0


def _batch(texts: list[str]) -> Any:
    from cirbench.models.base import Batch

    return Batch(items=[Item(f"t{i}", text=t) for i, t in enumerate(texts)], images=[None] * len(texts))


def test_mapper_nets_match_a_hand_computation(env: dict[str, Path]) -> None:
    x = np.random.default_rng(0).normal(size=(5, 16))
    np.testing.assert_allclose(
        TokenMapper("searle", env["phi"]).map(x), phi_by_hand(env["phi"], x), atol=1e-5
    )
    np.testing.assert_allclose(
        TokenMapper("lincir", env["phi"]).map(x), phi_by_hand(env["phi"], x), atol=1e-5
    )
    np.testing.assert_allclose(
        TokenMapper("pic2word", env["p2w"]).map(x), pic2word_by_hand(env["p2w"], x), atol=1e-5
    )
    n = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(
        TokenMapper("lincir", env["phi"], l2_normalize=True).map(x), phi_by_hand(env["phi"], n), atol=1e-5
    )
    fp = TokenMapper("pic2word", env["p2w"]).fingerprint()
    assert (
        fp["placeholder"] == "*" and fp["placeholder_id"] == 265 and (fp["in_dim"], fp["out_dim"]) == (16, 32)
    )


def test_placeholder_ids_are_the_real_bpes() -> None:
    import open_clip

    tok = open_clip.get_tokenizer("ViT-B-32")
    assert tok(["$"])[0][1].item() == 259 and tok(["*"])[0][1].item() == 265


# ------------------------------------------------------------------------------------------ end to end


def test_searle_on_cirr_end_to_end_against_the_hand_computation(env: dict[str, Path], tmp_path: Path) -> None:
    task = get_task("cirr", data_dir=env["cirr"])
    cfg = write_config(tmp_path / "my-searle.yaml", env)
    result = run_eval(cfg, "cirr", env["cirr"], tmp_path / "out", tmp_path / "cache")
    hand = HandCLIP(env["clip"])
    want = query_scores(
        expected_queries(hand, task, lambda f: phi_by_hand(env["phi"], f), "a photo of $ that {text}", 259),
        get_model(f"hf-clip:{env['clip']}"),
        task,
    )
    got = check_run(tmp_path / "out", task, want)
    assert all(q.reference_id not in row for q, row in zip(task.queries, got, strict=True))
    refs = {q.reference_id for q in task.queries}
    cost = result["retrieval"]["cost"]
    assert cost["pseudo_token"]["mapper_passes"] == len(refs) and cost["pseudo_token"][
        "image_encodes"
    ] == len(refs)
    assert cost["encode_text"]["text_encodes"] == len(task.queries)
    fp = result["retrieval"]["retriever"]["fingerprint"]
    assert fp["mapper"]["kind"] == "searle" and fp["mapper"]["placeholder_id"] == 259
    assert fp["prompts"]["template"]["default"]["id"] == "ti-searle"
    assert result["protocol"]["method"]["template"]["text"] == "a photo of $ that {text}"
    assert result["model"]["name"] == "my-searle"
    # a rerun maps nothing again: the pseudo-tokens are artifacts
    again = run_eval(cfg, "cirr", env["cirr"], tmp_path / "out", tmp_path / "cache", "--overwrite")
    assert "pseudo_token" not in again["retrieval"]["cost"]
    assert again["encoding"]["artifacts"]["pseudo_token"]["reused"] == len(refs)
    check_run(tmp_path / "out", task, want)


def test_pic2word_on_circo_uses_its_template_and_layout(env: dict[str, Path], tmp_path: Path) -> None:
    task = get_task("circo", data_dir=env["circo"])
    cfg = write_config(tmp_path / "p.yaml", env, kind="pic2word")
    result = run_eval(cfg, "circo", env["circo"], tmp_path / "out", tmp_path / "cache")
    hand = HandCLIP(env["clip"])
    want = query_scores(
        expected_queries(hand, task, lambda f: pic2word_by_hand(env["p2w"], f), "a photo of * , {text}", 265),
        get_model(f"hf-clip:{env['clip']}"),
        task,
    )
    check_run(tmp_path / "out", task, want)
    assert all(q.item.text == q.meta["relative_caption"] for q in task.queries)
    assert "mAP@10" in result["scores"]["overall"]["overall"]


def test_lincir_on_fashioniq_averages_both_caption_orders(env: dict[str, Path], tmp_path: Path) -> None:
    task = get_task("fashioniq", data_dir=env["fashioniq"])
    assert all(len(q.alt_items) == 1 for q in task.queries)  # the default protocol: both orders
    cfg = write_config(tmp_path / "l.yaml", env, kind="lincir")
    result = run_eval(cfg, "fashioniq", env["fashioniq"], tmp_path / "out", tmp_path / "cache")
    hand = HandCLIP(env["clip"])
    want = query_scores(
        expected_queries(hand, task, lambda f: phi_by_hand(env["phi"], f), "a photo of $ that {text}", 259),
        get_model(f"hf-clip:{env['clip']}"),
        task,
    )
    got = check_run(tmp_path / "out", task, want)
    for q, row in zip(task.queries, got, strict=True):
        assert set(row) <= set(task.galleries[q.gallery])
    assert result["retrieval"]["cost"]["encode_text"]["text_encodes"] == 2 * len(task.queries)
    assert result["encoding"]["query"]["fusion"]["op"] == "mean_over"


def test_searle_on_synthetic_mini(env: dict[str, Path], tmp_path: Path) -> None:
    task = get_task("synthetic-mini", data_dir=env["synthetic-mini"])
    cfg = write_config(tmp_path / "s.yaml", env)
    result = run_eval(cfg, "synthetic-mini", env["synthetic-mini"], tmp_path / "out", tmp_path / "cache")
    hand = HandCLIP(env["clip"])
    want = query_scores(
        expected_queries(hand, task, lambda f: phi_by_hand(env["phi"], f), "a photo of $ that {text}", 259),
        get_model(f"hf-clip:{env['clip']}"),
        task,
    )
    check_run(tmp_path / "out", task, want)
    assert result["retrieval"]["cost"]["per_query"]["mapper_passes"] <= 1.0


# ------------------------------------------------------------------------------------------ refusals


def _refused(cfg: Path, env: dict[str, Path], tmp_path: Path) -> str:
    res = runner.invoke(
        app,
        [
            "eval",
            "--method",
            str(cfg),
            "--task",
            "cirr",
            "--data-dir",
            str(env["cirr"]),
            "-o",
            str(tmp_path / "out"),
            "--no-cache",
            "-q",
        ],
    )
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()
    return " ".join(res.output.split())


def test_a_checkpoint_in_another_layout_is_refused_naming_file_and_keys(
    env: dict[str, Path], tmp_path: Path
) -> None:
    # a Phi file given as pic2word: no 'state_dict_img2text'
    out = _refused(
        write_config(tmp_path / "a.yaml", {**env, "p2w": env["phi"]}, kind="pic2word"), env, tmp_path
    )
    assert "phi.pt" in out and "state_dict_img2text" in out
    # a Phi with a missing and an unexpected key
    sd = torch.load(env["phi"], weights_only=True)
    bad = dict(sd["Phi"])
    bad["layers.9.weight"] = bad.pop("layers.6.weight")
    torch.save({"Phi": bad}, tmp_path / "bad_phi.pt")
    out = _refused(write_config(tmp_path / "b.yaml", {**env, "phi": tmp_path / "bad_phi.pt"}), env, tmp_path)
    assert "bad_phi.pt" in out and "missing 1 keys [layers.6.weight]" in out
    assert "unexpected 1 keys [layers.9.weight]" in out
    # a pickle holding an object other than tensors is not unpickled
    import collections

    torch.save({"Phi": collections.Counter(a=1)}, tmp_path / "obj.pt")
    out = _refused(write_config(tmp_path / "c.yaml", {**env, "phi": tmp_path / "obj.pt"}), env, tmp_path)
    assert "obj.pt" in out
    # a net for another CLIP width
    build_tiny_phi(tmp_path / "wide.pt", in_dim=16, out_dim=48)
    out = _refused(write_config(tmp_path / "d.yaml", {**env, "phi": tmp_path / "wide.pt"}), env, tmp_path)
    assert "wide.pt" in out and "48-d" in out


def test_an_encoder_with_another_vocabulary_is_refused(env: dict[str, Path], tmp_path: Path) -> None:
    byte_clip = build_tiny_clip(tmp_path / "byteclip")  # byte-level toy vocabulary: '$' is not 259
    cfg = write_config(tmp_path / "v.yaml", {**env, "clip": byte_clip})
    out = _refused(cfg, env, tmp_path)
    assert "placeholder '$'" in out and "259" in out


def test_shipped_configs_are_listed_and_ask_for_their_weights(env: dict[str, Path], tmp_path: Path) -> None:
    res = runner.invoke(app, ["methods", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)["methods"]}
    assert {"pic2word", "searle", "searle-xl", "lincir"} <= set(rows)
    assert (
        rows["searle"]["method"] == "textual-inversion"
        and rows["searle"]["components"]["encoder"] == "clip-b32"
    )
    assert "mapper pass" in rows["lincir"]["cost"]["per_query"]
    # a shipped config run without its weights names the option to set (before any model is loaded)
    res = runner.invoke(
        app,
        [
            "eval",
            "--method",
            "pic2word",
            "--task",
            "cirr",
            "--data-dir",
            str(env["cirr"]),
            "--method-option",
            f"components.encoder=hf-clip:{env['clip']}",
            "-q",
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 2 and "components.mapper.weights" in res.output
    # with the weights given, the shipped config runs (its template and kind are used)
    res = runner.invoke(
        app,
        [
            "eval",
            "--method",
            "pic2word",
            "--task",
            "cirr",
            "--data-dir",
            str(env["cirr"]),
            "--method-option",
            f"components.encoder=hf-clip:{env['clip']}",
            "--method-option",
            f"components.mapper.weights={env['p2w']}",
            "--no-cache",
            "--bootstrap",
            "0",
            "-q",
            "-o",
            str(tmp_path / "o2"),
        ],
    )
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "o2" / "result.json").read_text())
    assert result["protocol"]["method"]["template"]["id"] == "ti-pic2word"
