"""SoFT, the full method: CIReVL + vision-LMM constraints + the soft filter.

A hand-made task with a vector-table encoder checks the scores by hand. The end-to-end runs go through
`cirbench eval --method` with a tiny CLIP and a tiny BLIP-2 saved and loaded through their real paths and a
chat-completions server on the loopback interface; their expected rankings are computed here from the
encoder and the texts the server answered, with SoFT's formula written out, not with the method's code.
"""

from __future__ import annotations

import io
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
from cirbench.core.types import Item, Protocol, Query, Task, TaskMetadata
from cirbench.evaluation import EvalOptions, evaluate
from cirbench.models.base import Batch, ModelSpec
from cirbench.models.registry import get_model
from cirbench.retrieval.encode import encode_items
from cirbench.retrieval.methods.artifacts import ImportedArtifacts
from cirbench.retrieval.methods.prompts import BUILTIN
from cirbench.retrieval.methods.soft import SoFT
from cirbench.retrieval.rerank.soft import import_constraints
from cirbench.tasks.registry import get_task
from tests.helpers.edit_pipelines import FakeChatServer, Reply, request_images, request_text
from tests.helpers.tiny import build_tiny_blip2_opt, build_tiny_clip
from tests.task_fixtures import WRITERS

runner = CliRunner()

# ------------------------------------------------------------------------------------------ by hand


class VectorTable:
    """Texts and gallery ids mapped to fixed vectors."""

    def __init__(self, texts: dict[str, list[float]], docs: dict[str, list[float]]) -> None:
        self.texts, self.docs = texts, docs
        self.spec = ModelSpec(name="table", id="test/table", modalities=("text", "image"))
        self.needs_images = False
        self.vectors_by_id = True  # the gallery images are the same bytes; their vectors are per id

    def fingerprint(self) -> dict[str, Any]:
        return {"model": "table"}

    def encode(self, batch: Batch, *, role: str, instruction: str | None = None) -> np.ndarray:
        if role == "query":
            return np.array([self.texts[t or ""] for t in batch.texts], dtype=np.float32)
        return np.array([self.docs[it.id] for it in batch.items], dtype=np.float32)


def png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def hand_made(tmp_path: Path, **options: Any) -> tuple[list[str], list[float]]:
    """One query over gallery a, b, c, d (the unit axes). The edited description's vector (.8, .48, .36, 0)
    gives s = .8, .48, .36, 0; the prescriptive caption is c's axis (r = 0, 0, 1, 0) and the proscriptive
    one a's (p = 1, 0, 0, 0)."""
    img = png()
    corpus = [Item(x, image=img) for x in "abcd"]
    task = Task(TaskMetadata(name=options.pop("task_name", "toy")), "test",
                [Query("q1", Item("q1", image=img, text="make it blue"), relevant_ids=("c",),
                       reference_id="r")], corpus,
                protocol=Protocol(metrics=("R@1",), main_metric="R@1", top_k=4))
    enc = VectorTable({"an edited description": [0.8, 0.48, 0.36, 0.0], "want c": [0, 0, 1, 0],
                       "avoid a": [1, 0, 0, 0]},
                      {x: list(np.eye(4)[i]) for i, x in enumerate("abcd")})
    (tmp_path / "rewrites.json").write_text(json.dumps({"q1": "an edited description"}))
    (tmp_path / "cons.json").write_text(json.dumps(
        {"q1": {"attributes": {"keep": [], "add": ["c"], "remove": ["a"]},
                "queries": {"prescriptive_query": "want c", "proscriptive_query": "avoid a"}}}))
    method = SoFT(
        clip=enc,  # type: ignore[arg-type]
        imported_rewrites=ImportedArtifacts.load(tmp_path, "rewrites.json", provenance="hand-made"),
        imported_constraints=import_constraints(tmp_path, "cons.json", provenance="hand-made"),
        **options,
    )
    result = evaluate(None, task, retriever=method, output=tmp_path / "out",
                      options=EvalOptions(top_k=4, use_cache=False, progress=False, n_bootstrap=0,
                                          overwrite=True))
    row = pd.read_parquet(tmp_path / "out" / "run.parquet").iloc[0]
    assert result.retrieval["retriever"]["fingerprint"]["imports"]["constraints"]["provenance"] == "hand-made"
    return list(row.ranked_ids), [round(float(x), 6) for x in row.scores]


