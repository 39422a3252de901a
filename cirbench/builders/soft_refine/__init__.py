"""SoFT-style refinement of an existing CIR benchmark into multi-target and single-target variants.

    from cirbench.builders.soft_refine import run_soft_refine
    run_soft_refine(config, Path("out/cirr-soft"), sources="cirr@val", shard=None, limit=None, progress=True)

Modules: config (settings, prompts) -> mining (embedding top-k, three query types) -> stages (LMM describe,
score, single-target rewrite, with offline stand-ins) -> export (native dataset, data card) ; pipeline runs
them per query as resumable, shardable units. Importing this package loads no torch.
"""

from cirbench.builders.core.workdir import BuildIncomplete
from cirbench.builders.soft_refine.pipeline import merge_soft_shards, run_soft_refine

__all__ = ["BuildIncomplete", "merge_soft_shards", "run_soft_refine"]
