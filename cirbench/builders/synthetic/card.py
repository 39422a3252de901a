"""The data card (README.md with a Hugging Face front matter) and the contact sheet of example queries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cirbench.builders.core.card import write_card
from cirbench.builders.core.sheet import NEGATIVE, TARGET, Sheet
from cirbench.builders.synthetic.edits import SUBCATEGORIES, TAXONOMY
from cirbench.builders.synthetic.generate import BuiltQuery, BuiltSplit
from cirbench.core.datacard import size_category
from cirbench.core.dataset import QueryRecord
from cirbench.core.markdown import code, escape
from cirbench.core.types import Protocol

RENDERING: dict[str, str] = {
    "Color": "the object's fill colour (red, orange, yellow, green, blue, purple, pink).",
    "Material": "matte = plain colour with soft shading; metallic = light/dark reflective bands and a "
    "white four-pointed glint; glass = see-through fill (the background shows through) with "
    "a bright rim and highlight.",
    "Shape": "the object's outline: circle, square, triangle, star, hexagon or heart.",
    "Texture": "plain, striped (diagonal stripes), polka-dotted or checkered, in a darker or lighter "
    "shade of the object's colour.",
    "Addition": "a new object appears in a free slot of the row of five slots; its unmentioned "
    "attributes are free.",
    "Remove": "the object is gone; everything else stays in place.",
    "Replace": "a different object (another shape, possibly a given colour) stands in the same slot; "
    "its unmentioned attributes are free.",
    "Count": "the number of objects of one shape goes up (new ones in free slots) or down (some removed).",
    "Spatial": "an object moves to another slot (further left/right, one step, to the far left, beside "
    "or on one side of another object), or two objects swap slots; the others stay put.",
    "Action": "still = resting on the ground; rolling = tilted with horizontal speed lines trailing on "
    "its left; falling = lifted high above its shadow, tilted, speed lines above it; "
    "spinning = two curved arrows around it.",
    "Viewpoint": "front = sky above a horizon, objects standing on the ground; top-down = no sky, a "
    "tiled floor seen from above; close-up = the front view zoomed in 1.25x (edge objects "
    "are cropped).",
    "Style": "photo = gradients and shading; cartoon = flat colours with thick black outlines; pixel "
    "art = half resolution, blocky, reduced palette; sketch = pale paper, pencil outlines "
    "and hatching.",
    "Time": "day = blue sky and sun; sunset = orange sky, low sun, orange cast; night = dark sky, "
    "moon and stars, dark cast.",
    "Weather": "clear = sun or moon visible; rainy = grey clouds and rain streaks; snowy = clouds, "
    "snowflakes and a white ground; foggy = a whitish haze over everything.",
    "Complex": "two or three of the edits above at once, on different objects, at most one of them "
    "structural (Addition, Remove, Replace, Count, Spatial).",
}


def _counts_table(records: Mapping[str, Sequence[QueryRecord]]) -> str:
    names = list(records)
    counts = {s: Counter(q.subcategory for q in recs) for s, recs in records.items()}
    lines = ["| category | subcategory | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for sub in SUBCATEGORIES:
        lines.append(f"| {TAXONOMY[sub]} | {sub} | " + " | ".join(str(counts[s][sub]) for s in names) + " |")
    by_cat = {s: Counter(TAXONOMY[q.subcategory or ""] for q in recs) for s, recs in records.items()}
    for cat in dict.fromkeys(TAXONOMY.values()):
        lines.append(f"| **{cat}** | (all) | " + " | ".join(str(by_cat[s][cat]) for s in names) + " |")
    lines.append("| **total** | | " + " | ".join(str(len(records[s])) for s in names) + " |")
    return "\n".join(lines)


def _target_stats(recs: Sequence[QueryRecord]) -> str:
    n = np.array([len(q.relevant_ids) for q in recs])
    return (
        f"{len(recs)} queries; targets per query: mean {n.mean():.2f}, max {n.max()}, "
        f"{(n > 1).mean() * 100:.1f}% with more than one"
    )


def _examples(test: Sequence[QueryRecord], single: Sequence[QueryRecord], per: int = 3) -> str:
    single_by_parent = {q.meta.get("parent"): q for q in single}
    out = []
    for sub in SUBCATEGORIES:
        out.append(f"- **{sub}** ({TAXONOMY[sub]}): rendered as {RENDERING[sub]}")
        picked = [q for q in test if q.subcategory == sub][:per]
        for q in picked:
            s = single_by_parent.get(q.id)
            n = len(q.relevant_ids)
            line = f'  - "{escape(q.text)}" ({n} target{"s" if n > 1 else ""})'
            if s is not None and s.text != q.text:
                line += f'; single-target: "{escape(s.text)}"'
            out.append(line)
    return "\n".join(out)


def data_card(
    *,
    name: str,
    preset: str,
    seed: int,
    limit: int | None,
    records: Mapping[str, Sequence[QueryRecord]],
    corpus_sizes: Mapping[str, int],
    protocol: Protocol,
    license: str,
    render: Mapping[str, Any],
    split_configs: Mapping[str, Mapping[str, Any]],
) -> str:
    """README.md: front matter for the hub, then what is in the data, how it was made and how it is scored."""
    total = sum(len(r) for r in records.values())
    split_names = list(records)
    front = {
        "license": license, "pretty_name": f"cirbench synthetic CIR ({preset})",
        "task_categories": ["image-to-image", "text-to-image"],
        "tags": ["composed-image-retrieval", "image-retrieval", "synthetic", "multi-target", "cirbench"],
        "size_categories": [size_category(total)],
        "configs": [{"config_name": kind, "data_files": [{"split": s, "path": f"{s}/{kind}.parquet"}
                                                         for s in split_names]}
                    for kind in ("queries", "corpus")],
    }
    gen = "\n".join(
        f"- `{s}`: " + ", ".join(f"{k}={v}" for k, v in cfg.items()) for s, cfg in split_configs.items()
    )
    stats = "\n".join(
        f"- `{s}`: {_target_stats(r)}; gallery {corpus_sizes[s]} images" for s, r in records.items()
    )
    limited = f", limited to {limit} test queries" if limit else ""
    size = render.get("size", 128)
    return write_card(front=front, title=name, description=None, body=f"""
