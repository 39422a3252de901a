"""Where per-item work runs: in this process (`local`, the default) or on a Ray cluster (`ray`).

A build's units and a method's artifacts are made the same way on either engine: the driver (this process)
lists what is missing, the engine runs `factory()` once per worker (a worker holds the models) and streams the
items through it, and the driver writes each finished item atomically as it comes back. So the work
directory, unit ids, per-item seeds and the bytes written do not depend on the engine; a killed run resumes
from what the driver had written, whichever engine ran it.

    engine = make_engine("ray", address=None)   # a local Ray instance, sized to this machine
    for item, result in engine.map(factory, items, needs=Needs(gpus=1), label="editing"):
        save(item, result)
"""

from __future__ import annotations

from cirbench.engine.base import (
    ENGINES,
    Engine,
    EngineUnavailable,
    LocalEngine,
    Needs,
    WorkerFactory,
    make_engine,
)

__all__ = ["ENGINES", "Engine", "EngineUnavailable", "LocalEngine", "Needs", "WorkerFactory", "make_engine"]
