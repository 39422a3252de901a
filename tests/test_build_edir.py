"""The EDIR build, offline: tiny random diffusers pipelines loaded with DiffusionPipeline.from_pretrained(dir)
and templates or an LMM behind a real HTTP server on 127.0.0.1, the embedding checks, sources and export."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cirbench.builders.edir import BuildIncomplete, run_edir
from cirbench.builders.edir.config import resolve
from cirbench.builders.edir.editors import DiffusersEditor, family_of
from cirbench.builders.edir.instructions import PlannedEdit
from cirbench.builders.edir.sources import dhash, near_duplicates, open_pool, scan_pool
from cirbench.builders.edir.verify import EmbeddingVerifier
from cirbench.core.dataset import load_native, read_manifest
from cirbench.models.base import Batch, ModelSpec
from tests.helpers.edit_pipelines import (
    TINY_CALL_KWARGS,
    FakeChatServer,
    Reply,
    build_tiny_ip2p,
    canned_answer,
    request_images,
    request_text,
    write_image_folder,
)


@pytest.fixture(autouse=True)
def one_thread():
    """2 shared cores: one torch thread is several times faster than two fighting over them."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ip2p(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ip2p(tmp_path_factory.mktemp("pipes") / "ip2p")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("pool") / "imgs", 5, size=40, duplicates=1)


@pytest.fixture(scope="module")
def editor(ip2p: Path) -> DiffusersEditor:
    return DiffusersEditor(str(ip2p), call=TINY_CALL_KWARGS["ip2p"])


def config(ip2p: Path, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "pipeline": "edir",
        "seed": 0,
        "sources": {"min_size": 16},
        "distractors": {"count": 1},
        "instructions": {"subcategories": ["Color", "Remove", "Complex"], "per_source": 3},
        "editor": {"model": str(ip2p), "size": 32, "multiple_of": 8, "call": TINY_CALL_KWARGS["ip2p"]},
        "verify": {
            "embedding": {"model": "random", "unrelated": 2, "min_margin": None, "min_direction": None}
        },
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


def test_template_build_end_to_end(ip2p: Path, images: Path, tmp_path: Path) -> None:
    cfg = config(
        ip2p,
        verify={"embedding": {"model": "random", "unrelated": 2, "min_margin": None, "min_direction": -0.05}},
    )
    out = run_edir(cfg, tmp_path / "edir", sources=f"folder:{images}", progress=False)
    task = load_native(out, "test")
    m = read_manifest(out)
    gen = m["generator"]
    # the pool: 6 files, one near-duplicate dropped, one distractor, 4 sources x 3 edit types
    assert gen["dedup"]["method"] == "phash" and gen["funnel"]["requested"] == 12
    rej = [json.loads(x) for x in (out / "rejections.jsonl").read_text().splitlines()]
    dup = [r for r in rej if r["stage"] == "sources"]
    assert dup == [
        {"stage": "sources", "source": "img_000_copy", "duplicate_of": "img_000", "reason": dup[0]["reason"]}
    ] and dup[0]["reason"].startswith("near-duplicate")
    emb = [r for r in rej if r["stage"] == "verify_embedding"]
    assert emb and all("change not aligned with the text" in r["reason"] and "direction" in r for r in emb)
    assert gen["funnel"]["verify_embedding"] == 12 - len(emb) == len(task.queries)
    # every query: one target (its edit), the reference outside the gallery, EDIR's taxonomy
    corpus = task.corpus_positions
    for q in task.queries:
        assert q.relevant_ids == (q.id,) and q.id in corpus and q.reference_id not in corpus
        assert (
            q.category == {"Color": "Attribute", "Remove": "Object", "Complex": "Complex"}[str(q.subcategory)]
        )
        assert q.meta["instruction"] and isinstance(q.meta["seed"], int) and q.item.text
        siblings = {p.id for p in task.queries if p.reference_id == q.reference_id and p.id != q.id}
        assert siblings <= set(q.hard_negative_ids)
        if q.subcategory == "Complex":
            partials = [p["id"] for p in q.meta["partial_edits"]]
            assert len(partials) == 2 and q.hard_negative_ids[:2] == tuple(partials)
            assert all(p in corpus for p in partials)
    # images: edits are PNGs at the editor's input size; the distractor is in the gallery
    img = task.corpus[0].load_image()
    assert img.size == (32, 32)
    assert set(gen["config"]["distractors"].values()) == {1}
    assert len([c for c in task.corpus if c.id.startswith("img_") and c.id.count("_") == 1]) == 1
    # the record: models (the pipeline class the hub-id path loaded), prompts, seeds, pass rates
    ed = next(iter(gen["models"].values()))["editor"]
    assert ed["pipeline"] == "StableDiffusionInstructPix2PixPipeline" and ed["model"] == str(ip2p)
    assert ed["call"]["num_inference_steps"] == 2
    assert set(gen["prompts"]) == {"instructions", "verify", "rewrite"}
    card = (out / "README.md").read_text()
    for s in (
        "| Attribute | Color |",
        "embedding check",
        "LMM check (skipped)",
        "pass rate",
        "## Prompts",
        "StableDiffusionInstructPix2PixPipeline",
        "seed 0",
        "near-duplicate",
    ):
        assert s in card, s
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size[0] > 400 and sheet.size[1] > 100
    # the output is just another task: cirbench eval scores it with no glue
    from cirbench.evaluation import EvalOptions, evaluate

    res = evaluate(
        "random", str(out), output=tmp_path / "eval", options=EvalOptions(progress=False, n_bootstrap=0)
    )
    assert res.main_metric == "R@1" and 0.0 <= res.main_score() <= 1.0
    assert set(res.scores["category"]) >= {"Attribute", "Complex"}


def _lmm_responder(body: dict[str, Any]) -> str | Reply:
    """canned_answer, except: Remove is declined, verification of Color edits answers in prose (malformed)."""
    text = request_text(body)
    if "Edit types (subcategory" in text:
        ans = json.loads(canned_answer(body))
        for e in ans["edits"]:
            if e["subcategory"] == "Remove":
                e["instruction"], e["reason"] = None, "nothing to remove"
        return json.dumps(ans)
    if "meant to be the same image after this edit" in text and "color change" in text:
        return "Looks good to me!"
    return canned_answer(body)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            deep_merge(out[k], v)
            if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "call"
            else v
        )
    return out


