"""The parts a method is built from, each with an id, a revision and a fingerprint: LMMs and Captioners.

A method config names its components by kind, never by code. An LMM is `{backend: openai | local | replay,
...}`: the cirbench.llm backends, plus replay from a recorded file. A Captioner is `{kind: blip2, model:
...}` (BLIP-2 through transformers) or `{kind: lmm, lmm: {...}}` (any LMM asked to describe the image).
Encoders come from the model registry by name. Every fingerprint goes into the artifact keys and the
result, so an artifact is reused only by the exact component that made it.
"""

from __future__ import annotations

import io
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cirbench.llm.base import LMM, LMMError, LMMRequest

LMM_BACKENDS = ("openai", "local", "replay")
CAPTIONER_KINDS = ("blip2", "lmm")


@dataclass(frozen=True)
class Decoding:
    """How a stage decodes, exactly as sent: part of every artifact key and of the result."""

    max_tokens: int = 700
    temperature: float = 0.0
    top_p: float | None = None
    num_beams: int = 1
    n: int = 1
    """Outputs per item (LDRE: 15 sampled captions per reference image)."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.n < 1 or self.num_beams < 1:
            raise ValueError(f"decoding: max_tokens, n and num_beams must be >= 1, got {self.record()}")
        if self.temperature < 0 or (self.top_p is not None and not 0 < self.top_p <= 1):
            raise ValueError(f"decoding: temperature must be >= 0 and top_p in (0, 1], got {self.record()}")

    @property
    def sampling(self) -> bool:
        return self.temperature > 0 or self.top_p is not None

    def record(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "num_beams": self.num_beams,
            "n": self.n,
        }


def usage(component: Any) -> dict[str, float]:
    """The counters a component keeps (calls, tokens in and out), to charge a stage with their growth."""
    stats = getattr(component, "stats", None)
    if not isinstance(stats, dict):
        return {}
    return {k: float(stats[k]) for k in ("tokens_in", "tokens_out") if isinstance(stats.get(k), int | float)}


# ------------------------------------------------------------------------------------------ captioners


@runtime_checkable
class Captioner(Protocol):
    """Image -> n captions; one seed per image, so an image's captions never depend on its batch."""

    name: str
    calls_per_caption: str
    """What one caption costs, for `cirbench methods`: 'lmm_calls' or 'captioner_calls'."""

    def fingerprint(self) -> dict[str, Any]: ...

    def caption(
        self, images: Sequence[bytes], prompt: str, decoding: Decoding, seeds: Sequence[int]
    ) -> list[list[str]]: ...


class LMMCaptioner:
    """Any LMM asked to describe the image: one request per caption (the n-th with seed + n)."""

    calls_per_caption = "lmm_calls"

    def __init__(self, lmm: LMM) -> None:
        self.lmm = lmm
        self.name = f"lmm-captioner:{lmm.name}"
        self.stats = getattr(lmm, "stats", None)

    def fingerprint(self) -> dict[str, Any]:
        return {"component": "lmm-captioner", "lmm": self.lmm.fingerprint()}

    def caption(
        self, images: Sequence[bytes], prompt: str, decoding: Decoding, seeds: Sequence[int]
    ) -> list[list[str]]:
        reqs = [
            LMMRequest(
                parts=(prompt, img),
                max_tokens=decoding.max_tokens,
                temperature=decoding.temperature,
                json_mode=False,
                seed=(seed + j) if decoding.n > 1 else seed,
            )
            for img, seed in zip(images, seeds, strict=True)
            for j in range(decoding.n)
        ]
        replies = self.lmm.complete_many(reqs)
        out: list[list[str]] = []
        for i in range(len(images)):
            group = replies[i * decoding.n : (i + 1) * decoding.n]
            for r in group:
                if isinstance(r, LMMError):
                    raise LMMError(f"captioning image {i} of the batch: {r}", transient=r.transient)
            out.append([" ".join(str(r).split()) for r in group])
        return out


