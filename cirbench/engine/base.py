"""The engine seam: what any engine does (`Engine.map`), what a stage asks of a worker (`Needs`), and the
local engine, which is today's behaviour (one worker: this process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

P = TypeVar("P")

ENGINES = ("local", "ray")

WorkerFactory = Callable[[], Callable[[list[Any]], list[Any]]]
"""Called once in each worker: loads what the stage holds (an editor, an LMM client) and returns the function
that turns a batch of items into their results, in order. On Ray it is pickled to the workers, so it must be
self-contained (a dataclass of plain settings, not a loaded model)."""


@dataclass(frozen=True)
class Needs:
    """What one worker of a stage holds. `gpus` applies where the cluster has GPUs (one worker per GPU for a
    diffusers editor); on a machine without, workers take `cpus` each."""

    gpus: float = 0.0
    cpus: float = 1.0


DEFAULT_NEEDS = Needs()


class EngineUnavailable(ImportError):
    """An engine whose package is not installed (a user error: one line, how to install it)."""


class Engine(Protocol):
    name: str

    def map(self, factory: WorkerFactory, items: Sequence[P], *, needs: Needs = DEFAULT_NEEDS,
            batch_size: int = 1) -> Iterator[tuple[P, Any]]:
        """(item, result) for every item, as each finishes (any order on Ray). Stopping the iteration early
        stops the work; results not yet taken are dropped (the caller writes only what it took)."""
        ...

    def workers(self, needs: Needs) -> int:
        """How many workers `map` runs for a stage with these needs (to share a concurrency limit)."""
        ...

    def close(self) -> None:
        """Release what the engine started (a Ray instance it launched); a no-op otherwise."""
        ...


class LocalEngine:
    """Everything in this process, in order: `factory()` once, then the items batch by batch."""

    name = "local"

    def map(self, factory: WorkerFactory, items: Sequence[P], *, needs: Needs = DEFAULT_NEEDS,
            batch_size: int = 1) -> Iterator[tuple[P, Any]]:
        if not items:
            return
        work = factory()
        step = max(1, batch_size)
        for a in range(0, len(items), step):
            batch = list(items[a:a + step])
            yield from zip(batch, work(batch), strict=True)

    def workers(self, needs: Needs) -> int:
        return 1

    def close(self) -> None:
        pass


def make_engine(name: str, *, address: str | None = None) -> Engine:
    """The engine `name` (`local` or `ray`); `address` is a Ray cluster's (else a local instance is started).

    Without Ray installed, `ray` raises EngineUnavailable saying how to install it."""
    if name == "local":
        if address is not None:
            raise ValueError("--ray-address needs --engine ray")
        return LocalEngine()
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise EngineUnavailable(
                "--engine ray needs Ray, which is not installed: pip install 'cirbench[ray]'") from None
        from cirbench.engine.ray_engine import RayEngine

        return RayEngine(address=address)
    from cirbench.core.options import did_you_mean

    raise ValueError(f"unknown engine {name!r}{did_you_mean(name, ENGINES)}; known: {', '.join(ENGINES)}")


__all__ = ["DEFAULT_NEEDS", "ENGINES", "Engine", "EngineUnavailable", "LocalEngine", "Needs", "WorkerFactory",
           "make_engine"]
