"""A local vision-language model through transformers (e.g. Qwen2-VL / Qwen2.5-VL), by hub id or directory.

For a build on one machine without a server. Decoding is greedy (deterministic), requests run one at a time
under a lock (one model, one device), and answers are cached on disk like the HTTP client's. torch and
transformers are imported on first use.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cirbench.llm.base import LMMError, LMMRequest
from cirbench.llm.cache import ResponseCache, request_key


class LocalVLM:
    """`AutoModelForImageTextToText` + `AutoProcessor` with the model's own chat template."""

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        device: str = "cpu",
        dtype: str = "auto",
        max_new_tokens: int = 512,
        trust_remote_code: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.model_id, self.revision, self.device, self.dtype = model, revision, device, dtype
        self.max_new_tokens, self.trust_remote_code = int(max_new_tokens), trust_remote_code
        self.name = f"local:{model}"
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        self._lock = threading.Lock()
        self._model: Any = None
        self._processor: Any = None

    def fingerprint(self) -> dict[str, Any]:
        return {
            "backend": "local",
            "model": self.model_id,
            "revision": self.revision,
            "dtype": self.dtype,
            "max_new_tokens": self.max_new_tokens,
            "decoding": "greedy",
        }

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dtype: Any = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
        self._processor = AutoProcessor.from_pretrained(
            self.model_id, revision=self.revision, trust_remote_code=self.trust_remote_code
        )
        model: Any = AutoModelForImageTextToText.from_pretrained(
            self.model_id, revision=self.revision, dtype=dtype, trust_remote_code=self.trust_remote_code
        )
        self._model = model.to(self.device).eval()

    def _generate(self, request: LMMRequest) -> str:
        import torch
        from PIL import Image

        self._load()
        content: list[dict[str, Any]] = []
        images = []
        for p in request.parts:
            if isinstance(p, bytes):
                images.append(Image.open(io.BytesIO(p)).convert("RGB"))
                content.append({"type": "image"})
            else:
                content.append({"type": "text", "text": p})
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": content})
        prompt = self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self._processor(text=[prompt], images=images or None, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self._model.generate(
                **inputs, max_new_tokens=min(self.max_new_tokens, request.max_tokens), do_sample=False
            )
        new = out[:, inputs["input_ids"].shape[1] :]
        return str(self._processor.batch_decode(new, skip_special_tokens=True)[0])

    def complete(self, request: LMMRequest) -> str:
        key = request_key(
            {
                "fingerprint": self.fingerprint(),
                "system": request.system,
                "parts": [
                    p if isinstance(p, str) else {"image_sha256": request_key(p.hex())} for p in request.parts
                ],
                "max_tokens": request.max_tokens,
            }
        )
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return str(hit.get("content", ""))
        with self._lock:
            try:
                text = self._generate(request)
            except (RuntimeError, ValueError) as e:  # a failure in generation is not worth retrying
                raise LMMError(
                    f"{self.name}: generation failed: {type(e).__name__}: {e}", transient=False
                ) from e
        if self.cache is not None:
            self.cache.put(key, {"content": text})
        return text

    def complete_many(self, requests: Sequence[LMMRequest]) -> list[str | LMMError]:
        out: list[str | LMMError] = []
        for r in requests:
            try:
                out.append(self.complete(r))
            except LMMError as e:
                out.append(e)
        return out


def from_config(cfg: dict[str, Any], cache_dir: Path | None) -> LocalVLM:
    known = {"model", "revision", "device", "dtype", "max_new_tokens", "trust_remote_code"}
    unknown = set(cfg) - known
    if unknown:
        raise ValueError(f"lmm.local: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
    if not cfg.get("model"):
        raise ValueError("lmm.local.model is required (a hub id or a local directory)")
    return LocalVLM(cache_dir=cache_dir, **cfg)
