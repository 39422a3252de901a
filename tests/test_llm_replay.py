"""The replay LMM backend: a run recorded against a real chat server is answered again from the file alone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cirbench.core.types import DatasetError
from cirbench.llm.base import LMM, LMMError, LMMRequest
from cirbench.llm.openai_client import OpenAIChatLMM
from cirbench.llm.replay import RecordingLMM, ReplayLMM
from tests.helpers.edit_pipelines import FakeChatServer, request_text

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def test_record_then_replay_without_the_server(tmp_path: Path) -> None:
    reqs = [
        LMMRequest(parts=("Image Content: a dog\nInstruction: make it red",), json_mode=False),
        LMMRequest(parts=("Describe", PNG), system="You caption images.", json_mode=False),
    ]
    with FakeChatServer(lambda body: "answer to " + request_text(body).splitlines()[0]) as server:
        rec = RecordingLMM(OpenAIChatLMM(model="fake-vlm", base_url=server.url, api_key_env=None,
                                         json_mode=False))
        live = [rec.complete(reqs[0]), *rec.complete_many(reqs[1:])]
        assert len(server.requests) == 2
    path = rec.save(tmp_path / "replay.json")

    replay = ReplayLMM(path)
    assert isinstance(replay, LMM)
    assert [replay.complete(r) for r in reqs] == live == ["answer to Image Content: a dog",
                                                         "answer to You caption images."]
    assert replay.complete_many(reqs) == live
    assert replay.fingerprint() == {"backend": "replay", "file": str(path),
                                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_an_unrecorded_request_is_refused_naming_the_file_and_key(tmp_path: Path) -> None:
    rec = RecordingLMM(ReplayLMM(_empty(tmp_path)))
    path = rec.save(tmp_path / "r.json")
    replay = ReplayLMM(path)
    changed = LMMRequest(parts=("Describe", PNG + b"\x01"), json_mode=False)  # another image
    with pytest.raises(LMMError) as e:
        replay.complete(changed)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and e.value.transient is False
    key = msg.rsplit(" ", 1)[1]
    assert len(key) == 64 and key not in json.loads(path.read_text())["responses"]
    (out,) = replay.complete_many([changed])
    assert isinstance(out, LMMError)


def _empty(tmp_path: Path) -> Path:
    p = tmp_path / "empty.json"
    p.write_text(json.dumps({"format": "cirbench-replay/1", "responses": {}}))
    return p


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("not json", "not JSON"),
        ('{"responses": {}}', "not a replay file.*field 'format'"),
        ('{"format": "cirbench-replay/1", "responses": {"k": 3}}', "record 'k'"),
    ],
)
def test_a_bad_replay_file_is_refused_in_one_line(tmp_path: Path, content: str, match: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(DatasetError, match=match) as e:
        ReplayLMM(p)
    assert "bad.json" in str(e.value)
    with pytest.raises(DatasetError, match="cannot read"):
        ReplayLMM(tmp_path / "absent.json")
