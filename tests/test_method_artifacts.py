"""The artifact store of retrieval methods: keys, shards, merges, imports, and a SIGKILL during generation."""

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

import pytest

from cirbench.core.types import DatasetError
from cirbench.retrieval.methods.artifacts import (
    ArtifactJob,
    ArtifactSpec,
    ArtifactStore,
    ImportedArtifacts,
    Shard,
    item_seed,
    merge_stores,
    sha256_text,
)
from tests.helpers.edit_pipelines import FakeChatServer, Reply, request_text

SPEC = ArtifactSpec(
    stage="ref_caption",
    component={"backend": "openai", "model": "fake-vlm"},
    prompt_sha256=sha256_text("Describe the image."),
    decoding={"temperature": 0.0, "max_tokens": 64},
    base_seed=7,
)
ITEMS = [(f"q{i:02d}", f"content-{i}") for i in range(12)]


def by_seed(jobs: Any) -> list[str]:
    """A generator whose output depends on the seed it is handed (as a sampling captioner's does)."""
    return [f"{j.id}:{j.seed % 1000}" for j in jobs]


def test_key_depends_on_every_input_and_seed_on_id_not_position() -> None:
    base = SPEC.key("q01", "c")
    comp, prompt, dec = SPEC.component, SPEC.prompt_sha256, SPEC.decoding
    variants = [
        ArtifactSpec("ref_caption", {"backend": "openai", "model": "other"}, prompt, dec, 7),
        ArtifactSpec("ref_caption", comp, sha256_text("Describe it."), dec, 7),
        ArtifactSpec("ref_caption", comp, prompt, {"temperature": 0.7, "max_tokens": 64}, 7),
        ArtifactSpec("ref_caption", comp, prompt, dec, 8),
    ]
    keys = {base, SPEC.key("q01", "d"), SPEC.key("q02", "c"), *(v.key("q01", "c") for v in variants)}
    assert len(keys) == 7
    # the seed is a function of (base seed, stage, id) only: sha256 of the canonical JSON, first 63 bits
    blob = json.dumps(["cirbench-item-seed", 7, "ref_caption", "q01"], separators=(",", ":")).encode()
    assert SPEC.seed("q01") == int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1
    assert item_seed(7, "ref_caption", "q01") != item_seed(7, "edited_caption", "q01")


def test_shards_partition_items_and_merge_to_the_unsharded_result(tmp_path: Path) -> None:
    whole = ArtifactStore(tmp_path / "whole").generate(SPEC, ITEMS, by_seed)
    shard_stores = [ArtifactStore(tmp_path / f"shard{i}") for i in range(3)]
    parts = [s.generate(SPEC, ITEMS, by_seed, shard=Shard(i, 3)) for i, s in enumerate(shard_stores)]
    ids = [k for p in parts for k in p]
    assert sorted(ids) == sorted(i for i, _ in ITEMS) and len(ids) == len(set(ids))
    assert all(len(p) < len(ITEMS) for p in parts)
    target = ArtifactStore(tmp_path / "merged")
    assert merge_stores(target, shard_stores, SPEC) == len(ITEMS)
    assert merge_stores(target, shard_stores, SPEC) == 0  # merging again adds nothing
    calls: list[ArtifactJob] = []

    def counting(jobs: Any) -> list[str]:
        calls.extend(jobs)
        return by_seed(jobs)

    assert target.generate(SPEC, ITEMS, counting) == whole  # the shards' outputs are the unsharded ones
    assert calls == []
    assert Shard.parse("2/3") == Shard(2, 3)
    with pytest.raises(ValueError, match="index/count"):
        Shard.parse("2of3")


