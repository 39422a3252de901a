"""CVSI through `cirbench eval --method`: captions of the references and of every gallery image, an LLM
rewrite and an LLM added-objects call on a loopback chat-completions server, a Phi pseudo-token through a
tiny CLIP with the real BPE, and the α/β/γ fusion. The expected scores are computed here from the replies
the server gave, the tiny models used directly, and the fusion written out by hand."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cirbench.cli import app
from cirbench.core.types import Item
from cirbench.models.registry import get_model
from cirbench.retrieval.encode import encode_items
from cirbench.retrieval.methods.artifacts import item_seed
from cirbench.retrieval.methods.prompts import BUILTIN
from cirbench.tasks.registry import get_task
from tests.helpers.edit_pipelines import FakeChatServer, request_images, request_text
from tests.helpers.tiny import build_tiny_blip2_opt, build_tiny_clip_realtok, build_tiny_phi
from tests.task_fixtures import WRITERS
from tests.test_method_cirevl import check_run, expected_scores
from tests.test_method_textual_inversion import HandCLIP, phi_by_hand

runner = CliRunner()
N = 3
WORDS = ("red", "tall", "small", "striped", "wooden", "shiny", "old")
NOUNS = ("dog", "house", "shirt", "car", "tree", "lamp", "boat")
ADDED = "a red kite"


def caption_of(data: bytes, seed: int) -> str:
    h = int(hashlib.sha256(data).hexdigest(), 16)
    return f"a {WORDS[h % 7]} {NOUNS[(h // 7) % 7]} number {seed % 11}"


def responder(body: dict[str, Any]) -> str:
    if request_images(body):  # a caption request: the image's own bytes decide it
        url = next(p["image_url"]["url"] for m in body["messages"] if isinstance(m["content"], list)
                   for p in m["content"] if p.get("type") == "image_url")
        return caption_of(base64.b64decode(url.split(",", 1)[1]), int(body["seed"]))
    text = request_text(body)
    if text.startswith(BUILTIN["cvsi-added-objects"].text):
        return ADDED
    ins = re.findall(r"^Instruction: (.*)$", text, flags=re.M)[-1]
    return f"{ins} in the rain"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cvsi")
    return {
        "clip": build_tiny_clip_realtok(root / "clip"),
        "phi": build_tiny_phi(root / "phi.pt", in_dim=16, out_dim=32),
        **{name: WRITERS[name](root / name) for name in ("cirr", "circo", "fashioniq", "synthetic-mini")},
    }


def write_config(path: Path, env: dict[str, Path], captioner: dict[str, Any], url: str, **extra: Any) -> Path:
    cfg: dict[str, Any] = {
        "method": "cvsi",
        "components": {
            "encoder": f"hf-clip:{env['clip']}",
            "captioner": captioner,
            "rewriter": {"backend": "openai", "model": "fake-llm", "base_url": url, "api_key_env": None},
            "mapper": {"kind": "lincir", "weights": str(env["phi"])},
        },
        "decoding": {"caption": {"n": N, "max_tokens": 8, "num_beams": 1, "top_p": 0.9}},
        **extra,
    }
    path.write_text(json.dumps(cfg))
    return path


def lmm_captioner(url: str) -> dict[str, Any]:
    return {"kind": "lmm", "lmm": {"backend": "openai", "model": "fake-vlm", "base_url": url,
                                   "api_key_env": None}}


def run_eval(cfg: Path, task: str, data_dir: Path, out: Path, cache: Path, *extra: str) -> Any:
    res = runner.invoke(app, ["eval", "--method", str(cfg), "--task", task, "--data-dir", str(data_dir), "-o",
                              str(out), "--cache-dir", str(cache), "--bootstrap", "0", "-q", *extra])
    assert res.exit_code == 0, res.output
    return json.loads((out / "result.json").read_text())


def image_data(item: Item) -> bytes:
    return item.image if isinstance(item.image, bytes) else Path(str(item.image)).read_bytes()


def unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.linalg.norm(x, axis=-1, keepdims=True))


def expected(env: dict[str, Path], task: Any, a: float, b: float, g: float, renorm: bool) -> np.ndarray:
    """score = <a*q_s + b*q_f + (1-a-b)*q_v, (1-g)*t_v + g*t_c>, each term built from the models directly."""
    enc = get_model(f"hf-clip:{env['clip']}")
    hand = HandCLIP(env["clip"])

    def texts(ts: list[str]) -> np.ndarray:
        return encode_items(enc, [Item(f"t{i}", text=t) for i, t in enumerate(ts)], role="query",
                            progress=False)[0].astype(np.float64)

    q_s = texts([f"{q.item.text} in the rain" for q in task.queries])
    tokens = phi_by_hand(env["phi"], hand.image_embeds([q.item.image for q in task.queries]))
    q_f = []
    for q, tok in zip(task.queries, tokens, strict=True):
        tmpl = "a photo of $ that {}. And the photo should have " + ADDED + "."
        vs = [hand.text_with_token(tmpl.format(it.text), tok, 259) for it in (q.item, *q.alt_items)]
        q_f.append(unit(np.mean(vs, axis=0)))
    refs = [Item(q.reference_id, image=q.item.image) for q in task.queries]
    q_v = encode_items(enc, refs, role="document", progress=False)[0].astype(np.float64)
    t_v = encode_items(enc, task.corpus, role="document", progress=False)[0].astype(np.float64)
    t_c = []
    for it in task.corpus:
        seed = item_seed(0, "gallery_captions", it.id)
        caps = [caption_of(image_data(it), seed + j) for j in range(N)]  # the n-th request has seed + n
        m = texts(caps).mean(axis=0)
        t_c.append(unit(m) if renorm else m)
    q = a * unit(q_s) + b * np.stack(q_f) + (1 - a - b) * unit(q_v)
    gal = (1 - g) * unit(t_v) + g * np.stack(t_c)
    mask = expected_scores(enc, task, ["x"] * len(task.queries))
    return np.where(np.isfinite(mask), q @ gal.T, -np.inf)


def test_cvsi_on_cirr_end_to_end_cost_and_rerun(env: dict[str, Path], tmp_path: Path) -> None:
    task = get_task("cirr", data_dir=env["cirr"])
    nq, ng, refs = len(task.queries), len(task.corpus), {q.reference_id for q in task.queries}
    with FakeChatServer(responder) as server:
        cfg = write_config(tmp_path / "my-cvsi.yaml", env, lmm_captioner(server.url), server.url)
        result = run_eval(cfg, "cirr", env["cirr"], tmp_path / "out", tmp_path / "cache")
        bodies = list(server.requests)
        caps = [b for b in bodies if request_images(b)]
        assert len(caps) == N * (len(refs) + ng)  # n captions per reference and per gallery image
        rewrites = [b for b in bodies if request_text(b).startswith(BUILTIN["cirevl-contextual"].text)]
        added = [b for b in bodies if request_text(b).startswith(BUILTIN["cvsi-added-objects"].text)]
        assert len(rewrites) == nq and len(added) == nq and len(bodies) == len(caps) + 2 * nq
        # one call per query with all n captions of its reference
        for b in rewrites:
            content = re.findall(r"^Image Content: (.*)$", request_text(b), flags=re.M)[-1]
            assert len(content.split(", ")) == N
        assert {(b["temperature"], b["max_tokens"]) for b in rewrites} == {(0.0, 700)}

        want = expected(env, task, 0.6, 0.4, 0.2, renorm=False)
        got = check_run(tmp_path / "out", task, want)
        assert all(q.reference_id not in row for q, row in zip(task.queries, got, strict=True))

        cost = result["retrieval"]["cost"]
        assert cost["ref_captions"]["lmm_calls"] == N * len(refs)
        assert cost["gallery_captions"]["lmm_calls"] == N * ng
        assert cost["edited_caption"]["lmm_calls"] == nq and cost["added_objects"]["lmm_calls"] == nq
        assert cost["pseudo_token"]["mapper_passes"] == len(refs)
        assert cost["encode_gallery_captions"]["text_encodes"] <= N * ng
        assert cost["per_gallery_item"]["lmm_calls"] == pytest.approx(N)
        assert cost["per_query"]["lmm_calls"] == pytest.approx(N * len(refs) / nq + 2)
        method = result["protocol"]["method"]
        assert method["weights"] == pytest.approx({"alpha": 0.6, "beta": 0.4, "image": 0.0, "gamma": 0.2})
        assert method["caption_mean"]["normalize_result"] is False
        assert method["added_prompt"]["sha256"] == BUILTIN["cvsi-added-objects"].sha256
        assert method["seeds"]["base_seed"] == 0
        fp = result["retrieval"]["retriever"]["fingerprint"]
        assert fp["mapper"]["kind"] == "lincir" and fp["rewriter"]["host"] == "127.0.0.1"
        assert fp["prompts"]["rewrite"]["cirr"]["sha256"] == BUILTIN["cirevl-contextual"].sha256
        assert result["encoding"]["fusion"]["query"]["op"] == "vec_sum"

        # a rerun asks no model anything: every call is an artifact
        server.requests.clear()
        again = run_eval(cfg, "cirr", env["cirr"], tmp_path / "out", tmp_path / "cache", "--overwrite")
        assert server.requests == []
        arts = again["encoding"]["artifacts"]
        assert arts["gallery_captions"]["reused"] == ng and arts["added_objects"]["reused"] == nq
        check_run(tmp_path / "out", task, want)


def test_cvsi_fashioniq_weights_and_renormalised_caption_mean(env: dict[str, Path], tmp_path: Path) -> None:
    task = get_task("fashioniq", data_dir=env["fashioniq"])
    with FakeChatServer(responder) as server:
        cfg = write_config(tmp_path / "f.yaml", env, lmm_captioner(server.url), server.url)
        result = run_eval(cfg, "fashioniq", env["fashioniq"], tmp_path / "out", tmp_path / "cache")
        assert all(request_text(b).startswith(BUILTIN["cirevl-structural-fashion"].text)
                   for b in server.requests if "Instruction:" in request_text(b)
                   and not request_text(b).startswith(BUILTIN["cvsi-added-objects"].text))
    got = check_run(tmp_path / "out", task, expected(env, task, 0.2, 0.6, 0.1, renorm=True))
    for q, row in zip(task.queries, got, strict=True):
        assert set(row) <= set(task.galleries[q.gallery])
    assert result["protocol"]["method"]["weights"] == pytest.approx(
        {"alpha": 0.2, "beta": 0.6, "image": 0.2, "gamma": 0.1})


def test_cvsi_on_circo_with_the_cirr_weights_and_map(env: dict[str, Path], tmp_path: Path) -> None:
    task = get_task("circo", data_dir=env["circo"])
    with FakeChatServer(responder) as server:
        cfg = write_config(tmp_path / "c.yaml", env, lmm_captioner(server.url), server.url)
        result = run_eval(cfg, "circo", env["circo"], tmp_path / "out", tmp_path / "cache")
    check_run(tmp_path / "out", task, expected(env, task, 0.6, 0.4, 0.2, renorm=False))
    assert result["protocol"]["method"]["weights"] == pytest.approx(
        {"alpha": 0.6, "beta": 0.4, "image": 0.0, "gamma": 0.2})
    assert "mAP@10" in result["scores"]["overall"]["overall"]


def test_cvsi_on_synthetic_mini_with_the_blip2_captioner(env: dict[str, Path], tmp_path: Path) -> None:
    task = get_task("synthetic-mini", data_dir=env["synthetic-mini"])
    blip2 = build_tiny_blip2_opt(tmp_path / "blip2")
    with FakeChatServer(responder) as server:
        cfg = write_config(tmp_path / "s.yaml", env, {"kind": "blip2", "model": str(blip2)}, server.url,
                           options={"alpha": 0.5, "beta": 0.3, "gamma": 0.25})
        result = run_eval(cfg, "synthetic-mini", env["synthetic-mini"], tmp_path / "out", tmp_path / "cache")
        assert len(server.requests) == 2 * len(task.queries)  # captions come from BLIP-2, not the server
    refs = {q.reference_id for q in task.queries}
    cost = result["retrieval"]["cost"]
    assert cost["ref_captions"]["captioner_calls"] == N * len(refs)
    assert cost["gallery_captions"]["captioner_calls"] == N * len(task.corpus)
    assert cost["per_gallery_item"]["captioner_calls"] == pytest.approx(N)
    assert result["protocol"]["method"]["weights"] == pytest.approx(
        {"alpha": 0.5, "beta": 0.3, "image": 0.2, "gamma": 0.25})
    assert result["retrieval"]["retriever"]["fingerprint"]["captioner"]["component"] == "blip2-captioner"
    assert "R@1" in json.dumps(result["scores"])


@pytest.mark.parametrize("opts, needle", [
    ({"alpha": 0.7, "beta": 0.5}, "alpha + options.beta must be <= 1"),
    ({"caption_mean": "normalised"}, "did you mean 'normalized'"),
    ({"gama": 0.1}, "did you mean 'gamma'"),
])
def test_bad_cvsi_options_are_refused(env: dict[str, Path], tmp_path: Path, opts: dict[str, Any],
                                      needle: str) -> None:
    cfg = write_config(tmp_path / "bad.yaml", env, lmm_captioner("http://127.0.0.1:9/v1"),
                       "http://127.0.0.1:9/v1", options=opts)
    res = runner.invoke(app, ["eval", "--method", str(cfg), "--task", "cirr", "--data-dir", str(env["cirr"]),
                              "-o", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_cvsi_is_listed_with_its_cost() -> None:
    res = runner.invoke(app, ["methods", "--json"])
    rows = {r["name"]: r for r in json.loads(res.output)["methods"]}
    assert rows["cvsi"]["method"] == "cvsi"
    assert rows["cvsi"]["cost"]["per_query"].startswith("15 captions + 2 LMM calls")
    assert rows["cvsi"]["cost"]["per_gallery_item"] == "1 image encode + 15 captions + 15 text encodes"