@pytest.mark.parametrize(("options", "ids", "scores"), [
    # λ = 1: a .8(1+0-1)/2 = 0, b .48(1+0-0)/2 = .24, c .36(1+1-0)/2 = .36, d 0; a before d (base order)
    ({}, ["c", "b", "a", "d"], [0.36, 0.24, 0.0, 0.0]),
    # λ = .75: a .25·.8 + 0 = .2, b .25·.48 + .75·.24 = .30, c .25·.36 + .75·.36 = .36, d 0
    ({"lam": 0.75}, ["c", "b", "a", "d"], [0.36, 0.30, 0.2, 0.0]),
    # depth 2: only a and b are re-ranked (b .24, a 0); c and d follow with their base scores
    ({"depth": 2}, ["b", "a", "c", "d"], [0.24, 0.0, 0.36, 0.0]),
    # reward: s·r: c .36, the rest 0 in base order
    ({"mode": "reward"}, ["c", "a", "b", "d"], [0.36, 0.0, 0.0, 0.0]),
    # the released code's behaviour: no filter outside FashionIQ, the CIReVL run as it is
    ({"filter_tasks": "fashioniq"}, ["a", "b", "c", "d"], [0.8, 0.48, 0.36, 0.0]),
    ({"filter_tasks": "fashioniq", "task_name": "fashioniq"}, ["c", "b", "a", "d"], [0.36, 0.24, 0.0, 0.0]),
])
def test_hand_computed_scores(tmp_path: Path, options: dict[str, Any], ids: list[str],
                              scores: list[float]) -> None:
    got_ids, got_scores = hand_made(tmp_path, **options)
    assert got_ids == ids
    np.testing.assert_allclose(got_scores, scores, atol=1e-6)


# ------------------------------------------------------------------------------------------ end to end


def instruction_of(body: dict[str, Any]) -> str:
    text = request_text(body)
    found = re.findall(r'^Modification text: "(.*)"$', text, flags=re.M)
    return str(found[-1] if found else re.findall(r"^Instruction: (.*)$", text, flags=re.M)[-1])


def is_constraint_call(body: dict[str, Any]) -> bool:
    return "prescriptive_query" in request_text(body)


def pres(ins: str) -> str:
    return f"a photo where {ins}"


def pros(ins: str) -> str:
    return f"a dull picture of {ins.split()[-1]}"


def responder(body: dict[str, Any]) -> str:
    ins = instruction_of(body)
    if is_constraint_call(body):
        obj = {"attributes": {"keep": ["thing"], "add": [ins], "remove": ["x"]},
               "queries": {"prescriptive_query": pres(ins), "proscriptive_query": pros(ins)}}
        return "Here it is:\n```json\n" + json.dumps(obj, indent=1) + "\n```"  # nested, fenced, chatty
    return f"Edited Description: {ins} in the rain"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("soft")
    out = {"clip": build_tiny_clip(root / "clip"), "blip2": build_tiny_blip2_opt(root / "blip2")}
    for name in ("cirr", "circo", "fashioniq", "synthetic-mini"):
        out[name] = WRITERS[name](root / name)
    return out


