"""CIReVL end to end on the CIRR fixture: a tiny CLIP loaded from disk and a chat server on the loopback."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cirbench.core.types import Item
from cirbench.llm.openai_client import OpenAIChatLMM
from cirbench.models.registry import get_model
from cirbench.retrieval.base import Context, Retriever
from cirbench.retrieval.encode import encode_items
from cirbench.retrieval.methods.artifacts import ArtifactStore, sha256_text
from cirbench.retrieval.methods.cirevl import REWRITE_PROMPT, CIReVL, parse_edited
from cirbench.tasks.registry import get_task
from tests.helpers.edit_pipelines import FakeChatServer, request_images, request_text
from tests.helpers.tiny import build_tiny_clip
from tests.test_tasks_cirr import write_cirr


def responder(body: dict[str, Any]) -> str:
    text = request_text(body)
    if request_images(body):
        return f"a photo with {len(text) % 7} objects"
    ins = re.findall(r"^Instruction: (.*)$", text, flags=re.M)[-1]
    if "no marker" in ins:
        return "I cannot do that."
    return f"Some reasoning first.\nEdited Description: {ins} in the rain"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    root = tmp_path_factory.mktemp("cirevl")
    task = get_task("cirr", "val", data_dir=write_cirr(root / "cirr"))
    encoder = get_model(f"hf-clip:{build_tiny_clip(root / 'clip')}")
    return task, encoder


def test_parse_edited() -> None:
    assert parse_edited("x\nEdited Description:  a red car \nmore") == "a red car"
    assert parse_edited("Edited Description:") is None and parse_edited("no line") is None


def test_cirevl_end_to_end_with_cost_and_resume(setup: tuple[Any, Any], tmp_path: Path) -> None:
    task, encoder = setup
    nq = len(task.queries)
    refs = {q.reference_id for q in task.queries}
    with FakeChatServer(responder) as server:
        lmm = OpenAIChatLMM(model="fake-vlm", base_url=server.url, api_key_env=None, json_mode=False)
        method = CIReVL(encoder=encoder, captioner=lmm, rewriter=lmm, store=ArtifactStore(tmp_path / "art"))
        assert isinstance(method, Retriever)
        ctx = Context(top_k=5, batch_size=4, progress=False)
        run = method.retrieve(task, ctx)
        assert len(server.requests) == len(refs) + nq  # one caption per distinct reference, one rewrite each
        rewrite_bodies = [b for b in server.requests if not request_images(b)]
        assert all(request_text(b).startswith(REWRITE_PROMPT + "\nImage Content: a photo with ")
                   for b in rewrite_bodies)
        assert {b["temperature"] for b in server.requests} == {0.0}
        assert {b["max_tokens"] for b in rewrite_bodies} == {700}

        cost = ctx.cost.to_dict()
        assert cost["caption"]["lmm_calls"] == len(refs) and cost["rewrite"]["lmm_calls"] == nq
        assert cost["encode_text"]["text_encodes"] == nq
        assert cost["encode_gallery"]["image_encodes"] == len(task.corpus)
        assert all(cost[s]["seconds"] >= 0 for s in ("caption", "rewrite", "encode_text", "search"))

        # CIRR's protocol: the reference is never retrieved
        for qi, q in enumerate(task.queries):
            assert q.reference_id not in run.ranked_ids(qi)
        # the query vector is the CLIP text feature of the edited description, nothing else
        edited = [f"{q.item.text} in the rain" for q in task.queries]
        qv, _ = encode_items(encoder, [Item(q.id, text=t) for q, t in zip(task.queries, edited)],
                             role="query", progress=False)
        gv, _ = encode_items(encoder, task.corpus, role="document", progress=False)
        pos = task.corpus_positions
        for qi, q in enumerate(task.queries):
            s = qv[qi] @ gv.T
            s[pos[q.reference_id]] = -np.inf
            order = np.argsort(-s, kind="stable")[:5]
            np.testing.assert_allclose(run.scores[qi], s[order], atol=1e-5)
        if task.queries[0].candidate_ids is not None:
            assert run.subset_indices is not None

        # a second run asks the server nothing and gives the same run
        server.requests.clear()
        again = method.retrieve(task, Context(top_k=5, batch_size=4, progress=False))
        assert server.requests == []
        np.testing.assert_array_equal(again.indices, run.indices)

    fp = method.fingerprint()
    assert fp["rewrite_prompt_sha256"] == sha256_text(REWRITE_PROMPT) and fp["method"] == "cirevl"


def test_a_reply_without_the_marker_falls_back_to_the_instruction(setup: tuple[Any, Any],
                                                                  tmp_path: Path) -> None:
    from dataclasses import replace

    task, encoder = setup
    q0 = task.queries[0]
    task = replace(task, queries=[replace(q0, item=replace(q0.item, text="no marker please"))])
    with FakeChatServer(responder) as server:
        lmm = OpenAIChatLMM(model="fake-vlm", base_url=server.url, api_key_env=None, json_mode=False)
        method = CIReVL(encoder=encoder, captioner=lmm, rewriter=lmm, store=ArtifactStore(tmp_path))
        ctx = Context(top_k=3, progress=False)
        edited = method.rewrites(task, method.captions(task, ctx), ctx)
    assert edited == {q0.id: "no marker please"}
    assert ctx.cost.to_dict()["rewrite"]["parse_fallbacks"] == 1


def test_cirevl_from_the_cli_with_a_shipped_config(tmp_path: Path) -> None:
    """`cirbench eval --method cirevl` (the shipped config) with options overridden on the command line:
    the result records the method, its prompts' hashes and the cost per stage; a rerun asks the LMM
    nothing."""
    import json

    from typer.testing import CliRunner

    from cirbench.cli import app

    data = write_cirr(tmp_path / "cirr")
    clip = build_tiny_clip(tmp_path / "clip")
    with FakeChatServer(responder) as server:
        args = ["eval", "--method", "cirevl", "-t", "cirr", "--split", "val", "--data-dir", str(data),
                "-o", str(tmp_path / "out"), "-q", "--bootstrap", "5"]
        for opt in (f"encoder=hf-clip:{clip}", "lmm_model=fake-vlm", f"lmm_base_url={server.url}",
                    "lmm_api_key_env=", f"artifacts={tmp_path / 'art'}"):
            args += ["--method-option", opt]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        calls = len(server.requests)
        assert calls > 0
        res = CliRunner().invoke(app, [*args, "--overwrite"])
        assert res.exit_code == 0, res.output
        assert len(server.requests) == calls  # captions and rewrites come from the artifact store
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["retrieval"]["retriever"]["name"] == "cirevl"
    assert result["protocol"]["prompts"]["rewrite_sha256"] == sha256_text(REWRITE_PROMPT)
    assert result["protocol"]["exclude_reference"] is True  # CIRR's protocol, from the task
    assert "R@1" in result["scores"]["overall"]["overall"]
    assert "search" in result["retrieval"]["cost"]
    bad = CliRunner().invoke(app, [*args[:3], "--method", "cirvel"])
    assert bad.exit_code == 2 and "did you mean 'cirevl'" in bad.output


def test_cirevl_from_released_files_asks_no_model(tmp_path: Path) -> None:
    """Released captions and edited descriptions (e.g. LDRE's CIRCO GPT-3.5 edits) replace the LMM: no
    server runs at all, the result records each file's sha256 and provenance, and the run equals the
    given texts' vectors against the gallery."""
    import json

    from typer.testing import CliRunner

    from cirbench.cli import app

    data = write_cirr(tmp_path / "cirr")
    clip = build_tiny_clip(tmp_path / "clip")
    task = get_task("cirr", "val", data_dir=data)
    caps = tmp_path / "released" / "captions.json"
    caps.parent.mkdir()
    caps.write_text(json.dumps({q.reference_id: "a photo" for q in task.queries}))
    edits = tmp_path / "released" / "edits.json"
    edits.write_text(json.dumps({q.id: f"a photo of {q.item.text}" for q in task.queries}))
    args = ["eval", "--method", "cirevl", "-t", "cirr", "--split", "val", "--data-dir", str(data),
            "-o", str(tmp_path / "out"), "-q", "--bootstrap", "5"]
    for opt in (f"encoder=hf-clip:{clip}", "lmm_model=none", "lmm_base_url=http://127.0.0.1:9/v1",
                "lmm_api_key_env=", f"captions_file={caps}", f"rewrites_file={edits}"):
        args += ["--method-option", opt]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "provenance" in refused.output
    res = CliRunner().invoke(app, [*args, "--method-option", "provenance=test fixture"])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    imported = result["retrieval"]["retriever"]["fingerprint"]["imported_rewrites"]
    assert imported["provenance"] == "test fixture" and len(imported["sha256"]) == 64
    assert "rewrite" not in result["retrieval"]["cost"] and "caption" not in result["retrieval"]["cost"]
    enc = get_model(f"hf-clip:{clip}")
    q = task.queries[0]
    tv, _ = encode_items(enc, [Item("t", text=f"a photo of {q.item.text}")], role="query", progress=False)
    gallery, _ = encode_items(enc, list(task.corpus), role="document", progress=False)
    import pyarrow.parquet as pq

    row = pq.read_table(tmp_path / "out" / "run.parquet").to_pylist()[0]
    pos = {it.id: i for i, it in enumerate(task.corpus)}
    np.testing.assert_allclose(row["scores"], [float(gallery[pos[c]] @ tv[0]) for c in row["ranked_ids"]],
                               atol=1e-5)