def test_build_with_an_lmm_over_http(
    ip2p: Path, images: Path, editor: DiffusersEditor, tmp_path: Path
) -> None:
    """The shipped pipelines/edir.yaml, pointed at a local server, a tiny editor and cheap checks."""
    import yaml

    shipped = yaml.safe_load((Path(__file__).parents[1] / "pipelines" / "edir.yaml").read_text())
    with FakeChatServer(_lmm_responder) as server:
        server.script = [Reply(status=500), Reply(status=429, headers={"Retry-After": "0"})]
        cfg = deep_merge(
            shipped,
            {
                "sources": {"min_size": 16},
                "distractors": {"count": 1},
                "instructions": {"subcategories": ["Color", "Remove", "Complex"], "per_source": 3},
                "lmm": {
                    "cache": False,
                    "openai": {
                        "model": "fake-vlm",
                        "base_url": server.url,
                        "backoff_s": 0.01,
                        "concurrency": 2,
                    },
                },
                "editor": {
                    "model": str(ip2p),
                    "size": 32,
                    "multiple_of": 8,
                    "call": TINY_CALL_KWARGS["ip2p"],
                },
                "verify": {
                    "embedding": {
                        "model": "random",
                        "unrelated": 2,
                        "min_margin": None,
                        "min_direction": None,
                    }
                },
            },
        )
        out = run_edir(
            cfg, tmp_path / "edir", sources=f"folder:{images}", limit=2, progress=False, editor=editor
        )
        bodies = list(server.requests)
    task = load_native(out, "test")
    # per source: 3 types asked, Remove declined, Color verification malformed -> only Complex survives
    assert [q.subcategory for q in task.queries] == ["Complex", "Complex"]
    q = task.queries[0]
    assert str(q.item.text).startswith("same picture but apply a complex change")
    assert q.meta["instruction"] == "Apply a complex change to the main object."
    assert q.meta["checks"]["lmm"]["score"] == 0.9 and q.meta["components"] == [
        "Make the main object red.",
        "Make it snow.",
    ]
    rej = [json.loads(x) for x in (out / "rejections.jsonl").read_text().splitlines()]
    by_stage = {
        (r["stage"], r.get("subcategory")): r for r in rej if "source" in r and r["stage"] != "sources"
    }
    assert by_stage[("instructions", "Remove")]["reason"] == "LMM declined: nothing to remove"
    bad = by_stage[("verify_lmm", "Color")]
    assert (
        bad["reason"].startswith("malformed answer: answer is not JSON") and bad["raw"] == "Looks good to me!"
    )
    # what went over the wire: the source image inline for instructions, source + edit for verification
    kinds = [
        (
            "instr"
            if "Edit types" in request_text(b)
            else "verify"
            if "meant to be" in request_text(b)
            else "rewrite",
            request_images(b),
        )
        for b in bodies
    ]
    assert kinds.count(("instr", 1)) == 2 + 2  # + the 500 and the 429 that were retried
    assert ("verify", 2) in kinds and ("rewrite", 0) in kinds
    gen = read_manifest(out)["generator"]
    lmm_fp = next(iter(gen["models"].values()))["lmm"]["instructions"]
    assert lmm_fp["backend"] == "openai" and lmm_fp["model"] == "fake-vlm"
    assert "LMM check (skipped)" not in (out / "README.md").read_text()


