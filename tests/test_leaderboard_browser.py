"""The leaderboard page in a real headless Chromium: no console error, the tables sort, wide tables scroll in
their own box, the charts load, a screenshot is taken (kept under $CIRBENCH_SCREENSHOT_DIR when set)."""

from __future__ import annotations

import json
from pathlib import Path

from .browser import DevTools, browser, needs_chromium, open_page, problems, screenshot  # noqa: F401
from .test_leaderboard import XSS, Built, built  # noqa: F401  (the module fixture, reused)

pytestmark = needs_chromium


ROWS = "Array.from(document.querySelector({t}).tBodies[0].rows).map(r => r.cells[{c}].getAttribute('data-v'))"


def test_page_loads_sorts_and_renders(built: Built, browser: DevTools, tmp_path: Path) -> None:  # noqa: F811
    open_page(browser, built.out / "index.html")

    # the page's own script ran (under its Content-Security-Policy) and wired every table
    n_tables = browser.js("document.querySelectorAll('table.sortable').length")
    assert n_tables >= 6
    assert browser.js("document.documentElement.getAttribute('data-sortable')") == str(n_tables)
    # the hostile model name is text on the page, never markup
    assert browser.js(f"document.body.textContent.includes({json.dumps(XSS)})")
    assert browser.js("document.querySelectorAll('script').length") == 1

    table = json.dumps("#t-lb-test-overall")
    main_th = browser.js(f"document.querySelector({table}).tHead.rows[0].cells[2].getAttribute('aria-sort')")
    assert main_th == "descending"  # rows start sorted by the main metric

    def click(col: int) -> None:
        browser.js(f"document.querySelector({table}).tHead.rows[0].cells[{col}].querySelector('button').click()")

    click(0)  # model name: descending first, then ascending
    names = browser.js(ROWS.format(t=table, c=0))
    assert names == sorted(names, key=str.lower, reverse=True)
    click(0)
    names = browser.js(ROWS.format(t=table, c=0))
    assert names == sorted(names, key=str.lower)
    assert browser.js(f"document.querySelector({table}).tHead.rows[0].cells[0].getAttribute('aria-sort')") \
        == "ascending"

    click(3)  # R@3: numeric, descending; the reported row has no R@3 and stays last
    values = browser.js(ROWS.format(t=table, c=3))
    numbers = [float(v) for v in values if v]
    assert numbers == sorted(numbers, reverse=True) and values[-1] == ""
    click(3)
    values = browser.js(ROWS.format(t=table, c=3))
    numbers = [float(v) for v in values if v]
    assert numbers == sorted(numbers) and values[-1] == ""
    # every row survived the sorting, the reported one still marked as such
    reported = json.dumps("#t-lb-test-overall tr.reported")
    assert browser.js(f"document.querySelectorAll({reported}).length") == 1
    assert browser.js(f"document.querySelector({table}).tBodies[0].rows.length") == 5

    # the charts (matplotlib SVG in <img>) decoded and have a visible size
    sizes = browser.js("Array.from(document.querySelectorAll('img.chart'))"
                       ".map(i => [i.complete, i.naturalWidth])")
    assert len(sizes) == 6 and all(done and w > 300 for done, w in sizes), sizes

    # in a narrow window the page itself does not scroll sideways: each wide table scrolls in its own box
    browser.call("Emulation.setDeviceMetricsOverride", width=420, height=900, deviceScaleFactor=1,
                 mobile=False)
    assert browser.js("document.documentElement.scrollWidth") <= 420
    boxes = browser.js("Array.from(document.querySelectorAll('div.scroll')).map(d => "
                       "[d.scrollWidth > d.clientWidth, getComputedStyle(d).overflowX])")
    assert boxes and all(overflow == "auto" for _, overflow in boxes) and any(wide for wide, _ in boxes)
    browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1,
                 mobile=False)  # a fixed desktop width again (clearing the override can lag a frame)

    click(2)  # back to the main metric, best first, for the picture; open every metadata block
    values = [float(v) for v in browser.js(ROWS.format(t=table, c=2))]
    assert values == sorted(values, reverse=True)
    browser.js("document.querySelectorAll('details').forEach(d => { d.open = true; })")
    target = screenshot(browser, tmp_path / "leaderboard.png")
    from PIL import Image

    with Image.open(target) as im:
        assert im.size[0] >= 800 and im.size[1] >= 900
        assert len(im.convert("L").getcolors(1 << 16) or []) > 20  # not a blank page

    found = problems(browser.events)
    assert not found, found