An embedded, fully synthetic Composed Image Retrieval (CIR) benchmark. A query is a reference image
plus a modification text; the task is to retrieve every gallery image that the text describes. Scenes
are drawn with PIL from scene graphs (objects with shape, colour, size, texture, material and motion in
a row of five slots; a background with time of day and weather; a rendering style; a camera view), so
the ground truth is exact: it is computed from the scene graphs, not from pixels or annotators.

- preset {code(preset)}, seed `{seed}`{limited}; deterministic: the same preset and seed give
  byte-identical files.
- images: {size}x{size} PNG in `<split>/corpus.parquet`, each with a caption generated from its scene
  graph (for caption-based, text-only baselines).
- built by `cirbench.builders.synthetic.build_synthetic` from `pipelines/synthetic.yaml`.

## Splits

- `test`: multi-target queries: every gallery image satisfying the text is relevant.
- `test_single`: the same queries with refined, single-target texts (SoFT-style): missing details of
  one chosen target are added, one at a time, until exactly one gallery image satisfies the text. Same
  gallery as `test`; the other multi-target images become hard negatives of the refined query.
- `train`: same generator, an independent random stream (seed, split), its own gallery; no train
  reference is a test gallery image. Meant for training fusion heads.

{stats}

## Taxonomy (EDIR: 5 categories, 15 subcategories), queries per split

{_counts_table(records)}

## Ground truth

Each text denotes a predicate over scenes relative to the reference: what the text mentions must hold,
and everything it does not mention stays exactly as in the reference. Texts are often underspecified
("add a triangle" says neither colour nor place; "no longer striped" allows three textures; "move it
further left" allows several slots), so several gallery images may satisfy one; all of them are
targets. The structured edit is stored in each query's `meta.edit.ops` (the op language is documented
in `cirbench/builders/synthetic/predicate.py`) and the scene graph of every gallery image in
`scenes/<split>.jsonl`, so anyone can re-check every target set. Every op demands a real change, so
the reference never satisfies its own query.

