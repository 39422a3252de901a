"""The interface build stages use to ask a large multimodal model (LMM), and how its answers are checked.

Stages never trust an answer: `ask_json` extracts the JSON object from the reply, runs the stage's validator
and returns either the value or the reason it was rejected, which the stage writes to its rejection log. A
transport failure that outlived the client's retries raises `LMMError`; `transient` says whether running the
build again may succeed (a 5xx, 429, timeout or refused connection) or not (a 400: the request itself is bad).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

Part = str | bytes
"""A piece of the user turn: text, or an encoded image (PNG/JPEG/WebP bytes)."""


@dataclass(frozen=True)
class LMMRequest:
    """One chat turn: an optional system prompt and a user message of texts and images, in order."""

    parts: tuple[Part, ...]
    system: str | None = None
    max_tokens: int = 512
    temperature: float = 0.0
    json_mode: bool = True
    """Ask the server for a JSON object (OpenAI `response_format`); the answer is validated either way."""
    seed: int | None = None
    """This request's sampling seed (OpenAI `seed`), e.g. a per-item seed; None: the backend's own."""


class LMMError(RuntimeError):
    """The backend gave no answer (after its retries)."""

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


@runtime_checkable
class LMM(Protocol):
    """A chat model that sees images: OpenAIChatLMM (any OpenAI-compatible server) or LocalVLM."""

    name: str

    def fingerprint(self) -> dict[str, Any]:
        """What determines the answers (backend, model, revision, decoding): recorded in the output."""
        ...

    def complete(self, request: LMMRequest) -> str:
        """The assistant's text; raises LMMError when there is none."""
        ...

    def complete_many(self, requests: Sequence[LMMRequest]) -> list[str | LMMError]:
        """Answers in request order (concurrent where the backend allows); failures returned, not raised."""
        ...


def complete_many_threaded(lmm: LMM, requests: Sequence[LMMRequest], workers: int) -> list[str | LMMError]:
    """`complete_many` for backends whose `complete` is thread-safe and bounded by its own limit."""

    def one(req: LMMRequest) -> str | LMMError:
        try:
            return lmm.complete(req)
        except LMMError as e:
            return e

    if workers <= 1 or len(requests) <= 1:
        return [one(r) for r in requests]
    with ThreadPoolExecutor(max_workers=min(workers, len(requests))) as pool:
        return list(pool.map(one, requests))


@dataclass(frozen=True)
class JsonAnswer:
    """A validated JSON answer, or why there is none (`error`), with the raw reply kept for the log."""

    value: Any = None
    error: str | None = None
    raw: str | None = None
    transient: bool = False
    """True when the failure was the transport's (retry later), not the model's answer."""

    @property
    def ok(self) -> bool:
        return self.error is None


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


def extract_json(text: str) -> Any:
    """The JSON in a reply: the whole text, a fenced block, or the outermost {...}; ValueError if none."""
    s = text.strip()
    candidates = [s]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(s)]
    a, b = s.find("{"), s.rfind("}")
    if 0 <= a < b:
        candidates.append(s[a : b + 1])
    for c in candidates:
        try:
            return json.loads(c)
        except (json.JSONDecodeError, ValueError):
            continue
    snippet = " ".join(s.split())[:120]
    raise ValueError(f"answer is not JSON: {snippet!r}")


def ask_json(
    lmm: LMM, requests: Sequence[LMMRequest], validate: Callable[[Any], Any] | Sequence[Callable[[Any], Any]]
) -> list[JsonAnswer]:
    """Ask, parse and validate. `validate(obj)` returns the cleaned value or raises ValueError(reason)."""
    checks = list(validate) if isinstance(validate, Sequence) else [validate] * len(requests)
    out: list[JsonAnswer] = []
    for reply, check in zip(lmm.complete_many(requests), checks, strict=True):
        if isinstance(reply, LMMError):
            out.append(JsonAnswer(error=f"LMM error: {reply}", transient=reply.transient))
            continue
        try:
            out.append(JsonAnswer(value=check(extract_json(reply)), raw=reply))
        except (ValueError, TypeError, KeyError) as e:
            out.append(JsonAnswer(error=f"malformed answer: {e}", raw=reply))
    return out


# ------------------------------------------------------------------------------------------ validators


def require_dict(obj: Any, what: str = "answer") -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def require_str(obj: dict[str, Any], key: str, *, max_len: int = 500, optional: bool = False) -> str | None:
    """A non-empty string field (whitespace collapsed), at most max_len characters."""
    v = obj.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"field {key!r} must be a non-empty string")
    v = " ".join(v.split())
    if len(v) > max_len:
        raise ValueError(f"field {key!r} is longer than {max_len} characters")
    return v


def require_score(v: Any, key: str) -> float:
    """A number in [0, 1] (booleans are refused: they are not scores)."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= float(v) <= 1.0:
        raise ValueError(f"{key!r} must be a number in [0, 1], got {v!r}")
    return float(v)


def require_bool(obj: dict[str, Any], key: str) -> bool:
    v = obj.get(key)
    if not isinstance(v, bool):
        raise ValueError(f"field {key!r} must be true or false, got {v!r}")
    return v


def image_mime(data: bytes) -> str:
    """The MIME type of encoded image bytes, from their magic number (for data URLs)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    raise ValueError("unknown image format (expected PNG, JPEG, WebP or GIF bytes)")
