"""Retrievers and rerankers by name: importing the built-in modules registers them (no string imports).

`cirbench.retrieval.base` holds the interfaces and the tables; this module is what the CLI and users call,
and the only one that imports every built-in, so that no built-in module imports the others.
"""

from __future__ import annotations

from typing import Any

from cirbench.retrieval import late_interaction, rerank, rrf  # noqa: F401  (importing registers them)
from cirbench.retrieval.base import _RERANKERS, _RETRIEVERS, ComponentSpec, Reranker, Retriever, _get


def get_retriever(name: str, **options: Any) -> Retriever:
    return _get(_RETRIEVERS, "retriever", name, options)


def get_reranker(name: str, **options: Any) -> Reranker:
    return _get(_RERANKERS, "reranker", name, options)


def list_retrievers() -> list[ComponentSpec]:
    return [e.spec for _, e in sorted(_RETRIEVERS.items())]


def list_rerankers() -> list[ComponentSpec]:
    return [e.spec for _, e in sorted(_RERANKERS.items())]


__all__ = ["get_reranker", "get_retriever", "list_rerankers", "list_retrievers"]
