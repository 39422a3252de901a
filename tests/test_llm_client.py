"""The LMM backends: the OpenAI-compatible client against a real HTTP server on 127.0.0.1, answer validation,
and the local transformers backend on a tiny random Qwen2-VL (whose garbage must be rejected, not crash)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cirbench.llm import LMMError, LMMRequest, ask_json, extract_json, make_lmm
from cirbench.llm.openai_client import OpenAIChatLMM
from tests.helpers.edit_pipelines import FakeChatServer, Reply


def _png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def server():
    with FakeChatServer(lambda body: '{"ok": true}') as s:
        yield s


def client(url: str, tmp_path: Path | None = None, **kw: Any) -> OpenAIChatLMM:
    opts: dict[str, Any] = {
        "max_retries": 3,
        "backoff_s": 0.01,
        "max_backoff_s": 0.05,
        "timeout_s": 5.0,
        "concurrency": 4,
    }
    opts.update(kw)
    return OpenAIChatLMM(model="fake-vlm", base_url=url, cache_dir=tmp_path, **opts)


def test_request_has_inline_images_system_prompt_json_mode_and_auth(server, monkeypatch) -> None:
    monkeypatch.setenv("CIRBENCH_TEST_KEY", "sk-secret")
    c = client(server.url, api_key_env="CIRBENCH_TEST_KEY", seed=7)
    img = _png()
    out = c.complete(
        LMMRequest(parts=(img, "what is this?"), system="be brief", max_tokens=33, temperature=0.0)
    )
    assert out == '{"ok": true}'
    body, headers = server.requests[0], server.headers[0]
    assert headers["Authorization"] == "Bearer sk-secret"
    assert body["model"] == "fake-vlm" and body["max_tokens"] == 33 and body["seed"] == 7
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    parts = body["messages"][1]["content"]
    assert parts[1] == {"type": "text", "text": "what is this?"}
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == img


def test_answers_are_cached_on_disk_by_request_hash(server, tmp_path: Path) -> None:
    req = LMMRequest(parts=("hello",))
    assert client(server.url, tmp_path).complete(req) == '{"ok": true}'
    fresh = client(server.url, tmp_path)  # a new process would see the same cache
    assert fresh.complete(req) == '{"ok": true}'
    assert len(server.requests) == 1 and fresh.stats["cache_hits"] == 1
    fresh.complete(LMMRequest(parts=("another question",)))
    assert len(server.requests) == 2
    assert "sk-" not in "".join(p.read_text() for p in tmp_path.rglob("*.json"))


@pytest.mark.parametrize(
    "first",
    [
        Reply(status=500),
        Reply(status=503),
        Reply(status=429, headers={"Retry-After": "0"}),
        Reply(status=200, body=b"this is not json {"),
        Reply(status=200, body=b'{"choices": []}'),
    ],
    ids=["500", "503", "429-retry-after", "malformed-body", "no-choices"],
)
def test_transient_failures_are_retried(server, first: Reply) -> None:
    server.script = [first, first]
    assert client(server.url).complete(LMMRequest(parts=("q",))) == '{"ok": true}'
    assert len(server.requests) == 3


def test_429_honours_retry_after(server) -> None:
    server.script = [Reply(status=429, headers={"Retry-After": "0.3"})]
    t0 = time.perf_counter()
    client(server.url, max_backoff_s=5.0).complete(LMMRequest(parts=("q",)))
    assert time.perf_counter() - t0 >= 0.3


def test_persistent_errors_raise_transient_lmm_error_after_the_retries(server) -> None:
    server.script = [Reply(status=500)] * 10
    with pytest.raises(LMMError, match="gave up after 4 attempts; last: HTTP 500") as e:
        client(server.url).complete(LMMRequest(parts=("q",)))
    assert e.value.transient and len(server.requests) == 4


def test_a_persistently_empty_answer_is_not_transient(server) -> None:
    server.script = [Reply(body=b'{"choices": [{"message": {"content": null}}]}')] * 4
    with pytest.raises(LMMError, match="malformed response body") as e:
        client(server.url).complete(LMMRequest(parts=("q",)))
    assert not e.value.transient and len(server.requests) == 4  # retried, then given up for good
    server.script = [Reply(body=b"<html>502 Bad Gateway</html>")] * 4
    with pytest.raises(LMMError, match="not JSON") as e:
        client(server.url).complete(LMMRequest(parts=("q2",)))
    assert e.value.transient


def test_client_errors_are_not_retried(server) -> None:
    server.script = [Reply(status=400)]
    with pytest.raises(LMMError, match="HTTP 400") as e:
        client(server.url).complete(LMMRequest(parts=("q",)))
    assert not e.value.transient and len(server.requests) == 1


def test_timeout_then_retry(server) -> None:
    server.script = [Reply(content='{"late": true}', delay=1.0)]
    c = client(server.url, timeout_s=0.25)
    assert c.complete(LMMRequest(parts=("q",))) == '{"ok": true}'
    assert c.stats["retries"] == 1
    server.script = [Reply(content="late", delay=1.0)] * 2
    with pytest.raises(LMMError, match="timed out after 0.25 s"):
        client(server.url, timeout_s=0.25, max_retries=1).complete(LMMRequest(parts=("q2",)))


def test_connection_refused_is_transient() -> None:
    s = FakeChatServer().start()
    url = s.url
    s.stop()
    with pytest.raises(LMMError, match="connection failed") as e:
        client(url, max_retries=1).complete(LMMRequest(parts=("q",)))
    assert e.value.transient


def test_concurrency_limit() -> None:
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def slow(body: dict) -> str:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.15)
        with lock:
            state["now"] -= 1
        return json.dumps({"echo": body["messages"][-1]["content"][0]["text"]})

    with FakeChatServer(slow) as s:
        c = client(s.url, concurrency=2)
        out = c.complete_many([LMMRequest(parts=(f"q{k}",)) for k in range(6)])
    assert [json.loads(str(o))["echo"] for o in out] == [f"q{k}" for k in range(6)]  # in request order
    assert state["max"] == 2


def test_complete_many_returns_failures_in_place(server) -> None:
    server.responder = lambda body: Reply(status=400) if "bad" in json.dumps(body) else '{"ok": 1}'
    out = client(server.url).complete_many([LMMRequest(parts=("good",)), LMMRequest(parts=("bad",))])
    assert out[0] == '{"ok": 1}' and isinstance(out[1], LMMError)


def test_extract_json_and_ask_json_reject_malformed_answers(server) -> None:
    assert extract_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('Sure! Here it is: {"a": [1, 2]} Hope that helps.') == {"a": [1, 2]}
    with pytest.raises(ValueError, match="not JSON"):
        extract_json("I cannot help with that.")
    answers = iter(['{"score": 0.5}', "no json here", '{"score": 7}', '["a list"]'])
    server.responder = lambda body: next(answers)

    def check(obj):
        if not isinstance(obj, dict) or not 0 <= obj.get("score", -1) <= 1:
            raise ValueError("score must be in [0, 1]")
        return obj["score"]

    c = client(server.url, concurrency=1)
    res = ask_json(c, [LMMRequest(parts=(f"q{k}",)) for k in range(4)], check)
    assert res[0].ok and res[0].value == 0.5
    assert not res[1].ok and "not JSON" in (res[1].error or "") and res[1].raw == "no json here"
    assert not res[2].ok and "score must be in [0, 1]" in (res[2].error or "")
    assert not res[3].ok and not res[3].transient


def test_make_lmm_validates_config(tmp_path: Path) -> None:
    assert make_lmm({"backend": "template"}) is None
    with pytest.raises(ValueError, match="unknown backend"):
        make_lmm({"backend": "gpt"})
    with pytest.raises(ValueError, match="unknown option"):
        make_lmm({"backend": "openai", "openai": {"model": "m", "temprature": 0}})
    lmm = make_lmm(
        {"backend": "openai", "openai": {"model": "m", "base_url": "http://127.0.0.1:1/v1"}},
        cache_dir=tmp_path,
    )
    assert lmm is not None and lmm.fingerprint()["model"] == "m"


def test_local_backend_on_a_tiny_random_qwen2vl(tmp_path: Path) -> None:
    """A real VLM through AutoModelForImageTextToText; a random one writes garbage, which must be rejected."""
    pytest.importorskip("torchvision")  # the Qwen2VLProcessor needs it in transformers 5.x
    import torch

    from tests.helpers.tiny import build_tiny_gme

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        d = build_tiny_gme(tmp_path / "vlm")
        lmm = make_lmm(
            {"backend": "local", "local": {"model": str(d), "max_new_tokens": 8}},
            cache_dir=tmp_path / "cache",
        )
        assert lmm is not None
        buf = io.BytesIO()
        Image.new("RGB", (56, 56), (10, 200, 30)).save(buf, format="PNG")
        req = LMMRequest(parts=(buf.getvalue(), "Describe the image as JSON."), system="Answer in JSON.")
        answer = ask_json(lmm, [req], lambda o: o)[0]
        assert not answer.ok and answer.error is not None and answer.error.startswith("malformed answer")
        assert isinstance(answer.raw, str)
        assert lmm.complete(req) == answer.raw  # greedy decoding, and the cache: the same answer again
    finally:
        torch.set_num_threads(threads)
