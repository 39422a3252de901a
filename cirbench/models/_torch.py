"""Shared helpers for the torch-based adapters: options, devices, dtypes, and loading weights safely.

Importing this module is cheap (torch is imported inside the functions), so adapters can import it at module
level while the CLI still starts fast.

Safety rules every adapter follows:
- weights come as safetensors (`use_safetensors=True`); pickled checkpoints (.bin/.pt/.pth) are refused
  unless the caller passes `allow_pickle=True`, because unpickling runs code;
- remote code runs only with an explicit `trust_remote_code=True`; a config that needs it is refused with a
  message that says so, instead of transformers' generic error;
- a checkpoint that leaves weights uninitialised (missing keys) is an error, never a silent random layer.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cirbench.core.options import Option, OptionTable, parse_options

if TYPE_CHECKING:
    import torch

    from cirbench.core.types import Item
    from cirbench.models.base import ModelSpec

DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "float": "float32", "f32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16", "f16": "float16",
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class RemoteCodeRefused(ValueError):
    """The model needs code from its repository, and the user did not allow it."""


class PickleRefused(ValueError):
    """The only weights available are a pickle, and the user did not allow it."""


# ----------------------------------------------------------------------------- options


def opt_str(value: Any) -> str | None:
    return None if value is None or (isinstance(value, str) and value.strip() == "") else str(value)


IMAGE_BACKENDS = ("pil", "torchvision")
"""How a transformers image processor resizes and normalises: PIL + numpy (transformers 4's default, which
the models' own code ran) or torchvision (transformers 5's default). Pixels differ by about 1e-4."""

REVISION = Option("revision", help="hub revision (commit, branch or tag); a local directory has none")
DEVICE = Option("device", help="cpu, cuda, cuda:N, mps or auto")
DTYPE = Option("dtype", help="float32, float16 or bfloat16 (the default depends on the family and device)")
TRUST_REMOTE_CODE = Option("trust_remote_code", "bool", "run Python code that ships with the checkpoint",
                           False)
ALLOW_PICKLE = Option("allow_pickle", "bool", "accept pickled weights (.bin/.pt), whose loading runs code",
                      False)
ATTN_IMPLEMENTATION = Option("attn_implementation", help="transformers attention kernel (eager, sdpa, ...)")


def adapter_target(name: str, spec: ModelSpec | None, model_id: str | None, options: Mapping[str, Any],
                   table: OptionTable) -> tuple[dict[str, Any], str, str | None]:
    """(options, source, revision) of what an adapter was asked to load, the same way for every adapter.

    Options are the spec's stored ones overridden by the caller's, parsed through the family's `table`
    (the registry did so for the caller's already; a class built directly is checked the same); the
    source is `model_id` or the spec's id; a local path has no revision (its files are fingerprinted).
    """
    opts = parse_options(f"the {name} adapter", {**stored_options(spec), **options}, table)
    source = model_id or (spec.id if spec else None)
    if not source:
        raise ValueError(f"{name} needs a hub id or a local directory")
    revision = None if is_local(source) else opt_str(opts.get("revision", spec.revision if spec else None))
    return opts, source, revision


def stored_options(spec: ModelSpec | None) -> dict[str, Any]:
    """Options an alias stores with its spec (`extra["options"]`, e.g. SigLIP2's lowercase=True)."""
    return dict((spec.extra.get("options") or {}) if spec else {})


def safety_options(opts: Mapping[str, Any]) -> tuple[bool, bool]:
    """(trust_remote_code, allow_pickle): both off unless the user turns them on (see the module doc)."""
    from cirbench.core.options import as_bool

    trc = as_bool(opts.get("trust_remote_code", False), "trust_remote_code")
    allow_pickle = as_bool(opts.get("allow_pickle", False), "allow_pickle")
    return trc, allow_pickle


# ----------------------------------------------------------------------------- device / dtype
def resolve_device(device: str | None) -> str:
    """'auto' picks cuda, then mps, then cpu; None means cpu (the eval flow's default)."""
    import torch

    d = (device or "cpu").strip().lower()
    if d == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but torch sees no CUDA device")
    return d


def canonical_dtype(dtype: str | None, default: str) -> str:
    """'bf16' -> 'bfloat16' etc.; None -> `default`."""
    name = (dtype or default).strip().lower().removeprefix("torch.")
    if name not in DTYPE_ALIASES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16")
    return DTYPE_ALIASES[name]


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        canonical_dtype(name, "float32")]


# ----------------------------------------------------------------------------- where weights live
def is_local(source: str | os.PathLike[str]) -> bool:
    return Path(os.path.expanduser(os.fspath(source))).exists()


def local_digest(path: str | os.PathLike[str]) -> str:
    """A cheap fingerprint of local weights: names, sizes and mtimes of the files (two levels deep).

    Reading gigabytes to hash them would cost more than a cache hit saves; replacing a file changes its
    size or mtime, which is what matters here.
    """
    p = Path(path)
    h = hashlib.sha1()
    files = [p] if p.is_file() else sorted(x for x in list(p.glob("*")) + list(p.glob("*/*")) if x.is_file())
    for f in files:
        st = f.stat()
        rel = f.name if p.is_file() else f.relative_to(p).as_posix()
        h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


_SNAPSHOT = re.compile(r"[/\\]snapshots[/\\]([0-9a-f]{40})[/\\]")


def resolved_commit(source: str, revision: str | None, filename: str = "config.json") -> str | None:
    """The commit a hub id + revision resolved to (read off the cached snapshot path); None for local dirs.

    Recorded so that a result run with revision="main" still says which weights it used.
    """
    if is_local(source):
        return None
    try:
        from transformers.utils import cached_file

        path = cached_file(source, filename, revision=revision, _raise_exceptions_for_missing_entries=False)
    except Exception:
        return None
    m = _SNAPSHOT.search(str(path)) if path else None
    return m.group(1) if m else None


def weights_fingerprint(source: str, revision: str | None) -> dict[str, Any]:
    """What identifies the weights: the commit for hub ids, a file digest for local paths."""
    if is_local(source):
        return {"local_digest": local_digest(os.path.expanduser(source))}
    return {"revision": revision, "commit": resolved_commit(source, revision)}


def check_local_weights(source: str, *, allow_pickle: bool = False) -> None:
    """Refuse a local transformers directory whose only weights are pickles (clear message, no unpickling)."""
    p = Path(os.path.expanduser(source))
    if not p.is_dir():
        return
    names = [f.name for f in p.iterdir() if f.is_file()]
    has_safe = any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names)
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if not has_safe and pickles and not allow_pickle:
        raise PickleRefused(
            f"{source} holds weights only as pickle files ({', '.join(sorted(pickles))}); loading a pickle "
            "can run arbitrary code. Convert them to safetensors, or pass allow_pickle=True if you trust "
            "the file.")


