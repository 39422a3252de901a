"""CIReVL end to end through `cirbench eval --method`: a tiny CLIP and a tiny BLIP-2 OPT captioner saved to
disk and loaded through their real paths, a chat-completions server on the loopback interface, the CIRR,
CIRCO and FashionIQ fixtures in their released formats. Expected rankings are computed here from the
encoder and the texts the server was asked for, not from the method's own code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cirbench.cli import app
from cirbench.core.types import Item
from cirbench.models.registry import get_model
from cirbench.retrieval.encode import encode_items
from cirbench.retrieval.methods.common import parse_edited
from cirbench.retrieval.methods.prompts import BUILTIN
from cirbench.tasks.registry import get_task
from tests.helpers.edit_pipelines import FakeChatServer, request_images, request_text
from tests.helpers.tiny import build_tiny_blip2_opt, build_tiny_clip
from tests.task_fixtures import WRITERS

runner = CliRunner()


def instruction_of(body: dict[str, Any]) -> str:
    return str(re.findall(r"^Instruction: (.*)$", request_text(body), flags=re.M)[-1])


def responder(body: dict[str, Any]) -> str:
    ins = instruction_of(body)
    if "no marker" in ins:
        return "I cannot do that."
    return f"Some reasoning first.\nEdited Description: {ins} in the rain"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cirevl-models")
    return {"clip": build_tiny_clip(root / "clip"), "blip2": build_tiny_blip2_opt(root / "blip2")}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cirevl-data")
    return {name: WRITERS[name](root / name) for name in ("cirr", "circo", "fashioniq")}


def write_config(path: Path, models: dict[str, Path], url: str, **extra: Any) -> Path:
    cfg: dict[str, Any] = {
        "method": "cirevl",
        "components": {
            "encoder": f"hf-clip:{models['clip']}",
            "captioner": {"kind": "blip2", "model": str(models["blip2"])},
            "rewriter": {"backend": "openai", "model": "fake-llm", "base_url": url, "api_key_env": None},
        },
        "decoding": {"caption": {"max_tokens": 8}},
        **extra,
    }
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def run_eval(cfg: Path, task: str, data_dir: Path, out: Path, cache: Path, *extra: str) -> Any:
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


def expected_scores(encoder: Any, task: Any, texts: list[str]) -> np.ndarray:
    """(queries x corpus) cosine of the CLIP text feature vs the gallery images, -inf where the protocol
    does not allow an item (another category's gallery, the excluded reference)."""
    qv, _ = encode_items(
        encoder, [Item(f"q{i}", text=t) for i, t in enumerate(texts)], role="query", progress=False
    )
    gv, _ = encode_items(encoder, task.corpus, role="document", progress=False)
    s = (qv @ gv.T).astype(np.float64)
    pos = task.corpus_positions
    for qi, q in enumerate(task.queries):
        if q.gallery is not None:
            allowed = {pos[c] for c in task.galleries[q.gallery]}
            s[qi, [p for p in range(len(task.corpus)) if p not in allowed]] = -np.inf
        if task.protocol.exclude_reference and q.reference_id in pos:
            s[qi, pos[q.reference_id]] = -np.inf
    return s


def check_run(out: Path, task: Any, expected: np.ndarray, k: int = 10) -> list[list[str]]:
    """The stored run is the top-k of `expected` (up to ties: the tiny CLIP ties many images)."""
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


def test_parse_edited() -> None:
    assert parse_edited("x\nEdited Description:  a red car \nmore") == "a red car"
    assert parse_edited("Edited Description:") is None and parse_edited("no line") is None


def test_cirevl_on_cirr_end_to_end_cost_and_resume(
    models: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    task = get_task("cirr", data_dir=data["cirr"])
    nq, refs = len(task.queries), {q.reference_id for q in task.queries}
    with FakeChatServer(responder) as server:
        cfg = write_config(tmp_path / "my-cirevl.yaml", models, server.url)
        result = run_eval(cfg, "cirr", data["cirr"], tmp_path / "out", tmp_path / "cache")
        bodies = list(server.requests)
        # one rewrite per query, CIRR's contextual prompt, the released decoding, no image sent to the LLM
        assert len(bodies) == nq and not any(request_images(b) for b in bodies)
        assert all(
            request_text(b).startswith(BUILTIN["cirevl-contextual"].text + "\nImage Content: ")
            for b in bodies
        )
        assert {(b["temperature"], b["max_tokens"]) for b in bodies} == {(0.0, 700)}
        assert sorted(instruction_of(b) for b in bodies) == sorted(q.item.text or "" for q in task.queries)

        cost = result["retrieval"]["cost"]
        assert cost["ref_caption"]["captioner_calls"] == len(refs)  # one caption per distinct reference
        assert cost["edited_caption"]["lmm_calls"] == nq
        assert cost["edited_caption"]["tokens_in"] == nq and cost["edited_caption"]["tokens_out"] == nq
        assert cost["encode_gallery"]["image_encodes"] == len(task.corpus)
        assert cost["per_query"]["lmm_calls"] == pytest.approx(1.0)
        assert cost["per_gallery_item"]["image_encodes"] == pytest.approx(1.0)
        retr = result["retrieval"]["retriever"]
        assert retr["name"] == "my-cirevl" and result["model"]["name"] == "my-cirevl"
        fp = retr["fingerprint"]
        assert fp["prompts"]["rewrite"]["cirr"]["sha256"] == BUILTIN["cirevl-contextual"].sha256
        assert fp["rewriter"]["host"] == "127.0.0.1" and fp["rewriter"]["model"] == "fake-llm"
        assert fp["captioner"]["component"] == "blip2-captioner" and "local_digest" in fp["captioner"]
        method = result["protocol"]["method"]
        assert method["rewrite_prompt"]["id"] == "cirevl-contextual" and method["seeds"]["base_seed"] == 0
        assert "transformers" in method["libraries"] and result["protocol"]["exclude_reference"] is True

        # the run is the CLIP text feature of "<instruction> in the rain" vs the images, reference excluded
        encoder = get_model(f"hf-clip:{models['clip']}")
        want = expected_scores(encoder, task, [f"{q.item.text} in the rain" for q in task.queries])
        got = check_run(tmp_path / "out", task, want)
        assert all(q.reference_id not in row for q, row in zip(task.queries, got, strict=True))

        # a rerun (recomputed) asks the LLM nothing and captions nothing: every artifact is reused
        server.requests.clear()
        again = run_eval(cfg, "cirr", data["cirr"], tmp_path / "out", tmp_path / "cache", "--overwrite")
        assert server.requests == []
        assert "ref_caption" not in again["retrieval"]["cost"]
        assert again["encoding"]["artifacts"]["edited_caption"]["reused"] == nq
        check_run(tmp_path / "out", task, want)


def test_cirevl_circo_sends_the_relative_caption_alone(
    models: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    task = get_task("circo", data_dir=data["circo"])
    with FakeChatServer(responder) as server:
        cfg = write_config(tmp_path / "c.yaml", models, server.url)
        result = run_eval(cfg, "circo", data["circo"], tmp_path / "out", tmp_path / "cache")
        sent = sorted(instruction_of(b) for b in server.requests)
    assert sent == sorted(q.meta["relative_caption"] for q in task.queries)
    assert not any(q.meta["shared_concept"] in s for q in task.queries for s in sent)
    assert result["protocol"]["method"]["rewrite_prompt"]["id"] == "cirevl-structural"
    encoder = get_model(f"hf-clip:{models['clip']}")
    check_run(
        tmp_path / "out",
        task,
        expected_scores(encoder, task, [f"{q.item.text} in the rain" for q in task.queries]),
    )
    assert "mAP@10" in result["scores"]["overall"]["overall"]


def test_cirevl_fashioniq_c1_and_c2_per_category_gallery(
    models: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    task = get_task("fashioniq", data_dir=data["fashioniq"], protocol="c1-and-c2")
    with FakeChatServer(responder) as server:
        cfg = write_config(tmp_path / "f.yaml", models, server.url)
        run_eval(
            cfg,
            "fashioniq",
            data["fashioniq"],
            tmp_path / "out",
            tmp_path / "cache",
            "--protocol",
            "c1-and-c2",
        )
        bodies = list(server.requests)
    assert all(request_text(b).startswith(BUILTIN["cirevl-structural-fashion"].text) for b in bodies)
    assert sorted(instruction_of(b) for b in bodies) == sorted(q.item.text or "" for q in task.queries)
    assert all(" and " in instruction_of(b) for b in bodies)
    encoder = get_model(f"hf-clip:{models['clip']}")
    got = check_run(
        tmp_path / "out",
        task,
        expected_scores(encoder, task, [f"{q.item.text} in the rain" for q in task.queries]),
    )
    for q, row in zip(task.queries, got, strict=True):  # each query searched in its own category
        assert set(row) <= set(task.galleries[q.gallery])


def test_prompt_file_replaces_the_prompt_and_its_hash_is_recorded(
    models: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    released = tmp_path / "released_prompt.txt"
    released.write_text("A RELEASED PROMPT TEXT\nwith two lines\n")
    with FakeChatServer(responder) as server:
        cfg = write_config(tmp_path / "p.yaml", models, server.url)
        result = run_eval(
            cfg,
            "cirr",
            data["cirr"],
            tmp_path / "out",
            tmp_path / "cache",
            "--prompt-file",
            f"rewrite={released}",
        )
        assert all(
            request_text(b).startswith("A RELEASED PROMPT TEXT\nwith two lines\nImage Content: ")
            for b in server.requests
        )
    import hashlib

    rec = result["protocol"]["method"]["rewrite_prompt"]
    assert rec["id"] == "file:released_prompt.txt" and rec["source"] == str(released)
    assert rec["sha256"] == hashlib.sha256(b"A RELEASED PROMPT TEXT\nwith two lines").hexdigest()


def test_imported_rewrites_ask_no_model_and_record_provenance(
    models: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    task = get_task("cirr", data_dir=data["cirr"])
    mods = {q.id: f"{q.item.text} at night" for q in task.queries}
    (tmp_path / "mods.json").write_text(json.dumps(mods))
    cfg = {
        "method": "cirevl",
        "components": {"encoder": f"hf-clip:{models['clip']}"},
        "imports": {"rewrites": {"file": "mods.json", "provenance": "someone/repo@abc mods.json"}},
    }
    (tmp_path / "imp.yaml").write_text(json.dumps(cfg))
    result = run_eval(tmp_path / "imp.yaml", "cirr", data["cirr"], tmp_path / "out", tmp_path / "cache")
    imp = result["retrieval"]["retriever"]["fingerprint"]["imports"]["rewrites"]
    assert imp["provenance"] == "someone/repo@abc mods.json" and imp["items"] == len(task.queries)
    assert "edited_caption" not in result["retrieval"]["cost"]  # nothing generated
    encoder = get_model(f"hf-clip:{models['clip']}")
    check_run(tmp_path / "out", task, expected_scores(encoder, task, [mods[q.id] for q in task.queries]))
    # an import without an item of the task is refused naming the file and the query
    del mods[task.queries[3].id]
    (tmp_path / "mods.json").write_text(json.dumps(mods))
    res = runner.invoke(
        app,
        [
            "eval",
            "--method",
            str(tmp_path / "imp.yaml"),
            "--task",
            "cirr",
            "--data-dir",
            str(data["cirr"]),
            "-o",
            str(tmp_path / "out2"),
            "--no-cache",
            "-q",
        ],
    )
    assert res.exit_code == 2 and "mods.json" in res.output and task.queries[3].id in res.output
    assert not (tmp_path / "out2" / "result.json").exists()


def test_a_reply_without_the_marker_falls_back_to_the_instruction(
    models: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    def no_marker(body: dict[str, Any]) -> str:
        return "I cannot do that."

    task = get_task("cirr", data_dir=data["cirr"])
    with FakeChatServer(no_marker) as server:
        cfg = write_config(tmp_path / "m.yaml", models, server.url)
        result = run_eval(cfg, "cirr", data["cirr"], tmp_path / "out", tmp_path / "cache")
    assert result["retrieval"]["cost"]["edited_caption"]["parse_fallbacks"] == len(task.queries)
    encoder = get_model(f"hf-clip:{models['clip']}")
    check_run(
        tmp_path / "out", task, expected_scores(encoder, task, [q.item.text or "" for q in task.queries])
    )


@pytest.mark.parametrize(
    "cfg, needle",
    [
        ({"method": "cirevl", "components": {"encoder": "os:system"}}, "os:system"),
        ({"method": "cirevl", "components": {"encodr": "x"}}, "components.encodr"),
        ({"method": "cirvel"}, "did you mean 'cirevl'"),
        (
            {"method": "cirevl", "prompts": {"caption": "nope"}, "components": {"encoder": "random"}},
            "prompts.caption",
        ),
        (
            {"method": "cirevl", "components": {"encoder": "random", "rewriter": {"backend": "magic"}}},
            "components.rewriter.backend",
        ),
    ],
)
def test_bad_method_configs_are_refused_in_one_line(
    tmp_path: Path, data: dict[str, Path], cfg: dict[str, Any], needle: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(cfg))
    res = runner.invoke(
        app,
        [
            "eval",
            "--method",
            str(path),
            "--task",
            "cirr",
            "--data-dir",
            str(data["cirr"]),
            "-o",
            str(tmp_path / "out"),
            "-q",
        ],
    )
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_a_config_cannot_run_code(tmp_path: Path, data: dict[str, Path]) -> None:
    path = tmp_path / "evil.yaml"
    marker = tmp_path / "ran"
    path.write_text(f"method: !!python/object/apply:os.system ['touch {marker}']\n")
    res = runner.invoke(
        app, ["eval", "--method", str(path), "--task", "cirr", "--data-dir", str(data["cirr"]), "-q"]
    )
    assert res.exit_code == 2 and "not valid YAML" in res.output and not marker.exists()


def test_cirbench_methods_lists_the_shipped_configs() -> None:
    res = runner.invoke(app, ["methods", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)["methods"]}
    assert {"cirevl", "ldre"} <= set(rows)
    assert rows["ldre"]["cost"]["per_query"].startswith("15 captions + 15 LMM calls")
    assert rows["cirevl"]["components"]["encoder"].startswith("open_clip:")
    res = runner.invoke(app, ["eval", "--method", "cirvl", "--task", "cirr"])
    assert res.exit_code == 2 and "did you mean 'cirevl'" in res.output
