"""`cirbench inspect` through the CLI, on runs whose per-query ranks are known by hand (inspect_fixture)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from cirbench.cli import app
from cirbench.core.result import Result
from cirbench.inspection import Filters, inspect_results

from .inspect_fixture import HOSTILE, MIXED_RANKS, N_QUERIES, Runs, make_runs

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return make_runs(tmp_path_factory.mktemp("inspect"))


def case_ids(page: str) -> list[str]:
    return re.findall(r'<header><span class="qid">([^<]+)</span>', page)


def test_single_model_page_and_sheet(runs: Runs, tmp_path: Path) -> None:
    res = runner.invoke(app, ["inspect", str(runs.mixed), "--out", str(tmp_path / "i")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "i" / "index.html").read_text()
    ids = case_ids(page)
    # every query, worst first: the deepest first target (q5 at 7), then 5, 3, 2, then the rank-1 successes
    assert ids[:6] == ["q5", "q3", "q11", "q1", "q9", "q7"]
    assert sorted(ids[6:], key=lambda q: int(q[1:])) == ids[6:] == ["q0", "q2", "q4", "q6", "q8", "q10"]
    for qid, rank in MIXED_RANKS.items():
        art = re.search(rf'data-ranks="(\d+)" data-search="{qid} ', page)
        assert art is not None and int(art.group(1)) == rank, qid
    # the odd queries fail and return their own reference first; the summary says so
    assert page.count('data-fail="1"') == 6 and page.count('data-fail="0"') == 6
    assert re.search(r"<td>12</td><td>6</td><td>0</td><td>6</td>", page)
    # targets, hard negatives and the reference are marked in the top 5 of q1: c1 (reference) c0 c2 (target)
    # c3 (hard negative) c4
    q1 = page[page.index('data-search="q1 '):]
    q1 = q1[: q1.index("</article>")]
    figures = re.findall(r'<figure class="([^"]*)" title="([^":]+)[:"]', q1)
    assert figures[:6] == [("query-ref", "c1"), ("reference", "c1"), ("", "c0"), ("target", "c2"),
                           ("hard-negative", "c3"), ("", "c4")]
    assert figures[6:] == [("target", "c2 (target, #3)"), ("hard-negative", "c3 (hard negative, #4)")]
    # every image embedded once, as a small JPEG, and referenced by key
    found = re.search(r'<script type="application/json" id="thumbs">(.*?)</script>', page, re.S)
    assert found is not None
    thumbs = json.loads(found.group(1))
    assert len(thumbs) == 8 and all(u.startswith("data:image/jpeg;base64,") for u in thumbs.values())
    assert set(re.findall(r'data-t="(t\d+)"', page)) == set(thumbs)
    # the hostile query text is text, never markup
    assert HOSTILE not in page
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt; &amp; &#34;quotes&#34;" in page
    assert page.count("<script") == 2 and "<img src=x" not in page
    with Image.open(tmp_path / "i" / "sheet.png") as im:
        assert im.size[0] > 800 and im.size[1] > 1000
    assert "12 queries: wrote" in res.output


def test_vs_shows_only_disagreements_side_by_side(runs: Runs, tmp_path: Path) -> None:
    res = runner.invoke(app, ["inspect", str(runs.good), "--vs", str(runs.mixed), "-o", str(tmp_path / "v")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "v" / "index.html").read_text()
    # good succeeds everywhere; mixed fails on the odd queries: those six, the widest gap first
    assert case_ids(page) == ["q5", "q3", "q11", "q1", "q9", "q7"]
    assert page.count('data-winner="a"') == 6 and 'data-winner="b"' not in page
    assert page.count('class="row"') >= 12  # one top-5 row per model per query, plus targets
    assert "precomputed:good.parquet succeeds, precomputed:mixed.parquet fails" in page


def test_vs_refuses_other_tasks_unless_forced(runs: Runs, tmp_path: Path) -> None:
    other = Result.read(runs.mixed).to_dict()
    other["task"]["split"] = "val"
    (tmp_path / "o").mkdir()
    Result.from_dict(other).write(tmp_path / "o" / "result.json")
    shutil.copy(runs.mixed / "run.parquet", tmp_path / "o" / "run.parquet")
    args = ["inspect", str(runs.good), "--vs", str(tmp_path / "o"), "-o", str(tmp_path / "x")]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "not comparable" in res.output and "split" in res.output
    assert not (tmp_path / "x").exists()  # nothing half-written
    res = runner.invoke(app, [*args, "--force"])
    assert res.exit_code == 0
    assert "compared although task split differs" in (tmp_path / "x" / "index.html").read_text()


def test_command_line_filters_match_the_hand_counts(runs: Runs, tmp_path: Path) -> None:
    mixed = Result.read(runs.mixed)
    cases = {
        Filters(failures_only=True): 6,
        Filters(category="Even"): 6,
        Filters(failures_only=True, category="Even"): 0,
        Filters(subcategory="S2"): 4,  # q2 q5 q8 q11
        Filters(rank_min=3, rank_max=5): 4,  # q1 q3 q9 q11
        Filters(rank_min=6): 1,  # q5
        Filters(search="COLOUR 4"): 2,  # q3 and q11 ("turn it into colour 4"), case-insensitive
        Filters(search="q1"): 3,  # q1, q10, q11: ids are searched too
    }
    for f, n in cases.items():
        done = inspect_results(mixed, out=tmp_path / "f", filters=f)
        assert len(done.cases) == done.n_total == n, f
    res = runner.invoke(app, ["inspect", str(runs.mixed), "-o", str(tmp_path / "c"), "--failures-only",
                              "--subcategory", "S0"])
    assert res.exit_code == 0 and case_ids((tmp_path / "c" / "index.html").read_text()) == ["q3", "q9"]


def test_large_tasks_are_sampled_with_a_seed_and_say_so(runs: Runs, tmp_path: Path) -> None:
    mixed = Result.read(runs.mixed)
    a = inspect_results(mixed, out=tmp_path / "a", max_queries=5, seed=3)
    b = inspect_results(mixed, out=tmp_path / "b", max_queries=5, seed=3)
    c = inspect_results(mixed, out=tmp_path / "c", max_queries=5, seed=4)
    ids = [[x.query_id for x in d.cases] for d in (a, b, c)]
    assert len(ids[0]) == 5 and ids[0] == ids[1] and set(ids[0]) != set(ids[2]) and a.n_total == N_QUERIES
    page = a.page.read_text()
    assert "Showing 5 of 12 queries: a uniform random sample (seed 3)" in page


def test_thumbnail_budget(runs: Runs, tmp_path: Path) -> None:
    mixed = Result.read(runs.mixed)
    roomy = inspect_results(mixed, out=tmp_path / "r")
    assert roomy.thumbs.px == 128 and len(roomy.cases) == 12
    # the 8 images take about 4 kB whatever the setting (24 px squares are never enlarged): 2.5 kB does not
    # hold them all even at the smallest setting, so fewer queries are shown and the page says how many
    tight = inspect_results(mixed, out=tmp_path / "t", budget=2500)
    assert tight.thumbs.px == 48 and 0 < len(tight.cases) < 12
    assert tight.thumbs.total_bytes <= 2500
    assert f"the thumbnail budget of 0.00 MB allows {len(tight.cases)} queries" in tight.page.read_text()


def test_images_come_from_data_dir_when_the_dataset_moved(runs: Runs, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(runs.data, moved)
    d = Result.read(runs.mixed).to_dict()
    d["task"]["dataset_dir"] = str(tmp_path / "gone")
    (tmp_path / "r").mkdir()
    Result.from_dict(d).write(tmp_path / "r" / "result.json")
    shutil.copy(runs.mixed / "run.parquet", tmp_path / "r" / "run.parquet")
    args = ["inspect", str(tmp_path / "r"), "-o", str(tmp_path / "o")]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "pass --data-dir" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, [*args, "--data-dir", str(moved)])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "o" / "index.html").read_text()
    thumbs = re.search(r'id="thumbs">(.*?)</script>', page, re.S)
    assert thumbs is not None and len(json.loads(thumbs.group(1))) == 8