def test_compact_keeps_everything_in_one_part(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.generate(SPEC, ITEMS[:5], by_seed)
    store.generate(SPEC, ITEMS, by_seed)
    folder = store.folder(SPEC)
    assert len(list(folder.glob("part-*.jsonl"))) == 2
    before = store.load(SPEC)
    store.compact(SPEC)
    assert len(list(folder.glob("part-*.jsonl"))) == 1 and store.load(SPEC) == before and len(before) == 12
    assert json.loads((folder / "spec.json").read_text())["prompt_sha256"] == SPEC.prompt_sha256


def test_a_truncated_last_line_is_regenerated_not_served(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    store.generate(SPEC, ITEMS[:3], by_seed)
    (part,) = store.folder(SPEC).glob("part-*.jsonl")
    text = part.read_text()
    part.write_text(text[: len(text) - 10])  # the third record cut short, as SIGKILL mid-write leaves it
    calls: list[str] = []

    def counting(jobs: Any) -> list[str]:
        calls.extend(j.id for j in jobs)
        return by_seed(jobs)

    out = store.generate(SPEC, ITEMS[:3], counting)
    assert calls == ["q02"] and out["q02"] == f"q02:{SPEC.seed('q02') % 1000}"


CHILD = r"""
import sys
from cirbench.llm.base import LMMRequest
from cirbench.llm.openai_client import OpenAIChatLMM
from cirbench.retrieval.methods.artifacts import ArtifactSpec, ArtifactStore, sha256_text

url, root = sys.argv[1], sys.argv[2]
lmm = OpenAIChatLMM(model="fake-vlm", base_url=url, api_key_env=None, max_retries=0, json_mode=False)
spec = ArtifactSpec("ref_caption", {"backend": "openai", "model": "fake-vlm"},
                    sha256_text("Describe the image."), {"temperature": 0.0, "max_tokens": 64}, 7)
items = [(f"q{i:02d}", f"content-{i}") for i in range(12)]

def make(jobs):
    return [lmm.complete(LMMRequest(parts=(f"Describe item {j.id}",), json_mode=False)) for j in jobs]

ArtifactStore(root).generate(spec, items, make, batch_size=1)
"""


def _caption(body: dict[str, Any]) -> Reply:
    m = re.search(r"Describe item (\S+)", request_text(body))
    return Reply(content=f"a caption of {m.group(1) if m else '?'}", delay=0.15)


def _finished(store_root: Path) -> int:
    return sum(p.read_text().count("\n") for p in store_root.rglob("part-*.jsonl"))


def test_sigkill_during_generation_loses_nothing_and_regenerates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with FakeChatServer(_caption) as server:
        child = subprocess.Popen([sys.executable, "-c", CHILD, server.url, str(root)], env=env)
        try:
            deadline = time.monotonic() + 60
            while _finished(root) < 4 and time.monotonic() < deadline and child.poll() is None:
                time.sleep(0.02)
            assert child.poll() is None, "the generation finished before it could be killed"
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait(timeout=30)
        first_ids = [re.search(r"item (\S+)", request_text(b)).group(1) for b in server.requests]  # type: ignore[union-attr]
    store = ArtifactStore(root)
    done = {k: v for k, v in store.load(SPEC).items()}
    assert 4 <= len(done) < 12
    done_ids = {i for i, c in ITEMS if SPEC.key(i, c) in done}
    assert done_ids <= set(first_ids)

    from cirbench.llm.base import LMMRequest
    from cirbench.llm.openai_client import OpenAIChatLMM

    with FakeChatServer(_caption) as server:
        lmm = OpenAIChatLMM(model="fake-vlm", base_url=server.url, api_key_env=None, max_retries=0,
                            json_mode=False)
        out = store.generate(
            SPEC, ITEMS,
            lambda jobs: [lmm.complete(LMMRequest(parts=(f"Describe item {j.id}",), json_mode=False))
                          for j in jobs],
            batch_size=1,
        )
        rerun_ids = [re.search(r"item (\S+)", request_text(b)).group(1) for b in server.requests]  # type: ignore[union-attr]
    assert len(rerun_ids) == 12 - len(done_ids)  # one call per missing item, none for a finished one
    assert set(rerun_ids).isdisjoint(done_ids)
    assert out == {i: f"a caption of {i}" for i, _ in ITEMS}
    assert not list(root.rglob("*.tmp"))


def test_imported_tier_is_read_only_with_provenance(tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.mkdir()
    f = release / "test_multi_gpt3-5.json"
    f.write_text(json.dumps({"q00": "a red dog", "q01": ["a", "b"]}))
    before = (f.read_bytes(), f.stat().st_mtime_ns)
    imp = ImportedArtifacts.load(release, "test_multi_gpt3-5.json", provenance="yzy-bupt/LDRE@abc123")
    assert imp.record() == {"path": str(f), "sha256": hashlib.sha256(before[0]).hexdigest(),
                            "provenance": "yzy-bupt/LDRE@abc123", "items": 2}
    store = ArtifactStore(tmp_path / "store")

    def never(jobs: Any) -> list[str]:
        raise AssertionError("an imported artifact must not be generated")

    assert store.generate(SPEC, ITEMS[:2], never, imported=imp) == {"q00": "a red dog", "q01": ["a", "b"]}
    with pytest.raises(DatasetError, match=r"no imported artifact.*test_multi_gpt3-5\.json.*'q02'"):
        store.generate(SPEC, ITEMS[:3], never, imported=imp)
    assert (f.read_bytes(), f.stat().st_mtime_ns) == before and not (tmp_path / "store").exists()
    with pytest.raises(DatasetError, match="escapes"):
        ImportedArtifacts.load(release, "../elsewhere.json", provenance="x")
    (release / "list.json").write_text("[1, 2]")
    with pytest.raises(DatasetError, match=r"JSON object.*list\.json"):
        ImportedArtifacts.load(release, "list.json", provenance="x")
    (release / "bad.json").write_text('{"q0": 3}')
    with pytest.raises(DatasetError, match=r"record 'q0'"):
        ImportedArtifacts.load(release, "bad.json", provenance="x")