def config_dict(source: str, revision: str | None) -> dict[str, Any]:
    """The model's config.json as a dict (from a local dir or the hub), without instantiating anything."""
    from transformers import PretrainedConfig

    cfg, _ = PretrainedConfig.get_config_dict(source, revision=revision)
    return dict(cfg)


def check_remote_code(source: str, cfg: Mapping[str, Any], *, trust_remote_code: bool) -> None:
    """Refuse a config whose architecture exists only as code in its repository, unless allowed.

    A config with `auto_map` but a model_type transformers knows loads with the built-in class and needs
    no remote code, so it passes.
    """
    if trust_remote_code:
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = cfg.get("model_type")
    if "auto_map" in cfg and model_type not in CONFIG_MAPPING_NAMES:
        raise RemoteCodeRefused(
            f"{source} needs code from its repository (config.json has auto_map and model_type "
            f"{model_type!r}, which this transformers does not know). cirbench runs remote code only when "
            "asked: pass the option trust_remote_code=True if you have read that code and trust it.")


def checked_config(source: str, revision: str | None, *, trust_remote_code: bool, model_type: str,
                   needs: str) -> dict[str, Any]:
    """config.json, refused before any weights load when it needs remote code or is another architecture.

    `needs` completes the message "<source> has model_type X; <needs> (model_type '<model_type>')".
    """
    cfg = config_dict(source, revision)
    check_remote_code(source, cfg, trust_remote_code=trust_remote_code)
    if cfg.get("model_type") != model_type:
        raise ValueError(f"{source} has model_type {cfg.get('model_type')!r}; {needs} "
                         f"(model_type {model_type!r})")
    return cfg


def check_loading_info(source: str, info: Mapping[str, Any]) -> None:
    """Missing or mismatched keys mean randomly initialised layers: an error, not a warning in a log.

    Unexpected keys (an unused lm_head, say) are harmless and pass.
    """
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k) for k in (info.get("mismatched_keys") or ()))
    if missing or mismatched:
        detail = []
        if missing:
            detail.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if mismatched:
            detail.append(f"wrong shape {mismatched[:5]}{' ...' if len(mismatched) > 5 else ''}")
        raise ValueError(f"the checkpoint at {source} does not fit the model class: {'; '.join(detail)}")


@contextmanager
def safetensors_only(source: str, allow_pickle: bool) -> Any:
    """Turn transformers' "do not set use_safetensors=True" error into cirbench's pickle refusal."""
    try:
        yield
    except OSError as e:
        if allow_pickle or "safetensors" not in str(e):
            raise
        raise PickleRefused(
            f"{source} has no safetensors weights (only pickle files, if any); loading a pickle can run "
            "arbitrary code. Use a safetensors revision, or pass allow_pickle=True if you trust the files."
        ) from e


@contextmanager
def quiet_transformers() -> Any:
    """Silence transformers' load reports while cirbench checks the same facts itself."""
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)


