"""Paracosm end to end through `cirbench eval --method`: a tiny CLIP, a tiny InstructPix2Pix editor and a tiny
Stable Diffusion text-to-image pipeline saved to directories and loaded through diffusers' real loader, a
chat-completions server on the loopback interface as the VLM, the CIRR, CIRCO, FashionIQ and synthetic-mini
fixtures in their released formats.

Expected scores are computed here by hand from the formula (lam * <norm(V(I_m) + T(t_q)), phi> + (1 - lam) *
<norm T(t_mod), phi>, phi = norm(norm V(I) + norm V(I_syn))), from the stored images and the texts the
server returned, not from the method's fusion code; a mental image is regenerated here straight through
diffusers with the seed rule, and must match the stored file pixel for pixel."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from cirbench.cli import app
from cirbench.core.types import Item
from cirbench.models.registry import get_model
from cirbench.retrieval.encode import encode_items
from cirbench.retrieval.methods.artifacts import item_seed
from cirbench.retrieval.methods.prompts import BUILTIN
from cirbench.tasks.registry import get_task
from tests.helpers.edit_pipelines import TINY_CALL_KWARGS, FakeChatServer, build_tiny_ip2p, request_text
from tests.helpers.t2i_pipelines import TINY_T2I_CALL, build_tiny_sd
from tests.helpers.tiny import build_tiny_clip
from tests.task_fixtures import WRITERS

runner = CliRunner()
SIZE = 32
SHORT = BUILTIN["paracosm-describe-short"].text
DETAILED = BUILTIN["paracosm-describe-detailed"].text


def image_digest(body: dict[str, Any]) -> str:
    """A short hash of the image a request carries (its data URL)."""
    for m in body.get("messages", []):
        for p in m.get("content") if isinstance(m.get("content"), list) else []:
            if isinstance(p, dict) and p.get("type") == "image_url":
                return hashlib.sha256(p["image_url"]["url"].encode()).hexdigest()[:8]
    return "none"


def responder(body: dict[str, Any]) -> str:
    text = request_text(body)
    if text.startswith(SHORT):
        return f"a small photo {image_digest(body)}"
    if text.startswith(DETAILED):
        return f"a detailed scene number {image_digest(body)} with red things"
    m = re.search(r"it shows (.*) and satisfies the change \"(.*)\"", text)
    if m:
        return f"{m.group(1)} which {m.group(2)}"
    return "unknown prompt"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("paracosm-models")
    return {
        "clip": build_tiny_clip(root / "clip"),
        "editor": build_tiny_ip2p(root / "ip2p"),
        "t2i": build_tiny_sd(root / "sd"),
    }


def write_small_fashioniq(root: Path) -> Path:
    """FashionIQ's released layout (image_splits/, captions/, images/), val split only, 4 images and 2
    queries per category: every gallery image costs a text-to-image generation, so the shared 180-image
    fixture would spend minutes in diffusion without testing anything more."""
    from tests.conftest import png

    for c, cat in enumerate(("dress", "shirt", "toptee")):
        ids = [f"B00{cat.upper()}{i}" for i in range(4)]
        (root / "image_splits").mkdir(parents=True, exist_ok=True)
        (root / "captions").mkdir(exist_ok=True)
        (root / "images").mkdir(exist_ok=True)
        (root / "image_splits" / f"split.{cat}.val.json").write_text(json.dumps(ids))
        recs = [{"candidate": ids[0], "target": ids[1], "captions": [f"is a red {cat}.", " has sleeves"]},
                {"candidate": ids[2], "target": ids[3], "captions": [f"is a darker {cat}?", "is shorter"]}]
        (root / "captions" / f"cap.{cat}.val.json").write_text(json.dumps(recs))
        for i, a in enumerate(ids):
            (root / "images" / f"{a}.png").write_bytes(png((60 * i, 80 * c, 200 - 40 * i)))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("paracosm-data")
    out = {name: WRITERS[name](root / name) for name in ("cirr", "circo", "synthetic-mini")}
    return {**out, "fashioniq": write_small_fashioniq(root / "fashioniq")}


def write_config(path: Path, models: dict[str, Path], url: str, *, t2i_steps: int = 2,
                 **extra: Any) -> Path:
    lmm = {"backend": "openai", "model": "fake-vlm", "base_url": url, "api_key_env": None}
    cfg: dict[str, Any] = {
        "method": "paracosm",
        "components": {
            "encoder": f"hf-clip:{models['clip']}",
            "editor": {"model": str(models["editor"]), "size": SIZE, "call": TINY_CALL_KWARGS["ip2p"]},
            "t2i": {"model": str(models["t2i"]), "size": SIZE,
                    "call": {**TINY_T2I_CALL, "num_inference_steps": t2i_steps}},
            "describer": {"kind": "lmm", "lmm": lmm},
            "writer": lmm,
        },
        **extra,
    }
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def eval_args(cfg: Path, task: str, data_dir: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["eval", "--method", str(cfg), "--task", task, "--data-dir", str(data_dir), "-o", str(out),
            "--cache-dir", str(cache), "--bootstrap", "0", "-q", *extra]


def run_eval(*args: Any) -> dict[str, Any]:
    res = runner.invoke(app, eval_args(*args))
    assert res.exit_code == 0, res.output
    return json.loads((Path(args[3]) / "result.json").read_text())


def stage_records(cache: Path, stage: str) -> dict[str, dict[str, Any]]:
    """item id -> record of a stage, read from the artifact store's JSONL parts (one namespace)."""
    folders = sorted((cache / "artifacts").glob(f"{stage}-*"))
    assert len(folders) == 1, folders
    out: dict[str, dict[str, Any]] = {}
    for part in folders[0].glob("part-*.jsonl"):
        for line in part.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                out.setdefault(rec["id"], {**rec, "folder": folders[0]})
    return out


