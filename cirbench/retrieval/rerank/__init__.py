"""Second-stage re-rankers that re-score a Run's top-K (e.g. `--rerank soft`, SoFT's soft filtering)."""

from cirbench.retrieval.rerank.soft import (
    FORMULAS,
    MODES,
    Constraint,
    constraint_scores,
    load_constraints,
    rerank_run,
    rerank_topk,
    soft_protocol,
    soft_scores,
)

__all__ = ["FORMULAS", "MODES", "Constraint", "constraint_scores", "load_constraints", "rerank_run",
           "rerank_topk", "soft_protocol", "soft_scores"]
