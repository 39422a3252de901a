"""LDRE through `cirbench eval --method`: n captions per reference, one rewrite per caption, the mean and the
adaptive ensembles checked against scores computed here, the released CIRCO file format imported, and a run
killed during generation that resumes asking the loopback server only for what was not finished."""

from __future__ import annotations

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
from typer.testing import CliRunner

from cirbench.cli import app
from cirbench.core.types import Item
from cirbench.models.registry import get_model
from cirbench.retrieval.encode import encode_items
from cirbench.retrieval.methods.ldre import adaptive_weights
from cirbench.retrieval.methods.prompts import BUILTIN
from cirbench.tasks.registry import get_task
from tests.helpers.edit_pipelines import FakeChatServer, Reply, request_text
from tests.helpers.tiny import build_tiny_blip2_opt, build_tiny_clip
from tests.task_fixtures import WRITERS

runner = CliRunner()
N = 3


def fields(body: dict[str, Any]) -> tuple[str, str]:
    text = request_text(body)
    cap = re.findall(r"^Image Content: (.*)$", text, flags=re.M)[-1]
    ins = re.findall(r"^Instruction: (.*)$", text, flags=re.M)[-1]
    return cap, ins


def responder(body: dict[str, Any]) -> str:
    cap, ins = fields(body)
    return f"Edited Description: {cap} that {ins}"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ldre")
    return {
        "clip": build_tiny_clip(root / "clip"),
        "blip2": build_tiny_blip2_opt(root / "blip2"),
        "circo": WRITERS["circo"](root / "circo"),
        "mini": WRITERS["synthetic-mini"](root / "mini"),
    }


def config(path: Path, env: dict[str, Any], url: str | None, **extra: Any) -> Path:
    comps: dict[str, Any] = {
        "encoder": f"hf-clip:{env['clip']}",
        "captioner": {"kind": "blip2", "model": str(env["blip2"])},
    }
    if url is not None:
        comps["rewriter"] = {
            "backend": "openai",
            "model": "fake-llm",
            "base_url": url,
            "api_key_env": None,
            "max_retries": 0,
        }
    cfg = {
        "method": "ldre",
        "components": comps,
        "decoding": {"caption": {"n": N, "top_p": 0.9, "max_tokens": 6}},
        **extra,
    }
    path.write_text(json.dumps(cfg))
    return path


def run_eval(cfg: Path, task: str, data: Path, out: Path, *extra: str) -> dict[str, Any]:
    res = runner.invoke(
        app,
        [
            "eval",
            "--method",
            str(cfg),
            "--task",
            task,
            "--data-dir",
            str(data),
            "-o",
            str(out),
            "--bootstrap",
            "0",
            "-q",
            *extra,
        ],
    )
    assert res.exit_code == 0, res.output
    return dict(json.loads((out / "result.json").read_text()))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def texts_features(encoder: Any, texts: list[str]) -> np.ndarray:
    vecs, _ = encode_items(
        encoder, [Item(f"t{i}", text=t) for i, t in enumerate(texts)], role="query", progress=False
    )
    return np.asarray(vecs, dtype=np.float64)


def check_scores(out: Path, task: Any, qv: np.ndarray, gv: np.ndarray, k: int = 10) -> None:
    """The run's top-k are the top-k of qv @ gv.T (the reference excluded where the protocol says)."""
    table = pd.read_parquet(out / "run.parquet")
    by_q = {r.query_id: (list(r.ranked_ids)[:k], list(r.scores)[:k]) for r in table.itertuples()}
    pos = task.corpus_positions
    for qi, q in enumerate(task.queries):
        s = qv[qi] @ gv.T
        if task.protocol.exclude_reference and q.reference_id in pos:
            s[pos[q.reference_id]] = -np.inf
        ids, scores = by_q[q.id]
        np.testing.assert_allclose(scores, np.sort(s[np.isfinite(s)])[::-1][:k], atol=1e-5)
        np.testing.assert_allclose([s[pos[c]] for c in ids], scores, atol=1e-5)


def test_adaptive_weights_by_hand() -> None:
    # one query, two caption slots, a 2-d gallery of three items, top-1 drop per query
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    raw = np.array([[[1.0, 0.0], [0.0, 1.0]]])  # b_0, b_1
    edited = np.array([[[0.0, 1.0], [0.0, 1.0]]])  # g_0, g_1
    # slot 0: <b0,x> = (1, 0, .6), <g0,x> = (0, 1, .8): drops (1, 0, 0): top-1 sum 1.0
    # slot 1: b1 == g1: no drop: 0.0
    # softmax((1, 0) / 1 / 0.5) = (e^2, 1) / (e^2 + 1)
    w = adaptive_weights(edited, raw, gallery, topk=1, temperature=0.5)
    np.testing.assert_allclose(w, [np.e**2 / (np.e**2 + 1), 1 / (np.e**2 + 1)])
    # top-2 adds the second-largest drop (0) and nothing changes; no drop anywhere: uniform
    np.testing.assert_allclose(adaptive_weights(edited, raw, gallery, topk=2, temperature=0.5), w)
    np.testing.assert_allclose(
        adaptive_weights(edited, edited, gallery, topk=5, temperature=0.04), [0.5, 0.5]
    )