def stored_image(rec: dict[str, Any]) -> Path:
    return Path(rec["folder"]) / rec["value"]["file"]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def expected_scores(task: Any, models: dict[str, Path], cache: Path, t_mod: list[list[str]], lam: float = 0.3,
                    ) -> np.ndarray:
    """The Paracosm score by hand, -inf where the protocol does not allow an item."""
    enc = get_model(f"hf-clip:{models['clip']}")
    mental, desc = stage_records(cache, "mental_image"), stage_records(cache, "mental_desc")
    syn = stage_records(cache, "synthetic_image")

    def img(paths: list[Path]) -> np.ndarray:
        v, _ = encode_items(enc, [Item(f"i{i}", image=p.read_bytes()) for i, p in enumerate(paths)],
                            role="document", progress=False)
        return v.astype(np.float64)

    def txt(texts: list[str]) -> np.ndarray:
        v, _ = encode_items(enc, [Item(f"t{i}", text=t) for i, t in enumerate(texts)], role="query",
                            progress=False)
        return v.astype(np.float64)

    vm = img([stored_image(mental[q.id]) for q in task.queries])
    tq = txt([desc[q.id]["value"] for q in task.queries])
    tm = np.stack([unit(txt(ts).mean(axis=0)) for ts in t_mod])
    vi, _ = encode_items(enc, task.corpus, role="document", progress=False)
    vs = img([stored_image(syn[c.id]) for c in task.corpus])
    phi = unit(unit(vi.astype(np.float64)) + unit(vs))
    s = lam * (unit(vm + tq) @ phi.T) + (1 - lam) * (tm @ phi.T)
    pos = task.corpus_positions
    for qi, q in enumerate(task.queries):
        if q.gallery is not None:
            allowed = {pos[c] for c in task.galleries[q.gallery]}
            s[qi, [p for p in range(len(task.corpus)) if p not in allowed]] = -np.inf
        if task.protocol.exclude_reference and q.reference_id in pos:
            s[qi, pos[q.reference_id]] = -np.inf
    return s


