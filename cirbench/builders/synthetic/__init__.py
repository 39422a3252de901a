"""The embedded synthetic CIR benchmark: procedural scenes, EDIR-style edits, exact multi-target ground truth.

    build_synthetic(yaml.safe_load(open("pipelines/synthetic.yaml")), "out/synthetic-mini", preset="mini")

Modules, in the order data flows: scene (scene graphs) -> edits (edit generators) + texts (wording)
-> predicate (edit semantics, gallery index) -> realize (targets) + negatives (near misses) -> generate
(splits, ground truth) -> refine (single-target texts) -> render (pixels) -> card (data card, contact
sheet) -> build (writing the native dataset).
"""

from cirbench.builders.synthetic.build import build_synthetic

__all__ = ["build_synthetic"]
