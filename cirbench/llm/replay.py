"""The replay backend: answers read from a file of recorded responses, never from a model.

A run against a hosted LMM can be repeated exactly, by anyone, long after the model is retired: record the
answers once (`RecordingLMM` around any backend, or `write_replay`), ship the file, and replay it. Each
answer is keyed by `replay_key(request)`, the SHA-256 of the request as the model saw it (system prompt,
texts, SHA-256 of each image, decoding options), so a changed prompt or image finds no answer: the replay
refuses it in one line naming the file and the key instead of answering something else.

File format (JSON): {"format": "cirbench-replay/1", "responses": {key: text}}.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cirbench.core.io import write_json
from cirbench.core.types import DatasetError
from cirbench.llm.base import LMM, LMMError, LMMRequest, complete_many_threaded

REPLAY_FORMAT = "cirbench-replay/1"


def replay_key(request: LMMRequest) -> str:
    """The SHA-256 of a request's canonical form: what determines the answer, images by their digest."""
    parts: list[dict[str, str]] = []
    for p in request.parts:
        if isinstance(p, bytes):
            parts.append({"image_sha256": hashlib.sha256(p).hexdigest()})
        else:
            parts.append({"text": p})
    blob = {
        "system": request.system,
        "parts": parts,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "json_mode": request.json_mode,
    }
    if request.seed is not None:  # absent when unset, so files recorded before seeds existed still match
        blob["seed"] = request.seed
    return hashlib.sha256(json.dumps(blob, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_replay(path: str | os.PathLike[str], pairs: Iterable[tuple[LMMRequest, str]]) -> Path:
    """Write (request, answer) pairs as a replay file, atomically; returns the path."""
    responses = {replay_key(req): text for req, text in pairs}
    write_json(path, {"format": REPLAY_FORMAT, "responses": dict(sorted(responses.items()))})
    return Path(path)


class ReplayLMM:
    """An LMM whose answers are the recorded ones in `path`; an unrecorded request is refused."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            blob = self.path.read_bytes()
        except OSError as e:
            raise DatasetError(f"cannot read the replay file: {e.strerror or e}", file=self.path) from None
        try:
            data = json.loads(blob)
        except ValueError as e:
            raise DatasetError(f"replay file is not JSON: {e}", file=self.path) from None
        if not isinstance(data, dict) or data.get("format") != REPLAY_FORMAT:
            raise DatasetError(f"not a replay file (expected \"format\": \"{REPLAY_FORMAT}\")",
                               file=self.path, field="format")
        responses = data.get("responses")
        if not isinstance(responses, dict):
            raise DatasetError("'responses' must be an object {key: text}", file=self.path, field="responses")
        for key, text in responses.items():
            if not isinstance(text, str):
                raise DatasetError("a response must be a text", file=self.path, record=key, field="responses")
        self.responses: dict[str, str] = dict(responses)
        self.sha256 = hashlib.sha256(blob).hexdigest()
        self.name = f"replay:{self.path.name}"

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": "replay", "file": str(self.path), "sha256": self.sha256}

    def complete(self, request: LMMRequest) -> str:
        key = replay_key(request)
        try:
            return self.responses[key]
        except KeyError:
            raise LMMError(f"replay file {str(self.path)!r} has no response for request key {key}",
                           transient=False) from None

    def complete_many(self, requests: Sequence[LMMRequest]) -> list[str | LMMError]:
        return complete_many_threaded(self, requests, 1)


class RecordingLMM:
    """Any LMM, with each answer it gives kept for `save` (to make a replay file of a real run)."""

    def __init__(self, inner: LMM) -> None:
        self.inner = inner
        self.name = inner.name
        self.recorded: list[tuple[LMMRequest, str]] = []

    def fingerprint(self) -> dict[str, Any]:
        return self.inner.fingerprint()

    def complete(self, request: LMMRequest) -> str:
        text = self.inner.complete(request)
        self.recorded.append((request, text))
        return text

    def complete_many(self, requests: Sequence[LMMRequest]) -> list[str | LMMError]:
        replies = self.inner.complete_many(requests)
        self.recorded += [(r, t) for r, t in zip(requests, replies, strict=True) if isinstance(t, str)]
        return replies

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_replay(path, self.recorded)


__all__ = ["REPLAY_FORMAT", "RecordingLMM", "ReplayLMM", "replay_key", "write_replay"]