def test_unreachable_lmm_defers_units_and_a_rerun_finishes(
    ip2p: Path, images: Path, editor: DiffusersEditor, tmp_path: Path
) -> None:
    with FakeChatServer(lambda body: Reply(status=503)) as server:
        cfg = config(
            ip2p,
            lmm={
                "backend": "openai",
                "cache": False,
                "openai": {"model": "m", "base_url": server.url, "max_retries": 1, "backoff_s": 0.01},
            },
        )
        with pytest.raises(BuildIncomplete, match="2 of 2 sources could not finish"):
            run_edir(cfg, tmp_path / "d", sources=f"folder:{images}", limit=2, progress=False, editor=editor)
        assert not list((tmp_path / "d.work").glob("units/*/*.json")) and not (tmp_path / "d").exists()
        cfg["work"] = {"give_up_after": 2, "lookahead": 0}  # no planning ahead: an exact request count
        with pytest.raises(BuildIncomplete, match="stopped after 2 sources in a row failed"):
            run_edir(cfg, tmp_path / "d", sources=f"folder:{images}", limit=4, progress=False, editor=editor)
        assert len(server.requests) == 2 * 2 + 2 * 2  # 2 attempts per source, and the 3rd source never asked
        cfg["work"] = {}
        server.responder = canned_answer
        out = run_edir(
            cfg, tmp_path / "d", sources=f"folder:{images}", limit=2, progress=False, editor=editor
        )
    assert len(load_native(out, "test").queries) == 6


class _Vectors:
    """A fake encoder: images map to fixed vectors by their decoded colour; texts by a lookup."""

    spec = ModelSpec(name="fake", id="fake", dim=3)

    def __init__(
        self, by_color: dict[tuple[int, int, int], list[float]], by_text: dict[str, list[float]]
    ) -> None:
        self.by_color, self.by_text = by_color, by_text

    def fingerprint(self) -> dict[str, Any]:
        return {"model": "fake"}

    def encode(self, batch: Batch, *, role: str, instruction: str | None = None) -> np.ndarray:
        rows = [
            self.by_text[it.text] if it.text is not None else self.by_color[img.getpixel((0, 0))]  # type: ignore[union-attr]
            for it, img in zip(batch.items, batch.images, strict=True)
        ]
        return np.asarray(rows, np.float32)