def write_config(path: Path, env: dict[str, Path], url: str, *, task: Any = None, **extra: Any) -> Path:
    """A soft config on the loopback server; with `task`, CIReVL's rewrites ("<instruction> in the rain")
    come from an imported file instead of the captioner and the rewriter (cheaper; CIReVL has its tests)."""
    lmm = {"backend": "openai", "model": "fake-vlm", "base_url": url, "api_key_env": None, "max_retries": 0}
    comps: dict[str, Any] = {"encoder": f"hf-clip:{env['clip']}", "constrainer": lmm}
    if task is None:
        comps["captioner"] = {"kind": "blip2", "model": str(env["blip2"])}
        comps["rewriter"] = {**lmm, "model": "fake-llm"}
    else:
        mods = {q.id: f"{q.item.text} in the rain" for q in task.queries}
        (path.parent / "mods.json").write_text(json.dumps(mods))
        extra.setdefault("imports", {})["rewrites"] = {"file": "mods.json", "provenance": "test rewrites"}
    cfg = {"method": "soft", "components": comps, "decoding": {"caption": {"max_tokens": 6}}, **extra}
    path.write_text(json.dumps(cfg))
    return path


def ident(body: dict[str, Any]) -> tuple[str, int]:
    """Which query a constraint call is for: its modification text and its reference image."""
    parts = body["messages"][-1]["content"]
    return instruction_of(body), hash(next(p["image_url"]["url"] for p in parts if p["type"] == "image_url"))


def run_eval(cfg: Path, task: str, data_dir: Path, out: Path, cache: Path, *extra: str) -> Any:
    res = runner.invoke(app, ["eval", "--method", str(cfg), "--task", task, "--data-dir", str(data_dir),
                              "-o", str(out), "--cache-dir", str(cache), "--bootstrap", "0", "-q", *extra])
    assert res.exit_code == 0, res.output
    return json.loads((out / "result.json").read_text())


def vectors(encoder: Any, texts: list[str]) -> np.ndarray:
    v, _ = encode_items(encoder, [Item(f"t{i}", text=t) for i, t in enumerate(texts)], role="query",
                        progress=False)
    return np.asarray(v, dtype=np.float64)


