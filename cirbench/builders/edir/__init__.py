"""EDIR-style benchmark building: a pool of images -> edited targets -> verified CIR queries (native format).

    from cirbench.builders.edir import run_edir, merge_shards
    run_edir(config, Path("out/edir"), sources="folder:photos", shard=None, limit=None, progress=True)

Stages, one module each, in the order data flows: sources (pool, near-duplicates) -> instructions (LMM or
templates) -> editors (diffusers) -> verify (embedding + LMM checks) -> rewrite (CIR queries) -> negatives ->
export (dataset, data card, contact sheet, rejection log); pipeline runs them per source as resumable units
(workdir). Importing this package loads neither torch nor diffusers: the stages import them when they run.
"""

from cirbench.builders.edir.pipeline import BuildIncomplete, merge_shards, run_edir

__all__ = ["BuildIncomplete", "merge_shards", "run_edir"]