def test_embedding_checks_and_their_reasons() -> None:
    red, blue, grey, green, white = (255, 0, 0), (0, 0, 255), (128, 128, 128), (0, 255, 0), (255, 255, 255)
    enc = _Vectors(
        {red: [1, 0, 0], blue: [0.8, 0.6, 0], grey: [0, 0, 1], green: [1, 0, 0], white: [0.1, 0, 0.995]},
        {"src": [1, 0, 0], "bluer": [0.6, 0.8, 0], "greyer": [0, 0.2, 1], "same": [1, 0, 0]},
    )
    v = EmbeddingVerifier(enc, min_margin=0.0, min_direction=0.1, max_source_similarity=0.99)
    sq = {c: Image.new("RGB", (4, 4), c) for c in (red, blue, grey, green, white)}
    pngs = {c: _png(im) for c, im in sq.items()}
    v.set_unrelated(["u1"], [pngs[grey]], [sq[grey]])
    edits = [
        PlannedEdit("ok", "Color", "make it blue", 1, target_caption="bluer"),
        PlannedEdit("drift", "Color", "make it grey", 2, target_caption="greyer"),
        PlannedEdit("noop", "Color", "make it green", 3, target_caption="same"),
        PlannedEdit("far", "Color", "make it white", 4, target_caption="greyer"),
    ]
    colors = {"ok": blue, "drift": grey, "noop": green, "far": white}
    checks, rej = v.check(
        "s",
        pngs[red],
        sq[red],
        edits,
        {k: pngs[c] for k, c in colors.items()},
        {k: sq[c] for k, c in colors.items()},
        "src",
    )
    assert checks["ok"]["sim_source"] == pytest.approx(0.8) and checks["ok"]["direction"] > 0.5
    why = {r["edit"]: r["reason"] for r in rej}
    assert "ok" not in why
    assert why["drift"].startswith("closer to an unrelated image than to its source (margin -1.000 < 0.0")
    assert why["noop"].startswith("no visible change (similarity to source 1.000 > 0.99)")
    assert "change not aligned with the text" in why["noop"]
    assert why["far"].startswith("closer to an unrelated image")


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_sources_dedup_and_specs(images: Path, tmp_path: Path, tiny_dataset: Path) -> None:
    base = Image.open(images / "img_001.png").convert("RGB")
    near = base.resize((36, 36)).resize((40, 40))
    assert bin(dhash(base) ^ dhash(near)).count("1") <= 4
    assert near_duplicates([0b0, 0b1, 0b111111, 0b1 << 40, 0b111111 | (1 << 63)], 2) == [None, 0, None, 0, 2]
    for method in ("phash", "dhash"):
        scan = scan_pool(open_pool(f"folder:{images}"), method=method, max_distance=4)
        assert [d["id"] for d in scan["dropped"]] == ["img_000_copy"] and scan["method"] == method
    small = scan_pool(open_pool(str(images)), method="none", min_size=48)
    assert len(small["dropped"]) == 6 and all("too small" in d["reason"] for d in small["dropped"])
    # an existing benchmark's corpus (a native dataset) and a `datasets` dataset (a local parquet dir)
    pool = open_pool(f"dataset:{tiny_dataset}@test")
    assert pool.ids == ["a", "b", "c", "d", "e"] and pool.image("a").size == (8, 8)
    import datasets

    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    ds = datasets.Dataset.from_dict(
        {
            "name": ["x/1", "x/2"],
            "image": [{"bytes": _png(base), "path": None}, {"bytes": _png(near), "path": None}],
        },
        features=datasets.Features({"name": datasets.Value("string"), "image": datasets.Image()}),
    )
    ds.to_parquet(str(hub_dir / "train.parquet"))
    hub = open_pool(f"hf:{hub_dir}@train", {"id_column": "name"})
    assert hub.ids == ["x_1", "x_2"] and hub.image("x_2").size == (40, 40)
    with pytest.raises(ValueError, match="expected folder:DIR"):
        open_pool("s3://bucket")