class Blip2Captioner:
    """BLIP-2 (`Blip2ForConditionalGeneration`: OPT or Flan-T5 decoder) by hub id or directory.

    Each image is generated alone under its own seed (`torch.manual_seed`), so its captions are the same in
    any batch, shard or order; `n` captions come from one `generate` with `num_return_sequences=n`. The
    prompt (empty for LDRE's plain captions) is removed from the front of decoder-only outputs.
    """

    calls_per_caption = "captioner_calls"

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        trust_remote_code: bool = False,
    ) -> None:
        from cirbench.models import _torch as T

        self.source, self.revision = str(model), revision
        self.device, self.dtype = T.resolve_device(device), T.canonical_dtype(dtype, "float32")
        self.name = f"blip2-captioner:{self.source}"
        T.checked_config(
            self.source,
            revision,
            trust_remote_code=trust_remote_code,
            model_type="blip-2",
            needs="the blip2 captioner needs a BLIP-2 captioning checkpoint",
        )
        self._trc = trust_remote_code
        self._model: Any = None
        self._processor: Any = None
        self.weights = T.weights_fingerprint(self.source, revision)

    def fingerprint(self) -> dict[str, Any]:
        from cirbench.models import _torch as T

        return {
            "component": "blip2-captioner",
            "model": self.source,
            **self.weights,
            "dtype": self.dtype,
            "runtime": T.runtime(),
        }

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        from cirbench.models import _torch as T

        model, _ = T.load_pretrained(
            Blip2ForConditionalGeneration,
            self.source,
            revision=self.revision,
            dtype=self.dtype,
            trust_remote_code=self._trc,
            allow_pickle=False,
        )
        with T.quiet_transformers():
            self._processor = Blip2Processor.from_pretrained(
                self.source, **T.hf_kwargs(self.revision, self._trc)
            )
        self._model = model.to(self.device).eval()

    def caption(
        self, images: Sequence[bytes], prompt: str, decoding: Decoding, seeds: Sequence[int]
    ) -> list[list[str]]:
        import torch
        from PIL import Image

        self._load()
        out: list[list[str]] = []
        for data, seed in zip(images, seeds, strict=True):
            img = Image.open(io.BytesIO(data)).convert("RGB")
            inputs = self._processor(images=img, text=prompt or None, return_tensors="pt").to(self.device)
            kw: dict[str, Any] = {
                "max_new_tokens": decoding.max_tokens,
                "num_beams": decoding.num_beams,
                "num_return_sequences": decoding.n,
                "do_sample": decoding.sampling,
            }
            if decoding.sampling:
                kw["temperature"] = decoding.temperature or 1.0
                if decoding.top_p is not None:
                    kw["top_p"] = decoding.top_p
            torch.manual_seed(seed % (2**63))
            with torch.no_grad():
                ids = self._model.generate(**inputs, **kw)
            texts = self._processor.batch_decode(ids, skip_special_tokens=True)
            out.append(
                [" ".join(t.removeprefix(prompt).split()) if prompt else " ".join(t.split()) for t in texts]
            )
        return out


# ------------------------------------------------------------------------------------------ factories


def _kind(cfg: Any, where: str, key: str, known: Sequence[str], article_noun: str, noun: str) -> Any:
    """The value of the key that says what a config section builds, refused with a suggestion if unknown."""
    from cirbench.core.options import did_you_mean

    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where}: {article_noun} is a mapping with a {key!r} key, not {type(cfg).__name__}")
    value = cfg.get(key)
    if value not in known:
        raise ValueError(
            f"{where}.{key}: unknown {noun} {value!r}{did_you_mean(str(value), known)}; "
            f"known: {', '.join(known)}"
        )
    return value


def build_lmm(cfg: Mapping[str, Any], where: str, *, base: Path | None = None) -> LMM:
    """The LMM a config section names: `{backend: openai|local|replay, ...}`."""
    backend = _kind(cfg, where, "backend", LMM_BACKENDS, "an LMM", "LMM backend")
    opts = {k: v for k, v in cfg.items() if k != "backend"}
    try:
        if backend == "openai":
            from cirbench.llm.openai_client import from_config

            opts.setdefault("json_mode", False)
            return from_config(opts, None)
        if backend == "local":
            from cirbench.llm.local import from_config as local_from_config

            return local_from_config(opts, None)
        from cirbench.llm.replay import ReplayLMM

        unknown = set(opts) - {"file"}
        if unknown or "file" not in opts:
            raise ValueError(f"the replay backend takes exactly 'file' (a replay file), got {sorted(opts)}")
        path = Path(str(opts["file"]))
        return ReplayLMM(path if path.is_absolute() or base is None else base / path)
    except TypeError as e:  # an unknown keyword of a backend's constructor
        raise ValueError(f"{where}: {e}") from None
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def build_captioner(
    cfg: Mapping[str, Any], where: str, *, device: str = "cpu", base: Path | None = None
) -> Captioner:
    """`{kind: blip2, model: ID_OR_DIR[, revision, dtype]}` or `{kind: lmm, lmm: {backend: ...}}`."""
    kind = _kind(cfg, where, "kind", CAPTIONER_KINDS, "a captioner", "captioner")
    if kind == "lmm":
        extra = set(cfg) - {"kind", "lmm"}
        if extra:
            raise ValueError(f"{where}: an lmm captioner takes only 'lmm', not {sorted(extra)}")
        return LMMCaptioner(build_lmm(cfg.get("lmm") or {}, f"{where}.lmm", base=base))
    known = {"kind", "model", "revision", "dtype", "trust_remote_code"}
    extra = set(cfg) - known
    if extra:
        raise ValueError(
            f"{where}: unknown blip2 captioner option(s) {sorted(extra)}; known: {sorted(known)}"
        )
    if not cfg.get("model"):
        raise ValueError(f"{where}.model: the blip2 captioner needs a hub id or directory")
    return Blip2Captioner(
        str(cfg["model"]),
        revision=cfg.get("revision"),
        device=device,
        dtype=str(cfg.get("dtype", "float32")),
        trust_remote_code=bool(cfg.get("trust_remote_code", False)),
    )


