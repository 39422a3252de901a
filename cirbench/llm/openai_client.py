"""An OpenAI-compatible chat-completions client: what vLLM, SGLang, TGI and hosted APIs speak.

Images travel inline as base64 data URLs (the server needs no access to our files). Every request is bounded
(`timeout_s`), retried with exponential backoff on what may pass (429, 5xx, timeouts, refused connections, a
body that is not the protocol's JSON), honours `Retry-After`, and runs under a concurrency limit shared by all
threads; answers are cached on disk by request hash. HTTP goes through httpx (httpx2, its successor that
huggingface_hub installs, is used when httpx itself is absent).
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from cirbench.llm.base import LMMError, LMMRequest, complete_many_threaded, image_mime
from cirbench.llm.cache import ResponseCache, request_key

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def _httpx() -> ModuleType:
    try:
        import httpx

        return httpx
    except ImportError:
        pass
    try:
        import httpx2

        return httpx2
    except ImportError as e:
        raise ImportError("the OpenAI-compatible LMM backend needs httpx: pip install httpx") from e


def content_parts(parts: Sequence[str | bytes]) -> list[dict[str, Any]]:
    """OpenAI message content: text parts and image_url parts with data URLs."""
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, bytes):
            url = f"data:{image_mime(p)};base64,{base64.b64encode(p).decode()}"
            out.append({"type": "image_url", "image_url": {"url": url}})
        else:
            out.append({"type": "text", "text": p})
    return out


DEFAULT_CONCURRENCY = 8
"""Requests in flight at once per client (`lmm.openai.concurrency`)."""


class OpenAIChatLMM:
    """`POST {base_url}/chat/completions` with retries, a timeout, a concurrency limit and a disk cache."""

    def __init__(
        self,
        *,
        model: str,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        concurrency: int = DEFAULT_CONCURRENCY,
        cache_dir: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        extra_body: dict[str, Any] | None = None,
        json_mode: bool = True,
    ) -> None:
        self.model, self.base_url = model, base_url.rstrip("/")
        self.name = f"openai:{model}"
        self.timeout_s, self.max_retries = float(timeout_s), int(max_retries)
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self.concurrency = max(1, int(concurrency))
        self.seed, self.extra_body, self.json_mode = seed, dict(extra_body or {}), bool(json_mode)
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        self._api_key = os.environ.get(api_key_env) if api_key_env else None
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._client: Any = None
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0, "tokens_in": 0, "tokens_out": 0}
        self.served: dict[str, Any] = {}
        """What the server said it ran (`model`, `system_fingerprint`), from its last answer."""

    def fingerprint(self) -> dict[str, Any]:
        return {
            "backend": "openai",
            "model": self.model,
            "base_url": self.base_url,
            "seed": self.seed,
            "extra_body": self.extra_body,
            "json_mode": self.json_mode,
        }

    # ------------------------------------------------------------------------------------------ requests

    def payload(self, request: LMMRequest) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": content_parts(request.parts)})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            **self.extra_body,
        }
        if request.top_p is not None:
            body["top_p"] = request.top_p
        seed = request.seed if request.seed is not None else self.seed
        if seed is not None:
            body["seed"] = seed
        if request.json_mode and self.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def complete(self, request: LMMRequest) -> str:
        body = self.payload(request)
        key = request_key(body)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None and isinstance(hit.get("content"), str):
                self.stats["cache_hits"] += 1
                return str(hit["content"])
        with self._slots:
            content, meta = self._post(body)
        raw_usage = meta.get("usage")
        usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
        with self._lock:
            for stat, field in (("tokens_in", "prompt_tokens"), ("tokens_out", "completion_tokens")):
                if isinstance(usage.get(field), int):
                    self.stats[stat] += usage[field]
            self.served.update({k: meta[k] for k in ("model", "system_fingerprint") if meta.get(k)})
        if self.cache is not None:
            self.cache.put(key, {"content": content, **meta})
        return content

    def complete_many(self, requests: Sequence[LMMRequest]) -> list[str | LMMError]:
        return complete_many_threaded(self, requests, self.concurrency)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # ------------------------------------------------------------------------------------------ transport

    def _http(self) -> Any:
        with self._lock:
            if self._client is None:
                httpx = _httpx()
                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.timeout_s),
                    limits=httpx.Limits(max_connections=self.concurrency),
                )
            return self._client

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key}"
        return h

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.max_backoff_s, self.backoff_s * (2**attempt)) * (0.5 + random.random() / 2)
        if retry_after:
            with contextlib.suppress(ValueError):  # an HTTP date instead of seconds: keep the backoff
                delay = min(self.max_backoff_s, max(0.0, float(retry_after)))
        time.sleep(delay)

    def _post(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """POST with retries. Retried: timeouts, refused or broken connections, RETRY_STATUS, and a 200 whose
        body is not the protocol's (a proxy's error page, a truncated body). Giving up is `transient` (a later
        run may succeed) unless the server kept answering well-formed JSON without any text (a refusal, a
        content filter): retrying that at temperature 0 in a later run would only repeat it."""
        httpx = _httpx()
        client, url = self._http(), f"{self.base_url}/chat/completions"
        last, transient = "no attempt", True
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats["retries"] += 1
            self.stats["requests"] += 1
            retry_after = None
            try:
                r = client.post(url, json=body, headers=self._headers())
            except httpx.TimeoutException:
                last, transient = f"timed out after {self.timeout_s:g} s", True
            except httpx.TransportError as e:
                last, transient = f"connection failed: {type(e).__name__}: {e}", True
            else:
                if r.status_code == 200:
                    try:
                        data = r.json()
                    except ValueError as e:
                        last, transient = f"malformed response body (not JSON): {e}", True
                    else:
                        try:
                            return self._parse(data)
                        except (ValueError, KeyError, IndexError, TypeError) as e:
                            last, transient = f"malformed response body: {type(e).__name__}: {e}", False
                else:
                    last, transient = f"HTTP {r.status_code}: {' '.join(r.text.split())[:200]}", True
                    if r.status_code not in RETRY_STATUS:
                        raise LMMError(f"{url}: {last}", transient=False)
                    retry_after = r.headers.get("retry-after")
            if attempt < self.max_retries:
                self._sleep(attempt, retry_after)
        raise LMMError(
            f"{url}: gave up after {self.max_retries + 1} attempts; last: {last}", transient=transient
        )

    @staticmethod
    def _parse(data: Any) -> tuple[str, dict[str, Any]]:
        """The first choice's text, strictly per the protocol (anything else is a malformed body)."""
        if not isinstance(data, dict):
            raise ValueError("body is not a JSON object")
        choice = data["choices"][0]
        content = choice["message"]["content"]
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise ValueError("choices[0].message.content is not text")
        return content, {
            "model": data.get("model"),
            "system_fingerprint": data.get("system_fingerprint"),
            "finish_reason": choice.get("finish_reason"),
            "usage": data.get("usage"),
        }


def from_config(cfg: dict[str, Any], cache_dir: Path | None) -> OpenAIChatLMM:
    known = {
        "model",
        "base_url",
        "api_key_env",
        "timeout_s",
        "max_retries",
        "backoff_s",
        "max_backoff_s",
        "concurrency",
        "seed",
        "extra_body",
        "json_mode",
    }
    unknown = set(cfg) - known
    if unknown:
        raise ValueError(f"lmm.openai: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
    if not cfg.get("model"):
        raise ValueError("lmm.openai.model is required (the model name the server serves)")
    return OpenAIChatLMM(cache_dir=cache_dir, **cfg)
