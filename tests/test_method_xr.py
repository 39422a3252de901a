"""XR end to end through `cirbench eval --method`: a tiny CLIP saved to disk and loaded through its real path,
every agent (captioner, reasoner, verifier, judge, evaluator) served by the loopback chat server with the
deterministic answers of tests.helpers.xr_chat, the CIRR / CIRCO / FashionIQ / synthetic-mini fixtures in
their released formats. Expected rankings are computed here, from the encoder and the answers the server
gives, with this file's own ranking code; the fusion and verification scores are checked against values
computed by hand."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cirbench.cli import app
from cirbench.core.run import Run
from cirbench.core.types import Item
from cirbench.models.registry import get_model
from cirbench.retrieval.encode import encode_items
from cirbench.retrieval.methods.prompts import BUILTIN
from cirbench.retrieval.methods.xr import (
    move_to_front,
    parse_imagined,
    parse_questions,
    parse_yes_no,
    reorder_head,
    stage1_scores,
    stage2_counts,
    valid_scores,
    verification_scores,
)
from cirbench.tasks.registry import get_task
from tests.helpers.edit_pipelines import FakeChatServer, request_text
from tests.helpers.tiny import build_tiny_clip
from tests.helpers.xr_chat import (
    caption_of,
    descriptions,
    judge_answer,
    kind_of,
    qa_answer,
    questions_of,
    rewrite_of,
    xr_answer,
)
from tests.task_fixtures import WRITERS

runner = CliRunner()
PROMPT_IDS = ("xr-caption", "xr-imagine-text", "xr-imagine-visual", "xr-rewrite", "xr-questions",
              "xr-verify", "xr-judge", "xr-pairwise")


# ------------------------------------------------------------------------------------------ hand-computed


def test_stage1_fusion_matches_hand_computed_values() -> None:
    # gallery images x1=(1,0), x2=(0,1), x3=(.6,.8); their caption features c1=(0,1), c2=c3=(1,0)
    gallery = {"image": np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]),
               "caption": np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])}
    e1, e2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    queries = {"v1": [np.stack([e1, e2])], "v2": [np.stack([e2])], "aug": [np.stack([e1, e2, e2])]}
    s = stage1_scores(queries, gallery, np.ones((1, 3), dtype=bool), tau=0.15, k=60)
    # v1: mean (.5,.5): x1 .85*.5 + .15*.5 = .5; x2 .5; x3 .85*.7 + .15*.5 = .67
    np.testing.assert_allclose(s["v1"][0], [0.5, 0.5, 0.67])
    # v2: (0,1): x1 .15*1 = .15; x2 .85; x3 .85*.8 = .68
    np.testing.assert_allclose(s["v2"][0], [0.15, 0.85, 0.68])
    # aug: mean (1/3, 2/3): x1 .85/3 + .15*2/3; x2 .85*2/3 + .15/3; x3 .85*(.2 + .8*2/3) + .15/3
    np.testing.assert_allclose(s["aug"][0], [0.383333333, 0.616666667, 0.673333333])
    # ranks v1: x3 1, x1 2, x2 3 (tie broken by position); v2: x2, x3, x1; aug: x3, x2, x1
    np.testing.assert_allclose(s["fused"][0], [1 / 62 + 1 / 63 + 1 / 63, 1 / 63 + 1 / 61 + 1 / 62,
                                               1 / 61 + 1 / 62 + 1 / 61])
    # x1 not allowed (the excluded reference): it is -inf everywhere and the others' ranks close up
    s = stage1_scores(queries, gallery, np.array([[False, True, True]]), tau=0.15, k=60)
    assert np.isneginf(s["fused"][0, 0]) and np.isneginf(s["v1"][0, 0])
    np.testing.assert_allclose(s["fused"][0, 1:], [1 / 62 + 1 / 61 + 1 / 62, 1 / 61 + 1 / 62 + 1 / 61])
    # tau = 1 is captions only: v2 on x1 = c1 . (0,1) = 1
    assert stage1_scores(queries, gallery, np.ones((1, 3), bool), tau=1.0, k=60)["v2"][0, 0] == 1.0


def test_stage2_score_and_order_match_hand_computed_values() -> None:
    head = Run(query_ids=["q"], corpus_ids=list("abcde"), indices=np.array([[3, 0, 4, 1, -1]]),
               scores=np.array([[0.9, 0.7, 0.5, 0.1, -np.inf]], dtype=np.float32))
    qa = np.array([[0, 2, 1, 2, 0]], dtype=float)
    cap = np.array([[1, 2, 2, 0, 0]], dtype=float)
    counts = stage2_counts(qa, cap)
    np.testing.assert_allclose(counts[0, :4], [0.5, 2.0, 1.5, 1.0])
    s1 = valid_scores(head)  # the pad takes the row's lowest real score: min-max over the 4 real ones
    final = verification_scores(s1, counts)
    # minmax(s1) = 1, .75, .5, 0 (the last of the head gets 0): x counts = .5, 1.5, .75, 0
    np.testing.assert_allclose(final[0, :4], [0.5, 1.5, 0.75, 0.0], rtol=1e-6)
    new = reorder_head(head, final)
    assert new.indices.tolist() == [[0, 4, 3, 1, -1]] and np.isneginf(new.scores[0, -1])
    assert stage2_counts(qa, None) is qa and stage2_counts(None, cap) is cap
    # stage 3: accepted ones first, each group in its current order
    moved = move_to_front(head, np.array([[False, True, False, True, False]]))
    assert moved.indices.tolist() == [[0, 1, 3, 4, -1]]


def test_parsers() -> None:
    assert parse_yes_no("Yes.") is True and parse_yes_no("no, it is not") is False
    assert parse_yes_no("ANSWER: No. Although yes, ...") is False and parse_yes_no("maybe") is None
    assert parse_yes_no("Yesterday") is None
    im = parse_imagined('ok {"operations": [["Addition", "a hat"]], "descriptions": ["a", " b  c "]}', "x")
    assert im.parsed and im.operations == (("Addition", "a hat"),) and im.descriptions == ("a", "b c")
    bad = parse_imagined("I cannot help", "add a hat")
    assert not bad.parsed and bad.descriptions == ("add a hat",)
    qs = parse_questions('[{"question": "Is it red?", "answer": "No"}, {"question": "", "answer": "yes"}]')
    assert qs is not None and [(q.text, q.expected) for q in qs] == [("Is it red?", False)]
    assert parse_questions("none") is None


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("xr-models") / "clip")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("xr-data")
    return {n: WRITERS[n](root / n) for n in ("cirr", "circo", "fashioniq", "synthetic-mini")}


def write_config(path: Path, clip: Path, url: str, **options: Any) -> Path:
    lmm = {"backend": "openai", "model": "fake-internvl", "base_url": url, "api_key_env": None}
    cfg = {"method": "xr",
           "components": {"encoder": f"hf-clip:{clip}", "captioner": {"kind": "lmm", "lmm": lmm},
                          "reasoner": lmm, "verifier": lmm},
           "options": options}
    path.write_text(json.dumps(cfg))
    return path


def eval_args(cfg: Path, task: str, data_dir: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["eval", "--method", str(cfg), "--task", task, "--data-dir", str(data_dir), "-o", str(out),
            "--cache-dir", str(cache), "--bootstrap", "0", "-q", *extra]


def run_eval(*args: Any) -> dict[str, Any]:
    res = runner.invoke(app, eval_args(*args))
    assert res.exit_code == 0, res.output
    return json.loads((Path(args[3]) / "result.json").read_text())


def _bytes(item: Item) -> bytes:
    return item.image if isinstance(item.image, bytes) else Path(str(item.image)).read_bytes()


def expected_ranking(task: Any, clip: Path, *, source: str = "aug", stage2: bool = True, top_k: int = 100,
                     num_questions: int = 0, depth: int = 100, exclude_reference: bool | None = None,
                     tau: float = 0.15) -> list[list[str]]:
    """Each query's ranked ids as XR must produce them, from the server's answers and the encoder alone."""
    enc = get_model(f"hf-clip:{clip}")

    def text_vecs(texts: list[str]) -> np.ndarray:
        v, _ = encode_items(enc, [Item(f"t{i}", text=t) for i, t in enumerate(texts)], role="query",
                            progress=False)
        return np.asarray(v, dtype=np.float64)

    caps = {it.id: caption_of(_bytes(it)) for it in task.corpus}
    gv, _ = encode_items(enc, task.corpus, role="document", progress=False)
    gv = np.asarray(gv, dtype=np.float64)
    cv = text_vecs([caps[it.id] for it in task.corpus])
    excl_ref = task.protocol.exclude_reference if exclude_reference is None else exclude_reference
    out = []
    for q in task.queries:
        ins = (q.item.text or "").strip() or "the same image"
        texts = {"v1": descriptions(ins), "v2": [rewrite_of(ins)]}
        texts["aug"] = texts["v1"] + texts["v2"]
        allowed = [p for p in range(len(task.corpus))
                   if (q.gallery is None or task.corpus[p].id in set(task.galleries[q.gallery]))
                   and task.corpus[p].id not in q.exclude_ids
                   and not (excl_ref and task.corpus[p].id == q.reference_id)]
        score, order = {}, {}
        for v, ts in texts.items():
            m = text_vecs(ts).mean(axis=0)
            s = {p: (1 - tau) * float(m @ gv[p]) + tau * float(m @ cv[p]) for p in allowed}
            score[v] = s
            order[v] = sorted(allowed, key=lambda p, s=s: (-s[p], p))
        rank = {v: {p: r + 1 for r, p in enumerate(order[v])} for v in ("v1", "v2", "aug")}
        score["fused"] = {p: sum(1 / (60 + rank[v][p]) for v in rank) for p in allowed}
        order["fused"] = sorted(allowed, key=lambda p: (-score["fused"][p], p))
        ranked = order[source][:depth]
        if stage2:
            head, s1 = ranked[:top_k], [score[source][p] for p in ranked[:top_k]]
            qs = questions_of(ins)
            qs = qs[:num_questions] if num_questions else qs
            lo, hi = min(s1), max(s1)
            final = []
            for p, s in zip(head, s1, strict=True):
                n_qa = sum(qa_answer(_bytes(task.corpus[p]), qt) == want for qt, want in qs)
                n_cap = sum(judge_answer(caps[task.corpus[p].id], qt) == want for qt, want in qs)
                final.append((0.5 * n_qa + 0.5 * n_cap) * ((s - lo) / (hi - lo) if hi > lo else 0.0))
            head = [head[i] for i in sorted(range(len(head)), key=lambda i: -final[i])]
            ranked = head + ranked[top_k:]
        out.append([task.corpus[p].id for p in ranked])
    return out


def same(task: Any, got: list[str], want: list[str]) -> bool:
    """Two rankings are the same up to the order of byte-identical images (the fixtures repeat some; their
    vectors differ in the last float32 bit with the batch they were encoded in, so their ties may go either
    way, and every agent answers them alike)."""
    pos = task.corpus_positions

    def content(ids: list[str]) -> list[bytes]:
        return [_bytes(task.corpus[pos[c]]) for c in ids]

    return content(got) == content(want)


def stored(out: Path) -> dict[str, list[str]]:
    table = pd.read_parquet(out / "run.parquet")
    return {r.query_id: list(r.ranked_ids) for r in table.itertuples()}


def kinds(server: FakeChatServer) -> collections.Counter[str]:
    return collections.Counter(kind_of(b) for b in server.requests)


def test_xr_on_cirr_end_to_end_cost_records_and_free_rerun(clip: Path, data: dict[str, Path],
                                                            tmp_path: Path) -> None:
    task = get_task("cirr", data_dir=data["cirr"])
    nq, ng = len(task.queries), len(task.corpus)
    with FakeChatServer(xr_answer) as server:
        cfg = write_config(tmp_path / "my-xr.yaml", clip, server.url, top_k=12, num_questions=2)
        result = run_eval(cfg, "cirr", data["cirr"], tmp_path / "out", tmp_path / "cache")
        calls = kinds(server)
        # one caption per gallery image (CIRR's references are gallery images: no extra caption); four
        # text-only LLM calls per query; a yes/no per (candidate, question) from each verifier
        assert calls["caption"] == ng
        assert calls["imagine_text"] == calls["imagine_visual"] == calls["rewrite"] == nq
        assert calls["questions"] == nq
        pairs = {(cid, qt) for q, row in zip(task.queries, expected_ranking(task, clip, stage2=False),
                                             strict=True)
                 for cid in row[:12] for qt, _ in questions_of(q.item.text or "the same image")[:2]}
        assert calls["verify"] == calls["judge"] == len(pairs) and "pairwise" not in calls
        assert all(b["temperature"] == 0.0 for b in server.requests)
        text_only = [b for b in server.requests if kind_of(b) in ("imagine_text", "rewrite", "judge")]
        assert all("image_url" not in json.dumps(b) for b in text_only)  # the reasoner never sees an image

        cost = result["retrieval"]["cost"]
        assert cost["gallery_caption"]["lmm_calls"] == ng and "ref_caption" not in cost
        assert cost["verify_qa"]["lmm_calls"] == len(pairs)
        assert cost["per_gallery_item"]["lmm_calls"] == pytest.approx(1.0)
        assert cost["per_gallery_item"]["image_encodes"] == pytest.approx(1.0)
        assert cost["per_query"]["lmm_calls"] == pytest.approx(4 + 2 * len(pairs) / nq)

        want = expected_ranking(task, clip, top_k=12, num_questions=2)
        got = stored(tmp_path / "out")
        for q, row in zip(task.queries, want, strict=True):
            assert same(task, got[q.id][:50], row[:50])
            assert q.reference_id not in got[q.id]  # the official protocol: reference excluded
        retr = result["retrieval"]
        assert [r["name"] for r in retr["rerankers"]] == ["xr-questions"] and "tail_rule" in retr
        fp = retr["retriever"]["fingerprint"]
        assert {fp["prompts"][s]["sha256"] for s in fp["prompts"]} == {BUILTIN[p].sha256 for p in PROMPT_IDS}
        assert fp["reasoner"]["host"] == "127.0.0.1" and fp["options"]["tau"] == 0.15
        method = result["protocol"]["method"]
        assert method["rrf_k"] == 60 and method["stage1_list_returned"] == "aug"
        assert method["seeds"]["base_seed"] == 0 and result["protocol"]["exclude_reference"] is True
        assert result["protocol"]["rerank"]["mode"] == "both"
        assert result["encoding"]["artifacts"]["verify_qa"]["generated"] == len(pairs)

        # a rerun asks nothing at all: every caption, imagination, question and answer is an artifact
        server.requests.clear()
        again = run_eval(cfg, "cirr", data["cirr"], tmp_path / "out", tmp_path / "cache", "--overwrite")
        assert server.requests == []
        assert not any("lmm_calls" in c for c in again["retrieval"]["cost"].values())
        assert again["encoding"]["artifacts"]["verify_caption"]["reused"] == len(pairs)
        assert stored(tmp_path / "out") == got


def test_xr_released_reference_kept_option(clip: Path, data: dict[str, Path], tmp_path: Path) -> None:
    task = get_task("cirr", data_dir=data["cirr"])
    with FakeChatServer(xr_answer) as server:
        cfg = write_config(tmp_path / "x.yaml", clip, server.url, stages="s1", exclude_reference="false")
        result = run_eval(cfg, "cirr", data["cirr"], tmp_path / "out", tmp_path / "cache")
    proto = result["protocol"]
    assert proto["exclude_reference"] is False and proto["name"].endswith("+xr-reference-kept")
    assert "NOT the official protocol" in proto["notes"]["reference"]
    want = expected_ranking(task, clip, source="fused", stage2=False, exclude_reference=False, depth=50)
    got = stored(tmp_path / "out")
    assert all(same(task, got[q.id], row) for q, row in zip(task.queries, want, strict=True))
    assert any(q.reference_id in got[q.id] for q in task.queries)
    table = pd.read_parquet(tmp_path / "out" / "run.parquet")  # the subset still drops it (as released)
    assert all(r.query_id and all(c != task.queries[i].reference_id for c in r.subset_ranked_ids)
               for i, r in enumerate(table.itertuples()))


@pytest.mark.parametrize("name, options, protocol", [
    ("circo", {"stages": "s1"}, None),
    ("fashioniq", {"top_k": 8, "num_questions": 1}, "c1-and-c2"),
    ("synthetic-mini", {"num_questions": 1, "s2_mode": "qa"}, None),
])
def test_xr_on_circo_fashioniq_and_synthetic_mini(clip: Path, data: dict[str, Path], tmp_path: Path,
                                                  name: str, options: dict[str, Any],
                                                  protocol: str | None) -> None:
    task = get_task(name, data_dir=data[name], protocol=protocol)
    extra = ("--protocol", protocol) if protocol else ()
    with FakeChatServer(xr_answer) as server:
        cfg = write_config(tmp_path / "x.yaml", clip, server.url, **options)
        result = run_eval(cfg, name, data[name], tmp_path / "out", tmp_path / "cache", *extra)
        calls = kinds(server)
    stage2 = options.get("stages") != "s1"
    top_k, nqs = int(options.get("top_k", 100)), int(options.get("num_questions", 0))
    if options.get("s2_mode") == "qa":  # the caption judge is off: the count is the image answers alone
        assert "judge" not in calls and calls["verify"] > 0
        want = expected_ranking_qa_only(task, clip, num_questions=nqs)
    else:
        want = expected_ranking(task, clip, source="aug" if stage2 else "fused", stage2=stage2, top_k=top_k,
                                num_questions=nqs, depth=100 if stage2 else 50)
    got = stored(tmp_path / "out")
    for q, row in zip(task.queries, want, strict=True):
        assert same(task, got[q.id], row[:len(got[q.id])])
        assert len(got[q.id]) == min(len(row), max(50, top_k) if stage2 else 50)  # the run's depth
        if q.gallery is not None:
            assert set(got[q.id]) <= set(task.galleries[q.gallery])
    refs_outside = {q.reference_id for q in task.queries} - set(task.corpus_positions)
    assert calls["caption"] == len(task.corpus) + len(refs_outside)
    assert result["retrieval"]["cost"]["per_gallery_item"]["lmm_calls"] == pytest.approx(1.0)
    assert ("questions" in calls) == stage2


def expected_ranking_qa_only(task: Any, clip: Path, *, num_questions: int) -> list[list[str]]:
    """As `expected_ranking` with the judge off: count_qa x minmax(s1), from the same stage-1 list."""
    base = expected_ranking(task, clip, stage2=False)
    enc = get_model(f"hf-clip:{clip}")
    caps = {it.id: caption_of(_bytes(it)) for it in task.corpus}
    gv, _ = encode_items(enc, task.corpus, role="document", progress=False)
    cv, _ = encode_items(enc, [Item(f"c{i}", text=caps[it.id]) for i, it in enumerate(task.corpus)],
                         role="query", progress=False)
    pos = task.corpus_positions
    out = []
    for q, row in zip(task.queries, base, strict=True):
        ins = (q.item.text or "").strip() or "the same image"
        texts = descriptions(ins) + [rewrite_of(ins)]
        m, _ = encode_items(enc, [Item(f"t{i}", text=t) for i, t in enumerate(texts)], role="query",
                            progress=False)
        m = np.asarray(m, dtype=np.float64).mean(axis=0)
        head = row[:100]
        s1 = [0.85 * float(m @ gv[pos[c]]) + 0.15 * float(m @ cv[pos[c]]) for c in head]
        lo, hi = min(s1), max(s1)
        qs = questions_of(ins)[:num_questions]
        final = [sum(qa_answer(_bytes(task.corpus[pos[c]]), qt) == w for qt, w in qs)
                 * ((s - lo) / (hi - lo) if hi > lo else 0.0) for c, s in zip(head, s1, strict=True)]
        out.append([head[i] for i in sorted(range(len(head)), key=lambda i: -final[i])] + row[100:])
    return out


def test_xr_stage3_pairwise_moves_accepted_candidates_first(clip: Path, data: dict[str, Path],
                                                            tmp_path: Path) -> None:
    from tests.helpers.xr_chat import pairwise_answer

    task = get_task("cirr", data_dir=data["cirr"])
    with FakeChatServer(xr_answer) as server:
        cfg = write_config(tmp_path / "x.yaml", clip, server.url, stages="s1,s2,s3", top_k=10,
                           num_questions=1, alpha=6)
        result = run_eval(cfg, "cirr", data["cirr"], tmp_path / "out", tmp_path / "cache")
        calls = kinds(server)
    assert calls["pairwise"] == 6 * len(task.queries)
    assert [r["name"] for r in result["retrieval"]["rerankers"]] == ["xr-questions", "xr-pairwise"]
    s2 = expected_ranking(task, clip, top_k=10, num_questions=1)
    got = stored(tmp_path / "out")
    for q, row in zip(task.queries, s2, strict=True):
        ref = _bytes(Item("r", image=q.item.image))
        ins = q.item.text or "the same image"
        pos = task.corpus_positions
        ok = [c for c in row[:6] if pairwise_answer(ref, _bytes(task.corpus[pos[c]]), ins)]
        assert same(task, got[q.id][:len(row)], ok + [c for c in row[:6] if c not in ok] + row[6:])


def test_bad_xr_options_are_refused_in_one_line(clip: Path, data: dict[str, Path], tmp_path: Path) -> None:
    for options, needle in (({"s2_mode": "bth"}, "did you mean 'both'"), ({"stages": "s1,s4"}, "s4"),
                            ({"exclude_reference": "maybe"}, "options.exclude_reference"),
                            ({"tua": 1}, "did you mean 'tau'")):
        cfg = write_config(tmp_path / "bad.yaml", clip, "http://127.0.0.1:9/v1", **options)
        res = runner.invoke(app, eval_args(cfg, "cirr", data["cirr"], tmp_path / "out", tmp_path / "c"))
        assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "out").exists()


def test_cirbench_methods_lists_xr_with_its_cost() -> None:
    res = runner.invoke(app, ["methods", "--json"])
    assert res.exit_code == 0, res.output
    row = {r["name"]: r for r in json.loads(res.output)["methods"]}["xr"]
    assert row["method"] == "xr" and row["components"]["encoder"].startswith("hf-clip:laion/CLIP-ViT-B-32")
    assert row["cost"]["per_query"].startswith("4 LMM calls (v1, v2, rewrite, questions) + 2x100x|Q|")
    assert row["cost"]["per_gallery_item"].startswith("1 MLLM caption")


def test_sigkill_during_stage2_then_rerun_loses_and_repeats_nothing(clip: Path, data: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    """The real `cirbench eval` in a subprocess, killed by SIGKILL while the verifier answers; the rerun
    asks exactly the requests that never got an answer, and the result equals an uninterrupted run's.

    Artifacts are told apart by their ids in the store's part files, not by request bodies: the fixture's
    candidates share image bytes, so two different (candidate, question) artifacts can send the same body."""
    proc: subprocess.Popen[bytes] | None = None
    answered: list[str] = []
    kill_at = 25

    def killer(body: dict[str, Any]) -> str:
        if kind_of(body) == "verify" and proc is not None:
            if len(answered) + 1 == kill_at:
                os.kill(proc.pid, signal.SIGKILL)
                return "Yes."  # nobody reads it
            answered.append(json.dumps(body, sort_keys=True))
        return xr_answer(body)

    task = get_task("cirr", data_dir=data["cirr"])
    with FakeChatServer(killer) as server:
        cfg = write_config(tmp_path / "k.yaml", clip, server.url, top_k=6, num_questions=2)
        args = eval_args(cfg, "cirr", data["cirr"], tmp_path / "out", tmp_path / "cache", "--batch-size", "1")
        env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.Popen([sys.executable, "-m", "cirbench.cli", *args], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert proc.wait(timeout=300) == -signal.SIGKILL
        assert len(answered) == kill_at - 1 and not (tmp_path / "out" / "result.json").exists()
        first = list(answered)
        server.requests.clear()
        proc = None
        run_eval(cfg, "cirr", data["cirr"], tmp_path / "out", tmp_path / "cache")
        second = [json.dumps(b, sort_keys=True) for b in server.requests if kind_of(b) == "verify"]
        assert not any(kind_of(b) in ("caption", "imagine_text", "questions") for b in server.requests)
        # an uninterrupted run in a fresh cache (same batch size, so the same stage-1 floats and top K): the
        # artifacts a run must end with
        run_eval(cfg, "cirr", data["cirr"], tmp_path / "clean", tmp_path / "clean-cache", "--batch-size", "1")

    def ids(cache: str) -> list[list[str]]:
        found = (tmp_path / cache / "artifacts").glob("verify_qa-*/part-*.jsonl")
        parts = sorted(found, key=os.path.getmtime)
        return [[json.loads(line)["id"] for line in p.read_text().splitlines()] for p in parts]

    (clean,) = ids("clean-cache")
    done = ids("cache")
    assert len(done) == 2  # the killed session's part and the rerun's
    # every answer the server gave before the kill was on disk (batch size 1): the rerun asks only the rest
    assert len(done[0]) == len(first) == kill_at - 1 and len(second) == len(clean) - len(first)
    assert not set(done[0]) & set(done[1])  # nothing answered before the kill is asked again
    assert sorted(done[0] + done[1]) == sorted(clean)  # and nothing is lost
    want = expected_ranking(task, clip, top_k=6, num_questions=2)
    got = stored(tmp_path / "out")
    assert all(same(task, got[q.id][:50], row[:50]) for q, row in zip(task.queries, want, strict=True))
    assert not list(tmp_path.glob("**/*.tmp*"))


def test_prompt_file_replaces_an_xr_stage(clip: Path, data: dict[str, Path], tmp_path: Path) -> None:
    released = tmp_path / "verify.txt"
    released.write_text(BUILTIN["xr-verify"].text + "\n(released wording)\n")
    with FakeChatServer(xr_answer) as server:
        cfg = write_config(tmp_path / "p.yaml", clip, server.url, top_k=3, num_questions=1)
        result = run_eval(cfg, "cirr", data["cirr"], tmp_path / "out", tmp_path / "cache",
                          "--prompt-file", f"verify={released}")
        sent = [request_text(b) for b in server.requests if kind_of(b) == "verify"]
    assert sent and all("(released wording)\nQuestion: " in t for t in sent)
    rec = result["retrieval"]["retriever"]["fingerprint"]["prompts"]["verify"]
    assert rec["id"] == "file:verify.txt" and rec["source"] == str(released)