DIFFUSION_KEYS = ("model", "revision", "dtype", "variant", "size", "call")


def _diffusion_options(cfg: Mapping[str, Any], where: str, what: str, default: str) -> dict[str, Any]:
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where}: {what} is a mapping with a 'model' key, not {type(cfg).__name__}")
    from cirbench.core.options import did_you_mean

    for k in cfg:
        if k not in DIFFUSION_KEYS:
            raise ValueError(f"{where}.{k}: unknown {what} option{did_you_mean(str(k), DIFFUSION_KEYS)}; "
                             f"known: {', '.join(DIFFUSION_KEYS)}")
    call = cfg.get("call") or {}
    if not isinstance(call, Mapping):
        raise ValueError(f"{where}.call: the pipeline's call arguments must be a mapping")
    try:
        size = int(cfg.get("size", 512))
    except (TypeError, ValueError):
        raise ValueError(f"{where}.size: {cfg.get('size')!r} is not a whole number of pixels") from None
    if size < 8:
        raise ValueError(f"{where}.size: {size} px is too small")
    return {"model": str(cfg.get("model") or default), "revision": cfg.get("revision"),
            "dtype": str(cfg.get("dtype", "auto")), "variant": cfg.get("variant"), "size": size,
            "call": dict(call)}


def build_editor(cfg: Mapping[str, Any], where: str, *, device: str = "cpu") -> tuple[Any, int]:
    """`{model: ID_OR_DIR_OR_SHORT_NAME[, revision, dtype, size, call]}` -> (a diffusers editor, edit size).

    Short names: qwen-image-edit (the default), flux-kontext, instruct-pix2pix. One image per call, so a
    batch can never change an edit."""
    from cirbench.models.diffusion import DEFAULT_EDITOR, EDITOR_IDS, DiffusersEditor

    o = _diffusion_options(cfg, where, "an editor", DEFAULT_EDITOR)
    model = EDITOR_IDS.get(o["model"], o["model"])
    editor = DiffusersEditor(model, revision=o["revision"], device=device, dtype=o["dtype"], batch_size=1,
                             call=o["call"], variant=o["variant"])
    return editor, int(o["size"])


def build_t2i(cfg: Mapping[str, Any], where: str, *, device: str = "cpu") -> Any:
    """`{model: ID_OR_DIR[, revision, dtype, size, call]}` -> a diffusers text-to-image generator."""
    from cirbench.models.diffusion import DEFAULT_T2I, DiffusersTextToImage

    o = _diffusion_options(cfg, where, "a text-to-image generator", DEFAULT_T2I)
    return DiffusersTextToImage(o["model"], size=o["size"], revision=o["revision"], device=device,
                                dtype=o["dtype"], batch_size=1, call=o["call"], variant=o["variant"])


def library_versions() -> dict[str, str]:
    """The libraries a method's outputs depend on beyond its components' weights (reproducibility record)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("cirbench", "torch", "transformers", "open_clip_torch", "numpy", "httpx"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


__all__ = [
    "CAPTIONER_KINDS",
    "LMM_BACKENDS",
    "Blip2Captioner",
    "Captioner",
    "Decoding",
    "LMMCaptioner",
    "build_captioner",
    "build_editor",
    "build_lmm",
    "build_t2i",
    "library_versions",
    "usage",
]