def expected_soft(encoder: Any, task: Any, lam: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(final, s), queries x corpus, -inf where the protocol forbids an item: SoFT's formula over the whole
    gallery, s from the rewrite "<instruction> in the rain", r and p from the captions the server wrote."""
    ins = [q.item.text or "" for q in task.queries]
    gv, _ = encode_items(encoder, task.corpus, role="document", progress=False)
    gv = np.asarray(gv, dtype=np.float64)
    s = vectors(encoder, [f"{t} in the rain" for t in ins]) @ gv.T
    r = vectors(encoder, [pres(t) for t in ins]) @ gv.T
    p = vectors(encoder, [pros(t) for t in ins]) @ gv.T
    final = (1 - lam) * s + lam * s * (r + 1 - p) / 2
    pos = task.corpus_positions
    for qi, q in enumerate(task.queries):
        banned = []
        if q.gallery is not None:
            allowed = {pos[c] for c in task.galleries[q.gallery]}
            banned += [i for i in range(len(task.corpus)) if i not in allowed]
        if task.protocol.exclude_reference and q.reference_id in pos:
            banned.append(pos[q.reference_id])
        final[qi, banned] = -np.inf
        s[qi, banned] = -np.inf
    return final, s


def check_run(out: Path, task: Any, expected: np.ndarray, k: int = 10) -> pd.DataFrame:
    """The stored run's top-k is the top-k of `expected` (up to ties of the tiny CLIP)."""
    table = pd.read_parquet(out / "run.parquet")
    pos = task.corpus_positions
    for qi, row in enumerate(table.itertuples()):
        assert row.query_id == task.queries[qi].id
        ids, scores = list(row.ranked_ids)[:k], list(row.scores)[:k]
        best = np.sort(expected[qi][np.isfinite(expected[qi])])[::-1][:k]
        np.testing.assert_allclose(scores, best, atol=2e-5)
        np.testing.assert_allclose([expected[qi, pos[c]] for c in ids], scores, atol=2e-5)
    return table


def test_soft_on_cirr_end_to_end_subset_cost_and_resume(env: dict[str, Path], tmp_path: Path) -> None:
    task = get_task("cirr", data_dir=env["cirr"])
    nq = len(task.queries)
    with FakeChatServer(responder) as server:
        cfg = write_config(tmp_path / "my-soft.yaml", env, server.url)
        result = run_eval(cfg, "cirr", env["cirr"], tmp_path / "out", tmp_path / "cache")
        bodies = list(server.requests)
        cons = [b for b in bodies if is_constraint_call(b)]
        # one vision call per query: the prompt with the modification text, then the reference image
        assert len(cons) == nq and len(bodies) == 2 * nq
        assert all(request_images(b) == 1 for b in cons)
        assert all(b["messages"][-1]["content"][-1]["type"] == "image_url" for b in cons)
        assert {(b["temperature"], b["max_tokens"]) for b in cons} == {(0.0, 512)}
        assert sorted(instruction_of(b) for b in cons) == sorted(q.item.text or "" for q in task.queries)
        head = BUILTIN["soft-constraints"].text.split("{mod_text}")[0]
        assert all(request_text(b).startswith(head) for b in cons)

        cost = result["retrieval"]["cost"]
        assert cost["constraints"]["lmm_calls"] == nq and cost["edited_caption"]["lmm_calls"] == nq
        assert cost["per_query"]["lmm_calls"] == pytest.approx(2.0)
        assert "parse_fallbacks" not in cost["constraints"]
        assert cost["soft_filter"]["seconds"] >= 0
        fp = result["retrieval"]["retriever"]["fingerprint"]
        assert fp["method"] == "soft" and fp["constrainer"]["host"] == "127.0.0.1"
        assert fp["prompts"]["constraints"]["sha256"] == BUILTIN["soft-constraints"].sha256
        assert fp["filter"] == {"lambda": 1.0, "mode": "soft", "depth": "all", "filter_tasks": "all",
                                "allow_missing": False}
        sf = result["protocol"]["method"]["soft_filter"]
        assert sf["applied"] is True and sf["depth"] == len(task.corpus) and sf["lambda"] == 1.0
        assert result["protocol"]["method"]["seeds"]["base_seed"] == 0

        encoder = get_model(f"hf-clip:{env['clip']}")
        final, s = expected_soft(encoder, task)
        table = check_run(tmp_path / "out", task, final)
        assert not np.allclose(final[np.isfinite(final)], s[np.isfinite(s)])  # the filter did something
        # the subset ranking (R_s) is re-ranked too, within each query's candidates
        pos = task.corpus_positions
        for qi, row in enumerate(table.itertuples()):
            cands = [c for c in task.queries[qi].candidate_ids or () if c != task.queries[qi].reference_id]
            want = sorted((final[qi, pos[c]] for c in cands), reverse=True)[:3]  # R_s@1..3: depth 3
            np.testing.assert_allclose(list(row.subset_scores), want, atol=2e-5)
            np.testing.assert_allclose([final[qi, pos[c]] for c in row.subset_ranked_ids], want, atol=2e-5)

        # a rerun asks nothing: captions, rewrites and constraints are all reused
        server.requests.clear()
        again = run_eval(cfg, "cirr", env["cirr"], tmp_path / "out", tmp_path / "cache", "--overwrite")
        assert server.requests == []
        assert again["encoding"]["artifacts"]["constraints"]["reused"] == nq
        check_run(tmp_path / "out", task, final)


@pytest.mark.parametrize("name", ["circo", "fashioniq", "synthetic-mini"])
def test_soft_on_every_task(env: dict[str, Path], tmp_path: Path, name: str) -> None:
    protocol = ["--protocol", "c1-and-c2"] if name == "fashioniq" else []
    task = get_task(name, data_dir=env[name], **({"protocol": "c1-and-c2"} if protocol else {}))
    with FakeChatServer(responder) as server:
        cfg = write_config(tmp_path / "s.yaml", env, server.url, task=task)
        result = run_eval(cfg, name, env[name], tmp_path / "out", tmp_path / "cache", *protocol)
        n_cons = sum(is_constraint_call(b) for b in server.requests)
    assert n_cons == len(task.queries) and result["protocol"]["method"]["soft_filter"]["applied"] is True
    encoder = get_model(f"hf-clip:{env['clip']}")
    table = check_run(tmp_path / "out", task, expected_soft(encoder, task)[0])
    if name == "fashioniq":  # each query ranked within its own category's gallery
        for q, row in zip(task.queries, table.itertuples(), strict=True):
            assert set(row.ranked_ids) <= set(task.galleries[q.gallery])


def test_released_behaviour_filters_fashioniq_only(env: dict[str, Path], tmp_path: Path) -> None:
    task = get_task("circo", data_dir=env["circo"])
    with FakeChatServer(responder) as server:
        cfg = write_config(tmp_path / "r.yaml", env, server.url, task=task,
                           options={"filter_tasks": "fashioniq"})
        result = run_eval(cfg, "circo", env["circo"], tmp_path / "out", tmp_path / "cache")
        assert not any(is_constraint_call(b) for b in server.requests)  # no constraint is even asked for
    assert result["protocol"]["method"]["soft_filter"]["applied"] is False
    assert "constraints" not in result["retrieval"]["cost"]
    encoder = get_model(f"hf-clip:{env['clip']}")
    check_run(tmp_path / "out", task, expected_soft(encoder, task)[1])  # CIReVL's own scores


def test_unparseable_replies_fall_back_to_the_base_order(env: dict[str, Path], tmp_path: Path) -> None:
    def broken(body: dict[str, Any]) -> str:
        return "I refuse {to answer" if is_constraint_call(body) else responder(body)

    task = get_task("cirr", data_dir=env["cirr"])
    with FakeChatServer(broken) as server:
        result = run_eval(write_config(tmp_path / "b.yaml", env, server.url, task=task), "cirr", env["cirr"],
                          tmp_path / "out", tmp_path / "cache")
    assert result["retrieval"]["cost"]["constraints"]["parse_fallbacks"] == len(task.queries)
    encoder = get_model(f"hf-clip:{env['clip']}")
    _, s = expected_soft(encoder, task)
    check_run(tmp_path / "out", task, s / 2)  # r = p = 0: s(1 + 0 - 0)/2, the base order


def test_imported_constraints_need_no_lmm_and_a_missing_query_is_refused(
    env: dict[str, Path], tmp_path: Path
) -> None:
    task = get_task("cirr", data_dir=env["cirr"])
    ins = {q.id: q.item.text or "" for q in task.queries}
    released = [{"query_id": q, "attributes": {"keep": [], "add": [t], "remove": []},
                 "queries": {"prescriptive_query": pres(t), "proscriptive_query": pros(t)}}
                for q, t in ins.items()]
    (tmp_path / "cons.jsonl").write_text("\n".join(json.dumps(r) for r in released) + "\n")
    (tmp_path / "mods.json").write_text(json.dumps({q: f"{t} in the rain" for q, t in ins.items()}))
    cfg = {"method": "soft", "components": {"encoder": f"hf-clip:{env['clip']}"},
           "imports": {"rewrites": {"file": "mods.json", "provenance": "test mods"},
                       "constraints": {"file": "cons.jsonl", "provenance": "jjungyujin/SoFT@3db620a x"}}}
    (tmp_path / "imp.yaml").write_text(json.dumps(cfg))
    result = run_eval(tmp_path / "imp.yaml", "cirr", env["cirr"], tmp_path / "out", tmp_path / "cache")
    imp = result["retrieval"]["retriever"]["fingerprint"]["imports"]["constraints"]
    assert imp["provenance"] == "jjungyujin/SoFT@3db620a x" and len(imp["sha256"]) == 64
    assert "constraints" not in result["retrieval"]["cost"]
    encoder = get_model(f"hf-clip:{env['clip']}")
    check_run(tmp_path / "out", task, expected_soft(encoder, task)[0])
    # a query the file lacks: one line naming the file and the query, nothing written
    (tmp_path / "cons.jsonl").write_text("\n".join(json.dumps(r) for r in released[1:]) + "\n")
    res = runner.invoke(app, ["eval", "--method", str(tmp_path / "imp.yaml"), "--task", "cirr",
                              "--data-dir", str(env["cirr"]), "-o", str(tmp_path / "out2"), "--no-cache",
                              "-q"])
    assert res.exit_code == 2 and "cons.jsonl" in res.output and task.queries[0].id in res.output
    assert "Traceback" not in res.output and not (tmp_path / "out2" / "result.json").exists()


CHILD = """
import sys
from cirbench.cli import app
sys.argv = ["cirbench", "eval", "--method", sys.argv[1], "--task", "cirr", "--data-dir", sys.argv[2],
            "-o", sys.argv[3], "--cache-dir", sys.argv[4], "--batch-size", "1", "--bootstrap", "0", "-q"]
app()
"""


def test_sigkill_during_constraints_then_rerun_asks_only_for_what_is_missing(
    env: dict[str, Path], tmp_path: Path
) -> None:
    task = get_task("cirr", data_dir=env["cirr"])
    nq = len(task.queries)
    kill_at = 3

    def slow(body: dict[str, Any]) -> Reply:
        return Reply(content=responder(body), delay=0.05 if len(first.requests) < kill_at else 30.0)

    pyenv = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with FakeChatServer(slow) as first:
        cfg = write_config(tmp_path / "k.yaml", env, first.url, task=task)
        args = [str(cfg), str(env["cirr"]), str(tmp_path / "out"), str(tmp_path / "cache")]
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
        asked_first = [ident(b) for b in first.requests]
    assert len(asked_first) == kill_at and not (tmp_path / "out" / "result.json").exists()
    parts = list((tmp_path / "cache" / "artifacts").glob("constraints-*/part-*.jsonl"))
    assert len(parts) == 1  # the killed session's part: the batches that finished before the kill
    done_first = [json.loads(line)["id"] for line in parts[0].read_text().splitlines()]
    assert len(done_first) == kill_at - 1
    with FakeChatServer(responder) as second:
        cfg = write_config(tmp_path / "k.yaml", env, second.url, task=task)
        result = run_eval(cfg, "cirr", env["cirr"], tmp_path / "out", tmp_path / "cache", "--batch-size", "1")
        asked_again = [ident(b) for b in second.requests]
    # nothing finished is asked twice, nothing is lost: only the one in flight is asked again
    assert len(asked_again) == nq - (kill_at - 1)
    folder = tmp_path / "cache" / "artifacts"
    new_part = [p for p in folder.glob("constraints-*/part-*.jsonl") if p != parts[0]]
    done_again = [json.loads(line)["id"] for line in new_part[0].read_text().splitlines()]
    assert set(done_again).isdisjoint(done_first) and sorted(done_first + done_again) == sorted(
        q.id for q in task.queries)
    rep = result["encoding"]["artifacts"]["constraints"]
    assert rep["reused"] == kill_at - 1 and rep["generated"] == nq - (kill_at - 1)
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    encoder = get_model(f"hf-clip:{env['clip']}")
    check_run(tmp_path / "out", task, expected_soft(encoder, task)[0])


def test_methods_lists_soft_with_its_cost_and_bad_options_are_refused(tmp_path: Path) -> None:
    res = runner.invoke(app, ["methods", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)["methods"]}
    assert rows["soft"]["method"] == "soft" and "constrainer" in rows["soft"]["components"]
    assert rows["soft"]["cost"]["per_query"].startswith("1 caption + 2 LMM calls")
    for opt, needle in (("options.filter_tasks=fashion", "did you mean 'fashioniq'"),
                        ("options.depth=0", "depth"), ("options.lamda=1", "did you mean 'lambda'")):
        res = runner.invoke(app, ["eval", "--method", "soft", "--task", "cirr", "--method-option", opt])
        assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
