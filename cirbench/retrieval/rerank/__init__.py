"""Second-stage rerankers that reorder a Run's head (e.g. `--rerank soft`, SoFT's soft filtering).

Each registers itself here with `register_reranker`; `cirbench.retrieval.base` has the interface.
"""

from cirbench.retrieval.base import register_reranker
from cirbench.retrieval.rerank import soft
from cirbench.retrieval.rerank.soft import (
    FORMULAS,
    MODES,
    Constraint,
    SoftReranker,
    constraint_scores,
    load_constraints,
    rerank_run,
    rerank_topk,
    soft_protocol,
    soft_scores,
)

register_reranker(soft.SPEC, soft._factory)

__all__ = ["FORMULAS", "MODES", "Constraint", "SoftReranker", "constraint_scores", "load_constraints",
           "rerank_run", "rerank_topk", "soft_protocol", "soft_scores"]