def hf_kwargs(revision: str | None, trust_remote_code: bool) -> dict[str, Any]:
    """Arguments every from_pretrained call gets (the same call a hub id goes through)."""
    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision is not None:
        kw["revision"] = revision
    return kw


def load_pretrained(cls: Any, source: str, *, revision: str | None, dtype: str, trust_remote_code: bool,
                    allow_pickle: bool, attn_implementation: str | None = None) -> tuple[Any, dict[str, Any]]:
    """(model, weights fingerprint): `cls.from_pretrained` under the safety rules of the module docstring.

    Pickles are refused (before and during the load) unless allowed, transformers' own load report is
    silenced, and missing or mismatched keys are an error. The fingerprint identifies the weights in cache
    keys (`weights_fingerprint`). `dtype` is a name ("float32", "bf16", ...); `attn_implementation` is passed
    only when set, so the class's default applies otherwise.
    """
    check_local_weights(source, allow_pickle=allow_pickle)
    kw: dict[str, Any] = {"dtype": torch_dtype(dtype), "output_loading_info": True,
                          "use_safetensors": None if allow_pickle else True,
                          **hf_kwargs(revision, trust_remote_code)}
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    with quiet_transformers(), safetensors_only(source, allow_pickle):
        model, info = cls.from_pretrained(source, **kw)
    check_loading_info(source, info)
    return model, weights_fingerprint(source, revision)


def state_hash(obj: Any) -> str:
    """Short hash of a JSON-able description (a processor config), for fingerprints."""
    import json

    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- runtime and image backends


def transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


def transformers_major() -> int:
    return int(transformers_version().split(".")[0])


def runtime() -> dict[str, Any]:
    """The library versions a vector depends on beyond the weights, for fingerprints and results."""
    import torch

    return {"transformers": transformers_version(), "torch": str(torch.__version__).split("+")[0]}


def parse_image_backend(value: Any) -> str:
    name = str(value or "pil").strip().lower()
    if name not in IMAGE_BACKENDS:
        raise ValueError(f"unknown image_backend {value!r}; use one of {list(IMAGE_BACKENDS)} (pil: PIL and "
                         "numpy, as transformers 4 and the models' own code; torchvision: transformers 5's "
                         "default)")
    return name


IMAGE_BACKEND = Option("image_backend", "choice", "transformers image processor backend", "pil",
                       IMAGE_BACKENDS, parser=parse_image_backend)
LOADING: OptionTable = (REVISION, DEVICE, DTYPE, TRUST_REMOTE_CODE, ALLOW_PICKLE)
"""What every transformers-loaded family accepts."""


def backend_kwargs(backend: str) -> dict[str, Any]:
    """from_pretrained arguments that select an image processor backend on this transformers."""
    if transformers_major() >= 5:
        return {"backend": backend}
    return {"use_fast": backend == "torchvision"}


def image_backend(proc: Any) -> str:
    """The backend an image processor instance actually uses (read off its class hierarchy)."""
    names = {c.__name__ for c in type(proc).__mro__}
    return "torchvision" if names & {"TorchvisionBackend", "BaseImageProcessorFast"} else "pil"


def check_image_backend(proc: Any, wanted: str, source: str) -> None:
    """transformers falls back silently to the other backend when one is missing: refuse that instead."""
    got = image_backend(proc)
    if got != wanted:
        raise ValueError(f"{source}: asked for image_backend={wanted}, but transformers "
                         f"{transformers_version()} loaded {type(proc).__name__} ({got}); install "
                         f"{'torchvision' if wanted == 'torchvision' else 'pillow'} or pass "
                         f"image_backend={got}")


def processor_config(proc: Any) -> dict[str, Any]:
    """An image processor's / tokenizer's settings as a dict (what changes pixels or token ids)."""
    d: dict[str, Any] = {"class": type(proc).__name__}
    if "ImageProcessor" in type(proc).__name__:
        d["backend"] = image_backend(proc)
    to_dict = getattr(proc, "to_dict", None)
    if callable(to_dict):
        try:
            cfg = dict(to_dict())
        except Exception:
            cfg = {}
        for k in ("_processor_class", "processor_class", "auto_map", "name_or_path", "_commit_hash"):
            cfg.pop(k, None)
        d["hash"] = state_hash(cfg)
    return d


def to_numpy_f32(x: torch.Tensor) -> Any:
    """L2-normalised float32 rows as numpy (normalising in float32 keeps bf16/fp16 outputs unit-length)."""
    import torch

    x = torch.nn.functional.normalize(x.detach().float(), p=2, dim=-1)
    return x.cpu().numpy()


def check_item(item: Item, image: Any) -> None:
    """An item must have something to embed, and an image item its decoded image (errors name the item)."""
    from cirbench.core.types import DatasetError

    if item.image is None and item.text is None:
        raise DatasetError("item has neither image nor text", record=item.id)
    if item.image is not None and image is None:
        raise DatasetError("batch carries no decoded image for an item that has one", record=item.id,
                           field="image")
