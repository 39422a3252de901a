"""LDRE through `cirbench eval --method ldre` on the CIRR fixture: a tiny CLIP loaded from disk and a chat
server on the loopback interface. Checked: n sampled captions per reference with their own seeds, one
rewrite per caption, the query = the normalised mean of the edited captions' text vectors, the cost."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

from cirbench.cli import app
from cirbench.core.types import Item
from cirbench.models.registry import get_model
from cirbench.retrieval.encode import encode_items
from cirbench.tasks.registry import get_task
from tests.helpers.edit_pipelines import FakeChatServer, request_images, request_text
from tests.helpers.tiny import build_tiny_clip
from tests.test_tasks_cirr import write_cirr

N = 3


def responder(body: dict[str, Any]) -> str:
    if request_images(body):
        return f"a scene number {body['seed'] % 97}"  # sampled: each slot's own seed gives its own caption
    text = request_text(body)
    cap = re.findall(r"^Image Content: (.*)$", text, flags=re.M)[-1]
    ins = re.findall(r"^Instruction: (.*)$", text, flags=re.M)[-1]
    return f"Edited Description: {cap}, {ins}"


def test_ldre_end_to_end(tmp_path: Path) -> None:
    data = write_cirr(tmp_path / "cirr")
    clip = build_tiny_clip(tmp_path / "clip")
    task = get_task("cirr", "val", data_dir=data)
    refs = {q.reference_id for q in task.queries}
    out = tmp_path / "out"
    with FakeChatServer(responder) as server:
        args = ["eval", "--method", "ldre", "-t", "cirr", "--split", "val", "--data-dir", str(data),
                "-o", str(out), "-q", "--bootstrap", "5"]
        for opt in (f"encoder=hf-clip:{clip}", "lmm_model=fake", f"lmm_base_url={server.url}",
                    "lmm_api_key_env=", f"artifacts={tmp_path / 'art'}", f"n_captions={N}"):
            args += ["--method-option", opt]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        bodies = list(server.requests)
        captions = [b for b in bodies if request_images(b)]
        assert len(captions) == N * len(refs) and len(bodies) - len(captions) == N * len(task.queries)
        assert {b["temperature"] for b in captions} == {1.0} and {b["top_p"] for b in captions} == {0.9}
        assert len({b["seed"] for b in captions}) == len(captions)  # every slot samples with its own seed
        first = json.loads((out / "result.json").read_text())
        assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0
        assert len(server.requests) == len(bodies)  # the rerun asks the server nothing
    rows = {r["query_id"]: r for r in pq.read_table(out / "run.parquet").to_pylist()}
    assert first["retrieval"]["retriever"]["name"] == "ldre"
    assert first["protocol"]["n_captions"] == N and "mean" in first["protocol"]["ensemble"]
    assert first["retrieval"]["cost"]["caption"]["lmm_calls"] == N * len(refs)
    assert first["retrieval"]["cost"]["rewrite"]["lmm_calls"] == N * len(task.queries)
    again = json.loads((out / "result.json").read_text())
    assert "caption" not in again["retrieval"]["cost"]  # the rerun's own cost: no model calls
    for q in task.queries:
        assert q.reference_id not in rows[q.id]["ranked_ids"]  # CIRR's protocol, from the task


def test_the_mean_of_the_slots_is_the_query(tmp_path: Path) -> None:
    """Direct: LDRE's run scores equal the hand-averaged text vectors of its stored rewrites vs gallery."""
    from cirbench.llm.openai_client import OpenAIChatLMM
    from cirbench.retrieval.base import Context
    from cirbench.retrieval.methods.artifacts import ArtifactStore
    from cirbench.retrieval.methods.ldre import LDRE

    data = write_cirr(tmp_path / "cirr")
    task = get_task("cirr", "val", data_dir=data)
    enc = get_model(f"hf-clip:{build_tiny_clip(tmp_path / 'clip')}")
    with FakeChatServer(responder) as server:
        lmm = OpenAIChatLMM(model="fake", base_url=server.url, api_key_env=None, json_mode=False)
        method = LDRE(encoder=enc, captioner=lmm, rewriter=lmm, store=ArtifactStore(tmp_path / "art"),
                      n_captions=N)
        ctx = Context(top_k=5, progress=False, use_cache=False)
        edited = method.slot_rewrites(task, method.sampled_captions(task, ctx), ctx)
        run = method.retrieve(task, ctx)
    q = task.queries[0]
    tv, _ = encode_items(enc, [Item(f"t{i}", text=t) for i, t in enumerate(edited[q.id])], role="query",
                         progress=False)
    mean = tv.mean(axis=0)
    mean /= np.linalg.norm(mean)
    gallery, _ = encode_items(enc, list(task.corpus), role="document", progress=False)
    want = gallery @ mean
    top = run.indices[0][run.indices[0] >= 0]
    np.testing.assert_allclose(run.scores[0][: len(top)], want[top], atol=1e-5)
    assert len(set(edited[q.id])) == N  # the slots differ (their captions were sampled with their own seeds)
