"""The inspect page in a real headless Chromium: no console error, thumbnails decode, every filter shows
the cases the hand counts (and the command-line filters) say, hostile text stays text, a screenshot is
taken (kept under $CIRBENCH_SCREENSHOT_DIR when set)."""

from __future__ import annotations

import json
from pathlib import Path

from cirbench.core.result import Result
from cirbench.inspection import Filters, inspect_results

from .browser import DevTools, browser, needs_chromium, open_page, problems, screenshot  # noqa: F401
from .inspect_fixture import HOSTILE
from .test_inspect import Runs, runs  # noqa: F401  (the module fixture, reused)

pytestmark = needs_chromium

VISIBLE = ("Array.from(document.querySelectorAll('article.case')).filter(a => !a.hidden)"
           ".map(a => a.querySelector('.qid').textContent)")


def set_filter(tools: DevTools, element: str, value: str | bool) -> None:
    """Change a control as a user would and let the page's own handler run (an `input` event)."""
    prop = "checked" if isinstance(value, bool) else "value"
    tools.js(f"(() => {{ const el = document.getElementById({json.dumps(element)}); el.{prop} = "
             f"{json.dumps(value)}; el.dispatchEvent(new Event('input', {{bubbles: true}})); }})()")


def test_inspect_page_filters(runs: Runs, browser: DevTools, tmp_path: Path) -> None:  # noqa: F811
    done = inspect_results(Result.read(runs.mixed), out=tmp_path / "page")
    open_page(browser, done.page)
    assert browser.js("document.documentElement.getAttribute('data-ready')") == "1"  # its script ran (CSP)
    assert browser.js("document.documentElement.getAttribute('data-shown')") == "12"
    # every thumbnail was filled from the page's table; those in view decoded (the rest load lazily)
    sources = browser.js("Array.from(document.querySelectorAll('img[data-t]')).map(i => i.src.slice(0, 23))")
    assert len(sources) > 12 * 7 and set(sources) == {"data:image/jpeg;base64,"}
    first = browser.js("Array.from(document.querySelector('article.case').querySelectorAll('img'))"
                       ".map(i => [i.complete, i.naturalWidth])")
    assert len(first) == 8 and all(ok and w == 24 for ok, w in first), first  # ref, top 5, target, hard neg.
    # the hostile query text is text on the page; no element came out of it
    assert browser.js(f"document.body.textContent.includes({json.dumps(HOSTILE)})")
    assert browser.js("document.querySelectorAll('img[src=\"x\"], img:not([data-t])').length") == 0
    assert browser.js("document.querySelectorAll('script').length") == 2

    def visible() -> list[str]:
        return browser.js(VISIBLE)

    def python(f: Filters) -> list[str]:  # the same filter on the command-line side, in page order
        return [c.query_id for c in done.cases if f.keep(c)]

    steps: list[tuple[str, str | bool, Filters, list[str]]] = [
        ("f-fail", True, Filters(failures_only=True), ["q5", "q3", "q11", "q1", "q9", "q7"]),
        ("f-cat", "Even", Filters(failures_only=True, category="Even"), []),
        ("f-fail", False, Filters(category="Even"), ["q0", "q2", "q4", "q6", "q8", "q10"]),
        ("f-cat", "", Filters(), [c.query_id for c in done.cases]),
        ("f-sub", "S2", Filters(subcategory="S2"), ["q5", "q11", "q2", "q8"]),
        ("f-sub", "", Filters(), [c.query_id for c in done.cases]),
        ("f-min", "3", Filters(rank_min=3), ["q5", "q3", "q11", "q1", "q9"]),
        ("f-max", "5", Filters(rank_min=3, rank_max=5), ["q3", "q11", "q1", "q9"]),
        ("f-min", "", Filters(rank_max=5), [c.query_id for c in done.cases if c.query_id != "q5"]),
        ("f-max", "", Filters(), [c.query_id for c in done.cases]),
        ("f-text", "COLOUR 4", Filters(search="COLOUR 4"), ["q3", "q11"]),
        ("f-text", "onerror", Filters(search="onerror"), ["q4"]),
    ]
    for element, value, f, expected in steps:
        set_filter(browser, element, value)
        assert visible() == python(f) == expected, (element, value)
        assert browser.js("document.getElementById('shown').textContent") == str(len(expected))
    set_filter(browser, "f-text", "")
    set_filter(browser, "f-fail", True)
    target = screenshot(browser, tmp_path / "inspect.png")
    from PIL import Image

    with Image.open(target) as im:
        assert im.size[0] >= 800 and len(im.convert("RGB").getcolors(1 << 20) or []) > 20
    found = problems(browser.events)
    assert not found, found


def test_inspect_vs_page_filters(runs: Runs, browser: DevTools, tmp_path: Path) -> None:  # noqa: F811
    done = inspect_results(Result.read(runs.good), Result.read(runs.mixed), out=tmp_path / "vs")
    open_page(browser, done.page)
    assert browser.js("document.documentElement.getAttribute('data-shown')") == "6"
    set_filter(browser, "f-who", "a")
    assert browser.js(VISIBLE) == ["q5", "q3", "q11", "q1", "q9", "q7"]
    set_filter(browser, "f-who", "b")
    assert browser.js(VISIBLE) == []
    set_filter(browser, "f-who", "")
    rows = browser.js("Array.from(document.querySelector('article.case').querySelectorAll('.row .label'))"
                      ".map(l => l.textContent.trim())")
    assert rows[0].startswith("precomputed:good.parquet") and rows[1].startswith("precomputed:mixed.parquet")
    screenshot(browser, tmp_path / "inspect-vs.png")
    found = problems(browser.events)
    assert not found, found