def test_ldre_mean_with_imported_captions_on_synthetic_mini(env: dict[str, Any], tmp_path: Path) -> None:
    task = get_task("synthetic-mini", data_dir=env["mini"])
    caps = {q.id: [f"a plain picture {j} of item {i}" for j in range(N)] for i, q in enumerate(task.queries)}
    (tmp_path / "caps.json").write_text(json.dumps(caps))
    with FakeChatServer(responder) as server:
        cfg = config(
            tmp_path / "ldre-mean.yaml",
            env,
            server.url,
            options={"ensemble": "mean"},
            imports={"captions": {"file": "caps.json", "provenance": "made by this test"}},
        )
        result = run_eval(cfg, "synthetic-mini", env["mini"], tmp_path / "out")
        bodies = list(server.requests)
    # one rewrite per caption with LDRE's system message, the API-default temperature of the release
    assert len(bodies) == N * len(task.queries)
    assert {b["messages"][0]["content"] for b in bodies} == {BUILTIN["ldre-divergent"].system}
    assert {(b["temperature"], "seed" in b) for b in bodies} == {(1.0, True)}
    assert len({b["seed"] for b in bodies}) == len(bodies)  # a seed per (query, slot)
    assert result["retrieval"]["cost"]["edited_captions"]["lmm_calls"] == N * len(task.queries)
    assert result["protocol"]["method"]["ensemble"] == "mean"
    encoder = get_model(f"hf-clip:{env['clip']}")
    qv = np.stack(
        [
            unit(unit(texts_features(encoder, [f"{c} that {q.item.text}" for c in caps[q.id]])).mean(axis=0))
            for q in task.queries
        ]
    )
    gv, _ = encode_items(encoder, task.corpus, role="document", progress=False)
    check_scores(tmp_path / "out", task, qv, np.asarray(gv, dtype=np.float64))


def test_ldre_adaptive_on_circo_matches_the_formula(env: dict[str, Any], tmp_path: Path) -> None:
    task = get_task("circo", data_dir=env["circo"])
    caps = {
        q.id: [f"photo {j} of a {w}" for j, w in enumerate(("cat", "street", "table"))] for q in task.queries
    }
    (tmp_path / "caps.json").write_text(json.dumps(caps))
    with FakeChatServer(responder) as server:
        cfg = config(
            tmp_path / "ldre.yaml",
            env,
            server.url,  # ensemble: released = adaptive on CIRCO
            imports={"captions": {"file": "caps.json", "provenance": "made by this test"}},
        )
        result = run_eval(cfg, "circo", env["circo"], tmp_path / "out")
        assert len(server.requests) == N * len(task.queries)
    assert result["protocol"]["method"]["ensemble"] == "adaptive"
    encoder = get_model(f"hf-clip:{env['clip']}")
    gv = np.asarray(encode_items(encoder, task.corpus, role="document", progress=False)[0], dtype=np.float64)
    b = np.stack([texts_features(encoder, caps[q.id]) for q in task.queries])
    g = np.stack(
        [texts_features(encoder, [f"{c} that {q.item.text}" for c in caps[q.id]]) for q in task.queries]
    )
    # LDRE's weights, written out: the 5 largest drops per query, summed over all queries, per slot
    delta = np.array(
        [np.sort(np.maximum(0, b[:, i] @ gv.T - g[:, i] @ gv.T), axis=1)[:, -5:].sum() for i in range(N)]
    )
    z = np.exp(delta / delta.max() / 0.04 - (delta / delta.max() / 0.04).max())
    w = z / z.sum()
    np.testing.assert_allclose(result["encoding"]["ensemble"]["weights"], w, atol=1e-6)
    check_scores(tmp_path / "out", task, np.einsum("i,qid->qd", w, g), gv)


def test_ldre_imports_the_released_circo_file_format(env: dict[str, Any], tmp_path: Path) -> None:
    task = get_task("circo", data_dir=env["circo"])
    records = [
        {
            "id": int(q.id) if q.id.isdigit() else q.id,
            "relative_caption": q.item.text,
            "multi_caption_opt": [f"a {w} on a table" for w in ("cup", "cat", "box")],
            "multi_gpt-3.5_opt": [f"a {w} {q.item.text}" for w in ("cup", "cat", "box")],
        }
        for q in task.queries
    ]
    (tmp_path / "test_multi_gpt3-5.json").write_text(json.dumps(records))
    imp = {
        "file": "test_multi_gpt3-5.json",
        "provenance": "yzy-bupt/LDRE CIRCO/annotations/test_multi_gpt3-5.json",
        "id_field": "id",
    }
    cfg = config(
        tmp_path / "replay.yaml",
        env,
        None,
        imports={
            "captions": {**imp, "value_field": "multi_caption_opt"},
            "rewrites": {**imp, "value_field": "multi_gpt-3.5_opt"},
        },
    )
    result = run_eval(cfg, "circo", env["circo"], tmp_path / "out")
    cost = result["retrieval"]["cost"]
    assert "edited_captions" not in cost and "ref_captions" not in cost  # nothing generated
    assert result["encoding"]["artifacts"]["edited_captions"]["imported"]["provenance"].startswith("yzy-bupt")
    # a record without the field is refused naming the file, the record and the field
    del records[2]["multi_gpt-3.5_opt"]
    (tmp_path / "test_multi_gpt3-5.json").write_text(json.dumps(records))
    res = runner.invoke(
        app,
        [
            "eval",
            "--method",
            str(cfg),
            "--task",
            "circo",
            "--data-dir",
            str(env["circo"]),
            "-o",
            str(tmp_path / "out2"),
            "-q",
        ],
    )
    assert res.exit_code == 2 and "multi_gpt-3.5_opt" in res.output and "test_multi_gpt3-5.json" in res.output


