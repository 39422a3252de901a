"""Encoders that load their weights on the first cache miss, so a fully cached re-eval loads no model.

Before its first vector, an eval needs two things from the encoder: its spec (recorded in the result) and its
fingerprint (the cache key). Each family computes them while it builds the encoder, and building means
loading the weights. So the first eval of a model records both in the cache root (`encoders/<key>.json`),
keyed by everything they are computed from: the model name and options, cirbench's own code (names, sizes
and mtimes of its files), the installed packages and their versions, the local files the name and options
point at and the hub snapshots the hub ids among them resolve to (names, sizes and mtimes, as the
fingerprints themselves identify local weights), the environment variables that steer loading, and the GPUs
torch sees. A later eval with the same key gets a `LazyEncoder`: the recorded spec and fingerprint, and the
real encoder, built on the first call that needs it (a cache miss, or a hook such as `for_task`).

That build checks the real fingerprint and spec against the record. Should they differ (a change the key
did not see), the record is removed and the eval stops with `StaleEncoderRecord` before any vector is
encoded under the wrong key: a stale record can cost one failed run, never a wrong number.

One mechanism for every registered alias and family (`family:target`); entry points and `package:factory`
plugins run code outside cirbench, so they are always built (their code is not in the key).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cirbench.core.io import write_json
from cirbench.models.base import OPTIONAL_HOOKS, Batch, Encoder, ModelSpec
from cirbench.models.registry import get_model, get_model_spec, model_kind

RECORD_FORMAT = 1
VALUE_HOOKS = ("needs_images", "vectors_by_id", "unit_vectors")
"""Hooks that are plain values, recorded with the spec, so asking for them loads nothing."""
ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH_", "CUDA_", "CIRBENCH_", "OPENCLIP",
                "XDG_CACHE_HOME", "SENTENCE_TRANSFORMERS")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class StaleEncoderRecord(ValueError):
    """The encoder built on a cache miss does not match its record (which is removed)."""


def load_model(name: str, cache_root: str | os.PathLike[str] | None, *, allow_plugins: bool = False,
               **options: Any) -> Encoder:
    """`get_model(name, **options)`, lazily where an earlier eval recorded this model under `cache_root`.

    Without a cache root (--no-cache: every vector is encoded anyway) or for a plugin, this is get_model.
    The first time, the encoder is built and its record written; later, a `LazyEncoder` comes back.
    """
    if cache_root is None or model_kind(name, allow_plugins=allow_plugins)[0] not in ("alias", "family"):
        return get_model(name, allow_plugins=allow_plugins, **options)
    key = request_key(name, options)
    path = Path(cache_root) / "encoders" / f"{key}.json"

    def build() -> Encoder:
        return get_model(name, allow_plugins=allow_plugins, **options)

    record = _read_record(path)
    if record is not None:
        return LazyEncoder(record, build, path)
    encoder = build()
    record = encoder_record(encoder)
    if record is not None:
        write_json(path, {"format": RECORD_FORMAT, "model": name, **record})
    return encoder


def encoder_record(encoder: Encoder) -> dict[str, Any] | None:
    """What a LazyEncoder stands in with: spec, fingerprint and hooks; None when JSON cannot hold them
    exactly (then the model is simply built every time)."""
    record = {"spec": encoder.spec.to_dict(), "fingerprint": encoder.fingerprint(),
              "hooks": [h for h in OPTIONAL_HOOKS if hasattr(encoder, h)],
              "values": {h: getattr(encoder, h) for h in VALUE_HOOKS if hasattr(encoder, h)}}
    try:
        exact = json.loads(json.dumps(record)) == record
    except (TypeError, ValueError):
        return None
    return record if exact else None


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # none yet, or unreadable: build and write it again
    ok = (isinstance(record, dict) and record.get("format") == RECORD_FORMAT
          and isinstance(record.get("spec"), dict) and isinstance(record.get("fingerprint"), dict))
    return record if ok else None


class LazyEncoder:
    """The recorded spec and fingerprint of a model; its weights load on the first call that needs them."""

    def __init__(self, record: Mapping[str, Any], build: Callable[[], Encoder], path: Path) -> None:
        d = dict(record["spec"])
        self.spec = ModelSpec(**{**d, "modalities": tuple(d.get("modalities", ()))})
        self._fingerprint = dict(record["fingerprint"])
        self._hooks = frozenset(record.get("hooks", ()))
        self._record = record
        self._build, self._path = build, path
        self._encoder: Encoder | None = None
        self._lock = threading.Lock()
        for name, value in dict(record.get("values", {})).items():
            setattr(self, name, value)

    @property
    def is_loaded(self) -> bool:
        return self._encoder is not None

    def fingerprint(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._fingerprint))  # a copy: callers may not change the record

    def loaded(self) -> Encoder:
        """The real encoder (built once, checked against the record)."""
        with self._lock:  # the decode threads may ask for `preprocess` at the same time
            if self._encoder is None:
                encoder = self._build()
                again = encoder_record(encoder)
                if again is None or any(again[k] != self._record.get(k) for k in again):
                    self._path.unlink(missing_ok=True)
                    raise StaleEncoderRecord(
                        f"model {self.spec.name!r} no longer matches what an earlier eval recorded for it in "
                        f"{self._path} (its fingerprint or spec changed in a way cirbench did not see); the "
                        "record is removed and nothing was encoded: run the eval again")
                self._encoder = encoder
            return self._encoder

    def encode(self, batch: Batch, *, role: Any, instruction: str | None = None) -> Any:
        return self.loaded().encode(batch, role=role, instruction=instruction)

    def __getattr__(self, name: str) -> Any:
        # only called for what the instance lacks: an optional hook the real encoder does not have is
        # absent here too (no load); anything else comes from the real encoder
        if name.startswith("_") or (name in OPTIONAL_HOOKS and name not in self._hooks):
            raise AttributeError(name)
        return getattr(self.loaded(), name)


# ------------------------------------------------------------------------------------------ the key

def request_key(name: str, options: Mapping[str, Any]) -> str:
    """Hash of everything a model's spec and fingerprint are computed from (see the module docstring)."""
    spec = get_model_spec(name)
    strings = [name, *(str(v) for v in options.values() if isinstance(v, str | os.PathLike))]
    if spec is not None:
        strings += [spec.id, *(str(v) for v in spec.extra.values() if isinstance(v, str))]
    blob = {
        "format": RECORD_FORMAT,
        "name": name,
        "options": {k: options[k] for k in sorted(options)},
        "spec": spec.to_dict() if spec is not None else None,
        "code": _tree_digest(Path(__file__).resolve().parent.parent),
        "packages": _packages(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)},
        "gpus": _gpus(),
        "files": _files(strings),
    }
    text = json.dumps(blob, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _tree_digest(root: Path) -> str:
    """Names, sizes and mtimes of every file under `root` (bytecode caches aside)."""
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(filenames):
            p = Path(dirpath) / f
            try:
                st = p.stat()
            except OSError:
                continue
            h.update(f"{p.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _packages() -> list[str]:
    """Every installed distribution, by its metadata folder's name (which carries name and version) and
    mtime: listing the folders is ~100x cheaper than parsing each one's METADATA."""
    found = []
    for entry in dict.fromkeys(sys.path):
        try:
            with os.scandir(entry or ".") as it:
                found += [f"{e.name}:{e.stat().st_mtime_ns}" for e in it
                          if e.name.endswith((".dist-info", ".egg-info", ".egg-link"))]
        except OSError:
            continue
    return sorted(found)


def _gpus() -> list[str]:
    """The accelerators a model could pick (device auto), without importing torch (2 s, more than a warm
    eval): the NVIDIA driver's boards and device nodes, ROCm's node, and the platform (Apple's MPS).
    CUDA_VISIBLE_DEVICES is among the recorded environment variables."""
    found = [platform.system(), platform.machine()]
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            found += [line for line in info.read_text().splitlines() if line.startswith("Model")]
        except OSError:
            continue
    found += sorted(p.name for p in Path("/dev").glob("nvidia[0-9]*"))
    found += ["/dev/kfd"] if Path("/dev/kfd").exists() else []
    return found


def _files(strings: list[str]) -> dict[str, Any]:
    """Digest of each local path, and the hub cache state of each hub id, among `strings` (and their
    parts after a `family:` / `local-dir:` prefix or an open_clip `NAME//file`)."""
    from cirbench.models._torch import local_digest

    found: dict[str, Any] = {}
    candidates: list[str] = []
    for s in strings:
        candidates += [s, s.split(":", 1)[-1], s.split("//", 1)[-1], s.split(":", 1)[-1].split("//", 1)[-1]]
    for s in dict.fromkeys(candidates):
        if not s:
            continue
        p = Path(os.path.expanduser(s))
        try:
            exists = p.exists()
        except OSError:
            exists = False
        if exists:
            found[f"path:{p.resolve()}"] = local_digest(p)
        elif _HUB_ID.match(s.removeprefix("hf-hub:")):
            found[f"hub:{s}"] = _hub_state(s.removeprefix("hf-hub:"))
    return found


def _hub_state(repo: str) -> dict[str, Any] | None:
    """Where each ref of a hub repo points in the local hub cache, and a digest of each snapshot."""
    from huggingface_hub.constants import HF_HUB_CACHE

    from cirbench.models._torch import local_digest

    root = Path(HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
    if not root.is_dir():
        return None
    refs = {p.relative_to(root / "refs").as_posix(): p.read_text().strip()
            for p in sorted((root / "refs").rglob("*")) if p.is_file()}
    snaps = {p.name: local_digest(p) for p in sorted((root / "snapshots").glob("*")) if p.is_dir()}
    return {"refs": refs, "snapshots": snaps}