def check_run(out: Path, task: Any, expected: np.ndarray, k: int = 10) -> list[list[str]]:
    table = pd.read_parquet(out / "run.parquet")
    by_q = {r.query_id: (list(r.ranked_ids)[:k], list(r.scores)[:k]) for r in table.itertuples()}
    pos = task.corpus_positions
    rows = []
    for qi, q in enumerate(task.queries):
        ids, scores = by_q[q.id]
        best = np.sort(expected[qi][np.isfinite(expected[qi])])[::-1][:k]
        np.testing.assert_allclose(scores, best, atol=1e-5)
        np.testing.assert_allclose([expected[qi, pos[c]] for c in ids], scores, atol=1e-5)
        rows.append(ids)
    return rows


def test_paracosm_on_cirr_end_to_end_scores_seeds_cost_and_reuse(
    models: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    task = get_task("cirr", data_dir=data["cirr"])
    nq, ng = len(task.queries), len(task.corpus)
    cache = tmp_path / "cache"
    with FakeChatServer(responder) as server:
        cfg = write_config(tmp_path / "my-paracosm.yaml", models, server.url)
        result = run_eval(cfg, "cirr", data["cirr"], tmp_path / "out", cache)
        texts = [request_text(b) for b in server.requests]
        # one short description per mental image, one detailed per gallery image, no CIRCO text call
        assert sum(t.startswith(SHORT) for t in texts) == nq
        assert sum(t.startswith(DETAILED) for t in texts) == ng and len(texts) == nq + ng

        cost = result["retrieval"]["cost"]
        steps = TINY_CALL_KWARGS["ip2p"]["num_inference_steps"]
        assert cost["mental_image"]["editor_calls"] == nq and cost["mental_image"]["generations"] == nq
        assert cost["mental_image"]["diffusion_steps"] == nq * steps
        assert cost["mental_image"]["denoiser_calls"] == nq * steps  # ip2p batches its 3-way CFG in one pass
        assert cost["mental_desc"]["lmm_calls"] == nq and cost["gallery_desc"]["lmm_calls"] == ng
        assert cost["synthetic_image"]["generations"] == ng
        assert cost["synthetic_image"]["diffusion_steps"] == ng * TINY_T2I_CALL["num_inference_steps"]
        assert cost["encode_gallery"]["image_encodes"] == ng
        assert cost["encode_synthetic"]["image_encodes"] == ng
        assert cost["encode_mental"]["image_encodes"] == nq
        assert cost["per_query"]["diffusion_steps"] == pytest.approx(steps)
        assert cost["per_query"]["lmm_calls"] == pytest.approx(1.0)
        assert cost["per_gallery_item"]["lmm_calls"] == pytest.approx(1.0)
        assert cost["per_gallery_item"]["image_encodes"] == pytest.approx(2.0)
        assert cost["per_gallery_item"]["diffusion_steps"] == pytest.approx(2.0)

        fp = result["retrieval"]["retriever"]["fingerprint"]
        assert fp["editor"]["pipeline"] == "StableDiffusionInstructPix2PixPipeline"
        assert fp["t2i"]["pipeline"] == "StableDiffusionPipeline" and "local_digest" in fp["t2i"]
        assert fp["prompts"]["edit"]["default"]["sha256"] == BUILTIN["paracosm-edit"].sha256
        assert fp["prompts"]["describe_gallery"]["sha256"] == BUILTIN["paracosm-describe-detailed"].sha256
        assert fp["options"]["lam"] == 0.3 and fp["describer"]["lmm"]["model"] == "fake-vlm"
        method = result["protocol"]["method"]
        assert method["seeds"]["base_seed"] == 0 and method["lam"] == 0.3
        assert method["score"]["op"] == "weighted" and [t[0] for t in method["score"]["terms"]] == [0.3, 0.7]
        assert result["protocol"]["exclude_reference"] is True

        # seeds: each mental image is the editor's output under sha256(0, stage, query id), reproduced here
        mental = stage_records(cache, "mental_image")
        q = task.queries[0]
        assert mental[q.id]["seed"] == item_seed(0, "mental_image", q.id)
        import torch
        from diffusers import StableDiffusionInstructPix2PixPipeline

        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(models["editor"]))
        pipe.set_progress_bar_config(disable=True)
        prompt = BUILTIN["paracosm-edit"].text.replace("{instruction}", q.item.text or "")
        ref = Image.open(q.item.image).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        again = pipe(prompt=prompt, image=ref, height=SIZE, width=SIZE,
                     generator=torch.Generator("cpu").manual_seed(item_seed(0, "mental_image", q.id)),
                     output_type="pil", **TINY_CALL_KWARGS["ip2p"]).images[0]
        stored = np.asarray(Image.open(stored_image(mental[q.id])).convert("RGB"))
        np.testing.assert_array_equal(stored, np.asarray(again.convert("RGB")))

        # the ranking is the hand-computed two-term score, reference excluded
        want = expected_scores(task, models, cache, [[q.item.text or ""] for q in task.queries])
        got = check_run(tmp_path / "out", task, want)
        assert all(q.reference_id not in row for q, row in zip(task.queries, got, strict=True))

        # a rerun generates nothing, asks the VLM nothing and ranks the same
        server.requests.clear()
        again_res = run_eval(cfg, "cirr", data["cirr"], tmp_path / "out", cache, "--overwrite")
        assert server.requests == []
        for stage in ("mental_image", "synthetic_image", "gallery_desc", "mental_desc"):
            assert stage not in again_res["retrieval"]["cost"]
        assert again_res["encoding"]["artifacts"]["synthetic_image"]["reused"] == ng
        check_run(tmp_path / "out", task, want)

        # lam is an option: 1.0 keeps only the mental-image term
        cfg2 = write_config(tmp_path / "lam1.yaml", models, server.url, options={"lam": 1.0})
        run_eval(cfg2, "cirr", data["cirr"], tmp_path / "out1", cache)
        check_run(tmp_path / "out1", task, expected_scores(task, models, cache,
                                                           [[q.item.text or ""] for q in task.queries], 1.0))