def test_blip2_captions_are_sampled_per_item_seed_whatever_the_batch(
    env: dict[str, Any], tmp_path: Path
) -> None:
    task = get_task("circo", data_dir=env["circo"])
    refs = {q.reference_id for q in task.queries}
    sent: list[set[tuple[str, str]]] = []
    for batch in ("1", "4"):
        with FakeChatServer(responder) as server:
            cfg = config(tmp_path / f"b{batch}.yaml", env, server.url, options={"ensemble": "mean"})
            result = run_eval(
                cfg,
                "circo",
                env["circo"],
                tmp_path / f"out{batch}",
                "--batch-size",
                batch,
                "--cache-dir",
                str(tmp_path / f"cache{batch}"),
            )
            sent.append({fields(b) for b in server.requests})
        cost = result["retrieval"]["cost"]["ref_captions"]
        assert cost["captioner_calls"] == N * len(refs) and cost["captions"] == N * len(refs)
    assert sent[0] == sent[1]  # the same captions in batches of 1 and of 4: seeds are per item
    by_ins: dict[str, set[str]] = {}
    for cap, ins in sent[0]:
        by_ins.setdefault(ins, set()).add(cap)
    assert max(len(v) for v in by_ins.values()) > 1  # sampling gives different captions per slot


CHILD = """
import sys
from cirbench.cli import app
sys.argv = ["cirbench", "eval", "--method", sys.argv[1], "--task", "circo", "--data-dir", sys.argv[2],
            "-o", sys.argv[3], "--cache-dir", sys.argv[4], "--batch-size", "1", "--bootstrap", "0", "-q"]
app()
"""


def test_sigkill_during_rewrites_then_rerun_asks_only_for_what_is_missing(
    env: dict[str, Any], tmp_path: Path
) -> None:
    task = get_task("circo", data_dir=env["circo"])
    total = N * len(task.queries)
    caps = {q.id: [f"photo {j}" for j in range(N)] for q in task.queries}
    (tmp_path / "caps.json").write_text(json.dumps(caps))
    pyenv = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    kill_at = 5

    def slow(body: dict[str, Any]) -> Reply:
        return Reply(content=responder(body), delay=0.05 if len(first.requests) < kill_at else 30.0)

    with FakeChatServer(slow) as first:
        cfg = config(
            tmp_path / "k.yaml",
            env,
            first.url,
            options={"ensemble": "mean"},
            imports={"captions": {"file": "caps.json", "provenance": "test"}},
        )
        args = [str(cfg), str(env["circo"]), str(tmp_path / "out"), str(tmp_path / "cache")]
        child = subprocess.Popen([sys.executable, "-c", CHILD, *args], env=pyenv)
        try:
            deadline = time.monotonic() + 120
            while len(first.requests) < kill_at and time.monotonic() < deadline and child.poll() is None:
                time.sleep(0.02)
            time.sleep(0.2)
            assert child.poll() is None, "the run finished before it could be killed"
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait(timeout=30)
        asked_first = [fields(b) for b in first.requests]
    assert len(asked_first) == kill_at  # the last one was in flight when the process died
    assert not (tmp_path / "out" / "result.json").exists()
    with FakeChatServer(responder) as second:
        cfg = config(
            tmp_path / "k.yaml",
            env,
            second.url,
            options={"ensemble": "mean"},
            imports={"captions": {"file": "caps.json", "provenance": "test"}},
        )
        result = run_eval(
            cfg,
            "circo",
            env["circo"],
            tmp_path / "out",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--batch-size",
            "1",
        )
        asked_again = [fields(b) for b in second.requests]
    # nothing finished is asked twice, nothing is lost: only the in-flight one is asked again
    assert len(asked_again) == total - (kill_at - 1)
    assert set(asked_again).isdisjoint(asked_first[: kill_at - 1])
    rep = result["encoding"]["artifacts"]["edited_captions"]
    assert rep["reused"] == kill_at - 1 and rep["generated"] == total - (kill_at - 1)
    assert not list((tmp_path / "cache").rglob("*.tmp"))