def test_config_is_checked(ip2p: Path, images: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['min_scroe'\] in verify.lmm"):
        resolve(config(ip2p, verify={"lmm": {"min_scroe": 0.5}}))
    with pytest.raises(ValueError, match="unknown subcategories"):
        resolve(config(ip2p, instructions={"subcategories": ["Colour"]}))
    with pytest.raises(ValueError, match="not an EDIR pipeline"):
        resolve({"pipeline": "synthetic"})
    with pytest.raises(ValueError, match="no sources"):
        run_edir(config(ip2p), tmp_path / "x", progress=False)
    run_edir(
        config(ip2p, instructions={"per_source": 1}),
        tmp_path / "y",
        sources=str(images),
        limit=1,
        progress=False,
        editor=DiffusersEditor(str(ip2p), call=TINY_CALL_KWARGS["ip2p"]),
    )
    with pytest.raises(ValueError, match="holds work made with a different config"):
        run_edir(config(ip2p, seed=1), tmp_path / "y", sources=str(images), limit=1, progress=False)


@pytest.mark.parametrize("family", ["flux-kontext", "qwen-image-edit"])
def test_editor_families_load_by_directory(family: str, tmp_path: Path) -> None:
    from tests.helpers import edit_pipelines as ep

    if family == "qwen-image-edit":
        pytest.importorskip("torchvision")
        ep.cap_qwen_edit_resolution(32 * 32)
    build = {"flux-kontext": ep.build_tiny_flux_kontext, "qwen-image-edit": ep.build_tiny_qwen_image_edit}[
        family
    ]
    ed = DiffusersEditor(str(build(tmp_path / family)), call=ep.TINY_CALL_KWARGS[family])
    assert ed.family == family and family_of(ed.pipeline_class) == family
    src = Image.new("RGB", (32, 32), (200, 40, 40))
    a = ed.edit(src, ["make it blue", "add a cat"], [1, 2])
    b = ed.edit(src, ["make it blue", "add a cat"], [1, 2])
    assert [im.size for im in a] == [(32, 32)] * 2
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


def test_importing_the_build_loads_no_torch() -> None:
    code = (
        "import sys, cirbench.builders.edir, cirbench.builders.soft_refine, cirbench.llm; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("mode", ["files", "parquet"])
def test_images_as_files_or_inline(
    mode: str, ip2p: Path, images: Path, editor: DiffusersEditor, tmp_path: Path
) -> None:
    cfg = config(ip2p, instructions={"per_source": 1}, export={"images": mode})
    out = run_edir(cfg, tmp_path / "e", sources=str(images), limit=1, progress=False, editor=editor)
    t = pq.read_table(out / "test" / "corpus.parquet")
    files = sorted(p.name for p in (out / "images").glob("*")) if (out / "images").exists() else []
    if mode == "parquet":
        assert (
            t.column("image").null_count == 0
            and t.column("image_path").null_count == t.num_rows
            and not files
        )
    else:
        assert t.column("image").null_count == t.num_rows
        refs = pq.read_table(out / "test" / "references.parquet").column("image_path").to_pylist()
        assert files == sorted(Path(p).name for p in t.column("image_path").to_pylist() + refs)
    task = load_native(out, "test")
    assert task.queries[0].item.load_image().size == (40, 40) and task.corpus[0].load_image().size == (32, 32)


def test_card_escapes_the_config(ip2p: Path, images: Path, tmp_path: Path) -> None:
    """A hostile name and description (YAML keys, HTML, a heading, a link) stay text on the EDIR card."""
    from tests.test_data_cards import DESCRIPTION, NAME, _card, _check_body

    cfg = config(ip2p, name=NAME, description=DESCRIPTION, instructions={"subcategories": ["Color"],
                                                                         "per_source": 1})
    out = run_edir(cfg, tmp_path / "edir", sources=f"folder:{images}", progress=False)
    front, body = _card(out)
    assert front["pretty_name"] == NAME and "extra_key" not in front
    _check_body(body)