Hard negatives (`hard_negative_ids`, the reference first) are in the gallery on purpose: the reference
itself, partial edits (for Complex), a wrong value of the edited attribute, the edit applied to the
wrong object or to another attribute, an object added with the wrong shape or colour or in the wrong
place, the wrong object removed or moved, the wrong count. Each was verified not to satisfy the query.
A few random distractor scenes are added.

Generation settings:
{gen}

## Subcategories: how each is rendered, and example texts

{_examples(records.get("test", ()), records.get("test_single", ()))}

## Protocol

- metrics: {", ".join(protocol.metrics)}; main metric {protocol.main_metric}; ranking depth
  {protocol.top_k}.
- mAP@K normaliser: `{protocol.ap_normaliser}` (CIRCO's), over all targets of a query.
- reference kept: `exclude_reference: {str(protocol.exclude_reference).lower()}`. As in CIRCO's
  kept-reference protocol the reference image stays in the gallery and is not filtered out: it is a
  deliberate hard negative (returning the unmodified input is a typical failure).
- Recall@K on `test` is a hit rate (any target in the top K); `test_single` has exactly one target.
- per-category and per-subcategory scores use the taxonomy above (`cirbench.json` -> `taxonomy`).

## Files

- `cirbench.json`: manifest (protocol, taxonomy, splits, generator settings, revision hash).
- `<split>/queries.parquet`: id, reference_id, text, relevant_ids, hard_negative_ids, category,
  subcategory, meta (JSON: `reference_scene`, `edit` = structured ops and clauses, `templates`,
  `realized_targets`; single-target variants add `parent`, `base_text` and `pins`).
- `<split>/corpus.parquet`: id, image (PNG bytes), caption.
- `scenes/<split>.jsonl`: one gallery scene graph per line (`id`, style, time, weather, camera,
  objects).
- `contact_sheet.png`: one example per subcategory: reference | text | targets (green) | hard
  negatives (red).

## Limitations

Procedural 2D scenes are far simpler than photographs; the benchmark tests whether a model follows the
edit (attribute, object, relation, environment, compositions), not photographic realism. The
interpretations chosen for 2D (material, action, viewpoint) are described above.
""")


def contact_sheet(
    split: BuiltSplit,
    images: Mapping[str, bytes],
    examples: Sequence[BuiltQuery],
    texts: Sequence[str],
    thumb: int = 96,
    per_side: int = 3,
) -> bytes:
    """Rows of reference | text | targets | hard negatives, one per example query (PNG bytes)."""
    text_w, pad = 230, 6
    cols = 1 + per_side * 2
    W = pad + text_w + cols * (thumb + pad) + pad
    x_ref = pad
    x_text = x_ref + thumb + pad
    x_tg = x_text + text_w
    x_hn = x_tg + per_side * (thumb + pad)
    labels = ((x_ref, "reference"), (x_text, "text"), (x_tg, "targets"), (x_hn, "hard negatives"))
    sheet = Sheet(W, len(examples), thumb, pad, labels)

    def put(scene_id: str, x: int, y: int, border: tuple[int, int, int] | None) -> None:
        sheet.put(images[scene_id], x, y, border, fit="stretch")

    for row, (q, text) in enumerate(zip(examples, texts, strict=True)):
        y = sheet.row_y(row)
        put(split.id_of(q.draft.ref), x_ref, y, None)
        sheet.text(x_text, y, q.draft.edit.subcategory, text, 36)
        for k, pos in enumerate(q.relevant[:per_side]):
            put(split.ids[pos], x_tg + k * (thumb + pad), y, TARGET)
        for k, h in enumerate(q.draft.hard[:per_side]):
            put(split.id_of(h), x_hn + k * (thumb + pad), y, NEGATIVE)
    return sheet.png()
