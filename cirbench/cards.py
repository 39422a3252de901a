"""Data cards written from the task itself: one template, a YAML header the Hugging Face hub understands.

The generated sections (at a glance, sizes and category counts, protocol, pitfalls, citation) come from the
TaskSpec and, where the data is on disk, from the loaded splits. Hand-written notes live between the
`NOTES_START` / `NOTES_END` markers and survive regeneration; a card written before the markers existed has
its whole body kept as notes.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from cirbench.core.datacard import hub_license, size_category
from cirbench.core.io import atomic_write
from cirbench.core.types import DatasetError, Task
from cirbench.tasks.registry import TaskSpec, get_task, get_task_spec, list_tasks

NOTES_START = "<!-- cirbench:notes:start (hand-written; kept when the card is regenerated) -->"
NOTES_END = "<!-- cirbench:notes:end -->"

def _load_splits(spec: TaskSpec, data_dir: Path | None) -> dict[str, Task]:
    """Every split that can be loaded here; the others are simply absent from the card's size table."""
    out: dict[str, Task] = {}
    for split in spec.splits:
        try:
            out[split] = get_task(spec.name, split, data_dir=data_dir)
        except (DatasetError, FileNotFoundError, ValueError, KeyError):
            continue
    return out


def _md_table(header: list[str], rows: Iterable[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in rows
    ]
    return "\n".join(lines)


def render_card(family: str, specs: list[tuple[TaskSpec, dict[str, Task]]], notes: str = "") -> str:
    """One card for a benchmark family (e.g. the seven MMLandmarks tasks share one card)."""
    md = specs[0][0].metadata
    n_queries = max((len(t.queries) for _, splits in specs for t in splits.values()), default=0)
    header: dict[str, Any] = {
        "pretty_name": family,
        "license": hub_license(md.license),
        "task_categories": ["image-to-image", "image-feature-extraction"],
        "tags": ["composed-image-retrieval", "multimodal-retrieval", "benchmark", "cirbench"],
    }
    if n_queries:
        header["size_categories"] = [size_category(n_queries)]
    parts = [
        "---\n" + yaml.safe_dump(header, sort_keys=False).rstrip() + "\n---",
        f"# {family}",
        md.description or "",
        "## At a glance",
        f"Licence: {md.license}. Source: {md.source or '–'}.",
        _md_table(
            [
                "cirbench task",
                "splits",
                "protocols (first = official, default)",
                "query → corpus",
                "metrics",
                "size (documented)",
            ],
            [
                [
                    f"`{sp.name}`",
                    ", ".join(sp.splits),
                    ", ".join(f"`{p}`" for p in sp.protocols),
                    f"{sp.metadata.query_modality} → {sp.metadata.corpus_modality}",
                    _metrics_cell(sp),
                    sp.size or "–",
                ]
                for sp, _ in specs
            ],
        ),
    ]
    parts.append("## Sizes")
    loaded = [(sp, splits) for sp, splits in specs if splits]
    if loaded:
        parts.append(
            _md_table(
                ["task", "split", "queries", "gallery", "labels", "dataset revision"],
                [
                    [
                        sp.name,
                        s,
                        len(t.queries),
                        len(t.corpus),
                        "yes" if t.has_labels else "no (test server)",
                        f"`{t.revision}`",
                    ]
                    for sp, splits in loaded
                    for s, t in splits.items()
                ],
            )
        )
        for sp, splits in loaded:
            for split, t in splits.items():
                cats = Counter((q.category or "–", q.subcategory or "–") for q in t.queries)
                if len(cats) > 1:
                    parts.append(
                        f"Queries per category and subcategory in `{sp.name}/{split}`:\n\n"
                        + _md_table(
                            ["category", "subcategory", "queries"],
                            [[c, s, n] for (c, s), n in sorted(cats.items())],
                        )
                    )
    else:
        parts.append(
            "The data is not on the machine that wrote this card, so the sizes above are the "
            "documented ones; run `cirbench card` with `--data-dir` to count them. Expected layout: "
            f"{specs[0][0].layout or 'see the notes below'}."
        )
    for sp, splits in specs:
        first = next(iter(splits.values()), None)
        if first is None:
            continue
        p = first.protocol
        parts.append(
            f"## Protocol of `{sp.name}` (official)\n\n"
            + _md_table(
                ["field", "value"],
                [
                    ["name", p.name],
                    ["metrics", ", ".join(p.metrics)],
                    ["main metric", p.main_metric],
                    ["run depth (top K)", p.top_k],
                    ["AP normaliser", p.ap_normaliser],
                    ["reference excluded", p.exclude_reference],
                    ["gallery", p.gallery],
                    ["text template", f"`{p.text_template}`"],
                    [
                        "pseudo-token template",
                        f"`{p.pseudo_token_template}`" if p.pseudo_token_template else "–",
                    ],
                    ["caption join", p.caption_join or "–"],
                    [
                        "headline average",
                        "mean of the per-category values"
                        if p.aggregate == "categories"
                        else "mean over queries",
                    ],
                    *[[f"note: {k}", v] for k, v in p.notes.items()],
                ],
            )
        )
    if not loaded:
        parts.append(
            "## Protocol\n\nEvery result records the full protocol (gallery, exclusions, K values, "
            "AP normaliser, text templating); the named variants are listed above."
        )
    if md.pitfalls:
        parts.append("## Known pitfalls\n\n" + "\n".join(f"- {x}" for x in md.pitfalls))
    if md.citation:
        parts.append(f"## Citation\n\n```bibtex\n{md.citation.strip()}\n```")
    parts.append(
        f"{NOTES_START}\n{notes.strip()}\n{NOTES_END}" if notes.strip() else f"{NOTES_START}\n{NOTES_END}"
    )
    return "\n\n".join(x for x in parts if x) + "\n"


def _metrics_cell(spec: TaskSpec) -> str:
    """The default protocol's metrics, then each variant whose metrics differ."""
    cell = ", ".join(spec.metrics) or "–"
    for p in spec.protocols[1:]:
        if spec.metrics_for(p) != tuple(spec.metrics):
            cell += f"; `{p}`: {', '.join(spec.metrics_for(p))}"
    return cell


def existing_notes(path: Path) -> str:
    """Hand-written notes of an existing card: the marked block, or the whole body of an unmarked card."""
    if not path.is_file():
        return ""
    text = path.read_text()
    m = re.search(re.escape(NOTES_START) + r"\n?(.*?)\n?" + re.escape(NOTES_END), text, re.S)
    if m:
        return m.group(1)
    body = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)
    return body


def families() -> dict[str, list[TaskSpec]]:
    out: dict[str, list[TaskSpec]] = {}
    for spec in list_tasks():
        out.setdefault(spec.family or spec.name, []).append(spec)
    return out


def write_card(
    name: str, out_dir: Path, *, data_dir: Path | None = None, build_synthetic_full: bool = False
) -> Path:
    """Write the card of a task's family to `<out_dir>/<family>.md`, keeping its hand-written notes."""
    fams = families()
    family = name if name in fams else (get_task_spec(name).family or name)
    specs = fams[family]
    path = out_dir / f"{family}.md"
    loaded = [
        (sp, {} if sp.name == "synthetic-full" and not build_synthetic_full else _load_splits(sp, data_dir))
        for sp in specs
    ]
    text = render_card(family, loaded, existing_notes(path))
    with atomic_write(path) as f:
        f.write(text)
    return path


def write_all_cards(out_dir: Path) -> list[Path]:
    """Regenerate data_cards/: one card per benchmark family."""
    return [write_card(family, out_dir) for family in families()]
