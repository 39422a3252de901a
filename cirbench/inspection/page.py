"""The inspect page: one self-contained HTML file of per-query cases with filters (Jinja2, autoescaped)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cirbench
from cirbench.colours import model_colours
from cirbench.inspection.cases import Answer, Case, Hit
from cirbench.inspection.thumbs import Thumbs
from cirbench.templating import asset, content_security_policy, environment

PACKAGE = "cirbench.inspection"


@dataclass
class Thumb:
    id: str
    key: str
    """Key into the page's thumbnail table; "" when the image cannot be shown."""
    caption: str = ""
    classes: str = ""
    title: str = ""


@dataclass
class AnswerView:
    model: str
    colour: str
    rank: str
    success: bool
    hits: list[Thumb]


@dataclass
class CaseView:
    id: str
    text: str
    category: str
    subcategory: str
    fail: bool
    ranks: str
    """Space-separated first-target ranks of the answers ("inf" when not found), for the rank filter."""
    search: str
    winner: str
    """For --vs: "a" when only the first model succeeds, "b" when only the second does."""
    reference: Thumb | None
    answers: list[AnswerView]
    targets: list[Thumb]
    hard_negatives: list[Thumb]


@dataclass
class PageInfo:
    """What the page says about itself: the task, the models, how the cases were chosen."""

    task: str
    split: str
    protocol: str
    models: list[str]
    result_paths: list[str]
    success_at: int
    top: int
    n_total: int
    """Queries before sampling (after the --vs selection and the command-line filters)."""
    n_task: int
    seed: int
    selection: str
    """How the cases were chosen, in words (filters, --vs disagreements)."""
    budget: int
    notes: list[str] = field(default_factory=list)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _rank(r: int | None) -> str:
    return "not found" if r is None else str(r)


def _hit(hit: Hit, thumbs: Thumbs) -> Thumb:
    tags = [t for t, on in (("target", hit.target), ("hard negative", hit.hard_negative),
                            ("reference", hit.reference)) if on]
    classes = " ".join(t.replace(" ", "-") for t in tags)
    caption = f"#{hit.rank} · {hit.score:.3f}"
    title = f"{hit.id}: rank {hit.rank}, score {hit.score:.4f}" + (f" ({', '.join(tags)})" if tags else "")
    return Thumb(hit.id, thumbs.keys.get(hit.id, ""), caption, classes, title)


def _answer(a: Answer, colour: str, thumbs: Thumbs) -> AnswerView:
    hits = [_hit(h, thumbs) for h in a.hits]
    return AnswerView(a.model, colour, _rank(a.first_target_rank), a.success, hits)


def case_view(c: Case, thumbs: Thumbs, colours: dict[str, str], *, max_extra: int) -> CaseView:
    ranks = " ".join("inf" if a.first_target_rank is None else str(a.first_target_rank) for a in c.answers)
    winner = ""
    if len(c.answers) == 2 and c.answers[0].success != c.answers[1].success:
        winner = "a" if c.answers[0].success else "b"
    ranked = {h.id: h.rank for a in c.answers for h in a.hits}

    def extra(ids: Sequence[str], kind: str) -> list[Thumb]:
        out = []
        for i in ids[:max_extra]:
            where = f"#{ranked[i]}" if i in ranked else "not in top"
            title = f"{i} ({kind.replace('-', ' ')}, {where})"
            out.append(Thumb(i, thumbs.keys.get(i, ""), where, kind, title))
        return out

    ref = None if c.reference_id is None else Thumb(c.reference_id, thumbs.keys.get(c.reference_id, ""),
                                                     "reference", "query-ref", c.reference_id)
    return CaseView(
        id=c.query_id, text=c.text, category=c.category or "", subcategory=c.subcategory or "",
        fail=not all(a.success for a in c.answers), ranks=ranks, search=c.search_text(), winner=winner,
        reference=ref, answers=[_answer(a, colours[a.model], thumbs) for a in c.answers],
        targets=extra(c.target_ids, "target"), hard_negatives=extra(c.hard_negative_ids, "hard-negative"),
    )


def render_page(cases: Sequence[Case], thumbs: Thumbs, info: PageInfo, *, max_extra: int = 4) -> str:
    colours = model_colours(info.models)
    views = [case_view(c, thumbs, colours, max_extra=max_extra) for c in cases]
    summary = []
    for i, m in enumerate(info.models):
        own = [c.answers[i] for c in cases]
        summary.append({
            "model": m, "colour": colours[m], "path": info.result_paths[i],
            "fail": sum(not a.success for a in own),
            "ref_first": sum(bool(a.hits) and a.hits[0].reference for a in own),
            "not_found": sum(a.first_target_rank is None for a in own),
        })
    script = asset(PACKAGE, "inspect.js")
    cats = sorted({v.category for v in views if v.category})
    subs = sorted({v.subcategory for v in views if v.subcategory})
    return environment(PACKAGE).get_template("inspect.html.j2").render(
        csp=content_security_policy(script), style=asset(PACKAGE, "inspect.css"), script=script,
        version=cirbench.__version__, info=info, cases=views, summary=summary, categories=cats,
        subcategories=subs, thumbs=thumbs.uris, thumb_px=thumbs.px, thumb_quality=thumbs.quality,
        thumb_size=_size(thumbs.total_bytes), budget_size=_size(info.budget), missing=len(thumbs.missing),
        vs=len(info.models) == 2,
    )
