"""Data-parallel encoding across processes and GPUs (`torchrun` / `accelerate launch`).

Each rank encodes its shard of the items that are not cached yet and writes it to the embedding cache; after
a barrier every rank reads the whole set back from the cache. The cache is the merge point, so a run under
torchrun gives exactly the vectors of a single-process run, and an interrupted multi-GPU encode resumes like
a single-process one. Only rank 0 writes result files.
"""

from __future__ import annotations

import os
import sys


def world() -> tuple[int, int]:
    """(rank, world size): from torch.distributed when initialised, else from the launcher's env vars.

    A process group exists only once torch is imported, so an eval that never imported torch (every vector
    cached) does not import it here either."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


DEVICE_FORMS = "cpu, cuda, cuda:N, mps or auto"


def check_device(device: str) -> None:
    """Refuse a device that is misspelt or absent, before a task is read or an item encoded."""
    d = device.strip().lower()
    kind, _, index = d.partition(":")
    if kind not in ("cpu", "cuda", "mps", "auto") or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"unknown device {device!r}; use {DEVICE_FORMS}")
    if kind in ("cpu", "auto"):
        return
    import torch

    if kind == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device {device!r} was asked for, but torch sees no CUDA GPU here "
                             "(use --device cpu, or check CUDA_VISIBLE_DEVICES and the torch build)")
        if index and int(index) >= n:
            raise ValueError(f"device {device!r} does not exist: torch sees {n} CUDA GPU(s), cuda:0 to "
                             f"cuda:{n - 1}")
    elif kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device {device!r} was asked for, but torch has no MPS backend here")


def init_from_env(device: str) -> str:
    """Join the process group a launcher set up (if any); returns this rank's device."""
    check_device(device)
    size = int(os.environ.get("WORLD_SIZE", 1))
    if size <= 1:
        return device
    import torch
    import torch.distributed as dist

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def barrier() -> None:
    if world()[1] > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