def test_paracosm_fashioniq_averages_both_caption_orders(
    models: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    task = get_task("fashioniq", data_dir=data["fashioniq"])
    with FakeChatServer(responder) as server:
        cfg = write_config(tmp_path / "f.yaml", models, server.url)
        result = run_eval(cfg, "fashioniq", data["fashioniq"], tmp_path / "out", tmp_path / "cache")
    orders = []
    for q in task.queries:
        c1, c2 = (c.strip(".?, ") for c in q.meta["captions"])
        orders.append([f"{c1} and {c2}", f"{c2} and {c1}"])
    assert result["retrieval"]["cost"]["encode_text"]["text_encodes"] >= 2 * len(task.queries)
    got = check_run(tmp_path / "out", task, expected_scores(task, models, tmp_path / "cache", orders))
    for q, row in zip(task.queries, got, strict=True):  # each query searched in its own category
        assert set(row) <= set(task.galleries[q.gallery])


def test_paracosm_circo_text_is_a_named_option(
    models: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    task = get_task("circo", data_dir=data["circo"])
    with FakeChatServer(responder) as server:
        cfg = write_config(tmp_path / "c.yaml", models, server.url)
        result = run_eval(cfg, "circo", data["circo"], tmp_path / "out", tmp_path / "cache")
        edits = [t for t in (request_text(b) for b in server.requests) if "satisfies the change" in t]
    assert len(edits) == len(task.queries) and result["retrieval"]["cost"]["circo_text"]["lmm_calls"] == 6
    lmm_text = [[f"{q.meta['shared_concept']} which {q.meta['relative_caption']}"] for q in task.queries]
    check_run(tmp_path / "out", task, expected_scores(task, models, tmp_path / "cache", lmm_text))
    assert "mAP@10" in result["scores"]["overall"]["overall"]
    # the shared concept goes into the edit prompt
    fp = result["retrieval"]["retriever"]["fingerprint"]
    assert fp["prompts"]["edit"]["circo"]["sha256"] == BUILTIN["paracosm-edit-shared"].sha256
    # circo_text: protocol uses the task's own query text and asks no LMM for it
    with FakeChatServer(responder) as server:
        cfg = write_config(tmp_path / "c2.yaml", models, server.url, options={"circo_text": "protocol"})
        result = run_eval(cfg, "circo", data["circo"], tmp_path / "out2", tmp_path / "cache")
        assert server.requests == []  # every image and description is reused from the first run
    assert "circo_text" not in result["retrieval"]["cost"]
    check_run(tmp_path / "out2", task, expected_scores(task, models, tmp_path / "cache",
                                                       [[q.item.text or ""] for q in task.queries]))


def test_paracosm_runs_on_synthetic_mini(
    models: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    task = get_task("synthetic-mini", data_dir=data["synthetic-mini"])
    with FakeChatServer(responder) as server:
        cfg = write_config(tmp_path / "s.yaml", models, server.url, options={"image_format": "webp",
                                                                               "image_quality": 80})
        result = run_eval(cfg, "synthetic-mini", data["synthetic-mini"], tmp_path / "out", tmp_path / "cache")
    syn = stage_records(tmp_path / "cache", "synthetic_image")
    assert len(syn) == len(task.corpus) and all(r["value"]["file"].endswith(".webp") for r in syn.values())
    check_run(tmp_path / "out", task, expected_scores(task, models, tmp_path / "cache",
                                                      [[q.item.text or ""] for q in task.queries]))
    diffusion = result["retrieval"]["retriever"]["fingerprint"]["diffusion"]
    assert diffusion["synthetic_image"]["image_format"] == {"format": "webp", "quality": 80}


def test_sigkill_during_gallery_generation_loses_and_repeats_nothing(
    models: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    task = get_task("cirr", data_dir=data["cirr"])
    ng = len(task.corpus)
    cache = tmp_path / "cache"
    with FakeChatServer(responder) as server:
        cfg = write_config(tmp_path / "k.yaml", models, server.url, t2i_steps=12)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        code = ("import sys; from cirbench.cli import app; sys.argv = ['cirbench'] + sys.argv[1:]; app()")
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *eval_args(cfg, "cirr", data["cirr"], tmp_path / "out", cache)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            deadline = time.time() + 240
            while time.time() < deadline and proc.poll() is None:
                if len(list((cache / "artifacts").glob("synthetic_image-*/images/*/*.png"))) >= 3:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "the run ended before it could be killed"
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        pngs = (cache / "artifacts").glob("synthetic_image-*/images/*/*.png")
        images = {p: p.stat().st_mtime_ns for p in pngs}
        done = len(images)
        assert 3 <= done < ng
        assert not (tmp_path / "out" / "result.json").exists()

        result = run_eval(cfg, "cirr", data["cirr"], tmp_path / "out", cache)
    cost = result["retrieval"]["cost"]["synthetic_image"]
    # every image finished before the kill is reused (or adopted when its record was lost): none repeated
    assert cost["generations"] == ng - done
    assert cost.get("adopted", 0) <= 1
    assert {p: p.stat().st_mtime_ns for p in images} == images
    assert len(stage_records(cache, "synthetic_image")) == ng
    assert not list((cache / "artifacts").glob("synthetic_image-*/images/*/.*.tmp"))
    check_run(tmp_path / "out", task, expected_scores(task, models, cache,
                                                      [[q.item.text or ""] for q in task.queries]))


@pytest.mark.parametrize(
    "patch, needle",
    [
        ({"options": {"lam": 1.5}}, "lam and beta must be in [0, 1]"),
        ({"options": {"circo_txt": "lmm"}}, "did you mean 'circo_text'"),
        ({"options": {"image_format": "gif"}}, "image format 'gif'"),
        ({"prompts": {"edit": {"default": "paracosm-edti"}}}, "prompts.edit.default"),
    ],
)
def test_bad_paracosm_configs_are_refused_in_one_line(
    models: dict[str, Path], data: dict[str, Path], tmp_path: Path, patch: dict[str, Any], needle: str
) -> None:
    cfg = write_config(tmp_path / "bad.yaml", models, "http://127.0.0.1:9/v1", **patch)
    res = runner.invoke(app, eval_args(cfg, "cirr", data["cirr"], tmp_path / "out", tmp_path / "cache"))
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_a_misspelled_paracosm_component_is_refused(data: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(json.dumps({"method": "paracosm", "components": {"edtor": {}}}))
    args = eval_args(tmp_path / "bad.yaml", "cirr", data["cirr"], tmp_path / "o", tmp_path / "c")
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "did you mean 'editor'" in res.output
