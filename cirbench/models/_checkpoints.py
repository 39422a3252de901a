"""Reading research checkpoints (a state dict in one file) without running code from them.

The trained seed systems (HUG, MML-CLIP, ...) release `torch.save` files of a state dict, not
transformers directories. These helpers read one as safetensors, or with `torch.load(weights_only=True)`,
whose unpickler builds only tensors and plain containers (it refuses any other object, so a file cannot
run code), and check that the key layout is the released one before anything is assigned: a file from
another model is refused with one line that names it and the missing or unexpected keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or whose keys are not the layout the adapter loads."""


def find_checkpoint(target: str | os.PathLike[str], names: Iterable[str], what: str) -> Path:
    """The checkpoint file: `target` itself, or the first of `names` inside the directory `target`."""
    p = Path(os.path.expanduser(os.fspath(target)))
    if p.is_file():
        return p
    if p.is_dir():
        for name in names:
            if (p / name).is_file():
                return p / name
        found = sorted(f.name for f in p.iterdir() if f.name.endswith(WEIGHT_SUFFIXES))
        raise CheckpointError(f"{p}: no {what} checkpoint ({' or '.join(names)}) in this directory"
                              + (f"; it holds {found}" if found else ""))
    raise CheckpointError(f"{p}: no such file or directory ({what} checkpoint)")


def read_checkpoint(path: Path) -> Any:
    """The object saved in `path`: safetensors, or a torch pickle read with weights_only=True."""
    import torch

    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for a file that holds objects other than tensors, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot be read as tensors with torch.load(weights_only=True): "
                              f"{first}") from None


def state_dict_of(obj: Any, path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: `obj[key]` when the file wraps its state dict under `key`."""
    import torch

    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            top = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{path}: expected a dict with the state dict under {key!r}; found {top}")
        obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict (name -> tensor)")
    return {str(k): v for k, v in obj.items()}


def check_layout(path: Path, keys: Iterable[str], expected: Iterable[str], what: str,
                 optional: Iterable[str] = ()) -> None:
    """Refuse a state dict whose keys are not exactly `expected` (plus any of `optional`), naming them."""
    got, want, extra_ok = set(keys), set(expected), set(optional)
    missing = sorted(want - got)
    unexpected = sorted(got - want - extra_ok)
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} keys {_few(missing)}")
        if unexpected:
            detail.append(f"unexpected {len(unexpected)} keys {_few(unexpected)}")
        raise CheckpointError(f"{path} is not a {what} checkpoint in the released key layout: "
                              f"{'; '.join(detail)}")


def require_keys(path: Path, keys: Iterable[str], required: Iterable[str], what: str) -> None:
    """Refuse a state dict that lacks any of `required` (the keys the module tree is sized from)."""
    got = set(keys)
    missing = [k for k in required if k not in got]
    if missing:
        raise CheckpointError(f"{path} is not a {what} checkpoint in the released key layout: missing "
                              f"{len(missing)} keys {_few(missing)}")


def check_shapes(path: Path, state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor],
                 rename: Mapping[str, str], what: str) -> None:
    """Refuse tensors whose shapes differ from the model's (`rename`: checkpoint key -> model key)."""
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(model_state[m].shape)}"
             for k, m in sorted(rename.items()) if tuple(state[k].shape) != tuple(model_state[m].shape)]
    if wrong:
        raise CheckpointError(f"{path}: {len(wrong)} tensors do not fit the {what} configuration: "
                              f"{_few(wrong)}")


def _few(names: list[str], n: int = 4) -> str:
    return "[" + ", ".join(names[:n]) + (", ..." if len(names) > n else "") + "]"
