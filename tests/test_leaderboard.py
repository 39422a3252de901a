"""`build_leaderboard` on results made by the real eval flow: grouping, ties, reported rows, escaping."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cirbench
from cirbench.compare import compare_results
from cirbench.core.result import Result
from cirbench.core.types import DatasetError
from cirbench.evaluation import EvalOptions
from cirbench.leaderboard import build_leaderboard, find_result_files, group_boards, load_reported
from cirbench.leaderboard.collect import Reported
from cirbench.models.base import ModelSpec
from cirbench.models.baselines import RandomEncoder

from .conftest import png

QUIET = EvalOptions(progress=False, n_bootstrap=100)
N_RESAMPLES = 2000
XSS = "<script>alert(1)</script>"
REPO = Path(__file__).resolve().parents[1]
N_QUERIES, N_IMAGES = 12, 8


@dataclass
class Built:
    root: Path
    results: Path
    out: Path
    files: list[Path]
    frame: pd.DataFrame


def make_dataset(root: Path) -> Path:
    """12 queries over 8 images, two categories; query i asks for image (i+1) % 8 from image i % 8."""
    from cirbench.core.dataset import ImageRecord, QueryRecord, SplitData, write_dataset
    from cirbench.core.types import Protocol

    corpus = [ImageRecord(id=f"c{i}", image=png((30 * i, 255 - 30 * i, 7 * i))) for i in range(N_IMAGES)]
    queries = [QueryRecord(id=f"q{i}", reference_id=f"c{i % N_IMAGES}", text=f"change {i}",
                           relevant_ids=[f"c{(i + 1) % N_IMAGES}"], category="Even" if i % 2 == 0 else "Odd",
                           subcategory=f"S{i % 3}")
               for i in range(N_QUERIES)]
    protocol = Protocol(metrics=("R@1", "R@3", "mAP@3", "MRR"), main_metric="R@1", top_k=5)
    return write_dataset(root / "lb", {"test": SplitData(queries=queries, corpus=corpus)}, name="lb",
                         protocol=protocol, taxonomy={"S0": "Even", "S1": "Odd", "S2": "Even"})


def write_vectors(path: Path, target_offset: int) -> Path:
    """Query i points at image (i + target_offset) % 8: offset 1 is always right, offset 2 always wrong."""
    eye = np.eye(N_IMAGES)
    rows = [(f"q{i}", "query", list(eye[(i + target_offset) % N_IMAGES])) for i in range(N_QUERIES)]
    rows += [(f"c{i}", "document", list(eye[i])) for i in range(N_IMAGES)]
    pq.write_table(pa.table({"id": [r[0] for r in rows], "role": [r[1] for r in rows],
                             "vector": [r[2] for r in rows]}), path)
    return path


def write_reported(path: Path) -> Path:
    path.write_text(
        "# a comment line\n"
        "method,backbone,task,split,metric,value,source,protocol,note\n"
        "PaperNet,ViT-L/14,lb,test,R@1,99.0,Doe 2025 https://example.org/paper,official,from Table 2\n"
        "PaperNet,ViT-L/14,lb,test,R@10,88.5,Doe 2025 https://example.org/paper,,\n"
        "OtherNet,B/32,elsewhere,val,mAP@5,12.5,Roe 2024,official,\n")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("leaderboard")
    data = str(make_dataset(root))
    res = root / "results"
    for name, offset in (("perfect", 1), ("perfect-copy", 1), ("wrong", 2)):
        vec = write_vectors(root / f"{name}.parquet", offset)
        cirbench.evaluate(f"precomputed:{vec}", data, output=res / name, options=QUIET)
    hostile = RandomEncoder(ModelSpec(name=XSS, id="test/xss"))
    cirbench.evaluate(hostile, data, output=res / "xss", options=QUIET)
    cirbench.evaluate("random", data, output=res / "smoke", options=QUIET, limit=6)
    out = root / "board"
    files = build_leaderboard([res], out, reported=write_reported(root / "reported.csv"),
                              n_resamples=N_RESAMPLES)
    return Built(root, res, out, files, pd.read_csv(out / "leaderboard.csv"))


def cell(frame: pd.DataFrame, row: str, metric: str = "R@1", breakdown: str = "overall",
         group: str = "overall", board: str = "lb-test") -> pd.Series:
    hit = frame[(frame.board == board) & (frame.row == row) & (frame.metric == metric)
                & (frame.breakdown == breakdown) & (frame.group == group)]
    assert len(hit) == 1, hit
    return hit.iloc[0]


def test_files_written(built: Built) -> None:
    names = sorted(p.name for p in built.files)
    assert names == sorted(["lb-test.md", "lb-test-v2.md", "elsewhere-val.md", "README.md", "leaderboard.csv",
                            "leaderboard.parquet", "index.html"])
    assert all(p.is_file() and p.parent == built.out for p in built.files)
    assert not [p for p in built.out.iterdir() if p.name.startswith(".")]  # no temporary files left
    parquet = pd.read_parquet(built.out / "leaderboard.parquet")
    assert len(parquet) == len(built.frame) and list(parquet.columns) == list(built.frame.columns)
    assert parquet["tie"].dtype == "boolean"


def test_best_and_ties(built: Built) -> None:
    f = built.frame
    best = cell(f, "precomputed:perfect.parquet")
    assert best.value == 1.0 and best.best and pd.isna(best.tie)
    copy = cell(f, "precomputed:perfect-copy.parquet")  # identical per query: p = 1
    assert copy.value == 1.0 and not copy.best and copy.tie and copy.p_value == 1.0
    wrong = cell(f, "precomputed:wrong.parquet")  # 0 on all 12 queries
    assert wrong.value == 0.0 and not wrong.tie and wrong.p_value < 0.05
    # per group, on the main metric
    even = cell(f, "precomputed:wrong.parquet", breakdown="category", group="Even")
    assert even.tie == False and even.p_value < 0.05  # noqa: E712  (pandas bool, not None)
    assert cell(f, "precomputed:perfect.parquet", breakdown="subcategory", group="S1").best
    # cells the tables do not show carry no test
    assert pd.isna(cell(f, "precomputed:wrong.parquet", metric="MRR", breakdown="category", group="Even").tie)


def test_overall_ties_are_compare_results(built: Built) -> None:
    best = Result.read(built.results / "perfect")
    for name in ("perfect-copy", "wrong", "xss"):
        other = Result.read(built.results / name)
        tests, _ = compare_results(best, other, n_resamples=N_RESAMPLES, metrics=["mAP@3"])
        row = other.model["name"]
        assert cell(built.frame, row, metric="mAP@3").p_value == pytest.approx(tests[0].p_value)


def test_protocol_variants_are_split_and_flagged(built: Built) -> None:
    smoke = built.frame[built.frame.board == "lb-test-v2"]
    assert set(smoke.row) == {"random"} and (smoke.variant == 2).all()
    md = (built.out / "lb-test-v2.md").read_text()
    assert "task limit differs: None vs 6" in md and "not comparable" in md
    assert "smoke run" in md
    # the two boards never share a column: no row of the full runs is in the smoke board and vice versa
    assert "random" not in set(built.frame[built.frame.board == "lb-test"].row)
    # the index says what separates the two boards of one benchmark
    index = (built.out / "README.md").read_text()
    assert "| lb / test | official | protocol official | 4 | 2 |" in index
    assert "| lb / test | official ⚠ | protocol official; smoke run: first 6 queries only | 1 | 0 |" in index
    page = (built.out / "index.html").read_text()
    assert '<span class="sep">protocol official; smoke run: first 6 queries only</span>' in page


def test_incompatible_protocols_from_results(built: Built) -> None:
    a = Result.read(built.results / "perfect")
    d = a.to_dict()
    d["protocol"]["ap_normaliser"] = "|G|"
    b = Result.from_dict(d, a.path)
    boards = group_boards([a, b])
    assert len(boards) == 2 and boards[1].variant == 2
    assert any("protocol ap_normaliser differs" in f for f in boards[1].flags)
    assert boards[0].slug != boards[1].slug


def test_reranked_runs_are_labelled(built: Built) -> None:
    from cirbench.retrieval.rerank import soft_protocol

    plain = Result.read(built.results / "perfect")
    d = plain.to_dict()
    d["protocol"]["rerank"] = soft_protocol(lam=0.5, mode="reward", depth=5)
    board = group_boards([plain, Result.from_dict(d, plain.path)])[0]
    assert board.labels == ["precomputed:perfect.parquet",
                            "precomputed:perfect.parquet + soft (reward, λ=0.5)"]


def test_reported_rows(built: Built) -> None:
    f = built.frame
    rep = cell(f, "PaperNet (ViT-L/14)")
    assert rep.row_kind == "reported" and rep.value == pytest.approx(0.99)
    assert not rep.best and pd.isna(rep.tie)
    assert rep.source == "Doe 2025 https://example.org/paper" and rep.note == "from Table 2"
    assert cell(f, "precomputed:perfect.parquet").best  # a paper's number is never the computed best
    assert cell(f, "PaperNet (ViT-L/14)", metric="R@10").value == pytest.approx(0.885)
    other = cell(f, "OtherNet (B/32)", metric="mAP@5", board="elsewhere-val")
    assert other.value == pytest.approx(0.125)
    md = (built.out / "lb-test.md").read_text()
    assert "| PaperNet (ViT-L/14) | *reported* [1] | *99.00* |" in md
    assert "R@10" in md.splitlines()[md.splitlines().index("## Overall") + 2]  # the reported-only column
    assert "1. Doe 2025 https://example.org/paper" in md and "from Table 2" in md
    assert "reported numbers only" in (built.out / "elsewhere-val.md").read_text()
    assert "[2nd]" in (built.out / "README.md").read_text()  # the inclusion policy is stated


def test_markdown_marks(built: Built) -> None:
    md = (built.out / "lb-test.md").read_text()
    lines = md.splitlines()
    perfect = next(line for line in lines if line.startswith("| precomputed:perfect.parquet | computed"))
    assert "**100.00** [100.00, 100.00]" in perfect
    copy = next(line for line in lines if line.startswith("| precomputed:perfect-copy.parquet | computed"))
    assert "100.00 [100.00, 100.00] ≈" in copy
    assert "## Per category (R@1)" in md and "## Per subcategory (R@1)" in md
    assert "| model | overall | Even | Odd |" in md
    # rows are ordered by the main metric, best first; the reported 99.00 sits between
    order = [line.split(" | ")[0][2:] for line in lines if line.startswith("| ") and " | computed" in line
             or "*reported*" in line]
    assert order.index("precomputed:wrong.parquet") > order.index("PaperNet (ViT-L/14)")


def test_user_strings_are_escaped(built: Built) -> None:
    page = (built.out / "index.html").read_text()
    assert XSS not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # only the page's own sorting script
    md = (built.out / "lb-test.md").read_text()
    assert XSS not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert XSS in set(built.frame.row)  # data files keep the name as it is


def test_escaping_of_task_names_and_sources(tmp_path: Path, built: Built) -> None:
    d = Result.read(built.results / "perfect").to_dict()
    d["task"]["name"] = 'ev"il<img src=x onerror=alert(2)>'
    d["model"]["name"] = "a|b*c_"
    r = Result.from_dict(d)
    r.write(tmp_path / "r" / "result.json")
    shutil.copy(built.results / "perfect" / "run.parquet", tmp_path / "r" / "run.parquet")
    rep = tmp_path / "rep.csv"
    rep.write_text("method,backbone,task,split,metric,value,source\n"
                   "M,B,x,y,R@1,5,\"<b>bold</b> javascript:alert(3) https://ok.example/a?b=1&c=2\"\n")
    build_leaderboard([tmp_path / "r"], tmp_path / "out", reported=rep, n_resamples=100)
    page = (tmp_path / "out" / "index.html").read_text()
    assert "<img src=x" not in page and "<b>bold" not in page and 'href="javascript' not in page
    assert page.count("<img") == page.count('<img class="chart" src="data:image/svg+xml;base64,')
    assert 'href="https://ok.example/a?b=1&amp;c=2"' in page
    md = "".join(p.read_text() for p in (tmp_path / "out").glob("*.md"))
    assert "<img" not in md and "a\\|b\\*c\\_" in md


def test_charts_are_matplotlib_svg(built: Built) -> None:
    """Each computed board: the overall bars and one heatmap per breakdown, drawn by matplotlib as SVG,
    embedded as data: images (so nothing in them can run), every model name there as escaped text."""
    import base64
    import re

    page = (built.out / "index.html").read_text()
    sources = re.findall(r'<img class="chart" src="data:image/svg\+xml;base64,([^"]+)" alt="([^"]*)"', page)
    assert len(sources) == 6  # overall + category + subcategory, on the full board and on the smoke board
    assert [alt.split(":")[0] for _, alt in sources] == ["R@1 overall", "R@1 per category",
                                                          "R@1 per subcategory"] * 2
    svgs = [base64.b64decode(data).decode() for data, _ in sources]
    for svg in svgs:
        root = ET.fromstring(svg)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert "Matplotlib" in svg and "<script" not in svg
    texts = ["".join(t.itertext()) for t in ET.fromstring(svgs[2]).iter("{http://www.w3.org/2000/svg}text")]
    assert XSS in texts  # drawn as text (escaped in the XML), and inside an <img> it could not run anyway
    assert {"overall", "S0", "S1", "S2"} <= set(texts)
    # the heatmap's cells carry the numbers: the perfect runs score 100.0 everywhere, the wrong one 0.0
    assert texts.count("100.0") >= 8 and texts.count("0.0") >= 4
    # the same chart is drawn to the same bytes (no dates, fixed ids)
    rebuilt = build_leaderboard([built.results], built.root / "again", n_resamples=N_RESAMPLES)
    again = (built.root / "again" / "index.html").read_text()
    assert rebuilt and re.findall(r'base64,([^"]+)"', again)[:3] == [s for s, _ in sources[:3]]


def test_missing_run_file_is_untested_and_unlabelled_is_skipped(tmp_path: Path, built: Built) -> None:
    for name in ("perfect", "wrong"):
        shutil.copytree(built.results / name, tmp_path / "res" / name)
    (tmp_path / "res" / "wrong" / "run.parquet").unlink()
    d = json.loads((built.results / "xss" / "result.json").read_text())
    d["scores"] = {"overall": {}}
    (tmp_path / "res" / "unlabelled").mkdir()
    (tmp_path / "res" / "unlabelled" / "result.json").write_text(json.dumps(d))
    build_leaderboard([tmp_path / "res"], tmp_path / "out", reported=None, n_resamples=100)
    f = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    wrong = cell(f, "precomputed:wrong.parquet")
    assert pd.isna(wrong.tie) and "run.parquet is missing" in wrong.test_note
    assert "0.00 [0.00, 0.00] ?" in (tmp_path / "out" / "lb-test.md").read_text()
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "Skipped result files" in readme and "unlabelled" in readme


def test_find_result_files(tmp_path: Path, built: Built) -> None:
    files = find_result_files([built.results, built.results / "perfect" / "result.json"])
    assert len(files) == 5 and len(set(files)) == 5  # deduplicated
    with pytest.raises(DatasetError, match="does not exist"):
        find_result_files([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no result.json"):
        find_result_files([tmp_path / "empty"])


@pytest.mark.parametrize(("text", "message"), [
    ("method,task,split,metric,value,source\n", "field 'backbone'"),
    ("method,backbone,task,split,metric,value,source\nM,B,t,s,R@1,abc,S\n", "record 'line 2'.*field 'value'"),
    ("# c\nmethod,backbone,task,split,metric,value,source\nM,B,t,s,Q@1,5,S\n",
     "record 'line 3'.*field 'metric'"),
    ("method,backbone,task,split,metric,value,source\nM,B,t,s,R@1,5,\n", "field 'source'"),
    ("# only comments\n", "no header"),
])
def test_reported_file_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "r.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_reported(path)
    with pytest.raises(DatasetError, match="missing"):
        load_reported(tmp_path / "absent.csv")


def test_seeded_reported_file() -> None:
    """Every primary row of the research notes (seeds-2026-12.md §1, §3; benchmarks.md §5.4), the rows cited
    from Paracosm's own table as a separate class, no [2nd] row; each lands on a registered task/protocol."""
    rows = load_reported(REPO / "leaderboards" / "reported.csv")
    got = {(r.method, r.backbone, r.task, r.split, r.metric): r for r in rows}
    assert len(got) == len(rows) == 119  # no duplicate (method, backbone, task, split, metric)
    # a hand-picked value per source, as printed there (percentages; MedR a rank)
    expect = {
        ("Paracosm", "ViT-G/14", "circo", "test", "mAP@5"): (39.82, "primary", "shared-concept"),
        ("Paracosm", "CLIP ViT-L/14", "cirr", "test1", "R_s@3"): (91.47, "primary", "official"),
        ("CIReVL", "CLIP ViT-L/14", "circo", "test", "mAP@50"): (21.80, "cited", "official"),
        ("CoTMR", "ViT-G/14", "cirr", "test1", "R_s@1"): (71.19, "cited", "official"),
        ("SoFT + CIReVL", "CLIP ViT-L/14 (inferred)", "fashioniq", "val", "R@50"):
            (58.44, "primary", "c1-and-c2"),
        ("MML-CLIP", "CLIP ViT-L/14-336 + location encoder", "mmlandmarks-t2s", "query", "MedR"):
            (712, "primary", "paper-code"),
        ("MML-CLIP", "CLIP ViT-L/14-336 + location encoder", "mmlandmarks-s2c", "query", "Acc@2500km"):
            (98.9, "primary", "gps-gallery"),  # mml-codebase's GPS gallery, not cirbench's tiles
        ("MML-CLIP", "CLIP ViT-L/14-336 + location encoder", "mmlandmarks-g2c", "query", "Acc@200km"):
            (50.77, "primary", "gps-gallery"),
        ("X-Aligner", "BLIP-2 + X-Aligner layers (trained on WebVid-CoVR)", "webvid-covr", "test", "R@1"):
            (63.93, "primary", "official"),
    }
    for key, (value, cls, protocol) in expect.items():
        r = got[key]
        shown = r.value if r.metric == "MedR" else round(100 * r.value, 2)
        assert (shown, r.source_class, r.protocol) == (value, cls, protocol), key
    assert {r.method for r in rows if r.source_class == "cited"} == {"CIReVL", "LDRE", "OSrCIR", "CoTMR"}
    assert all("results1.png" in r.source for r in rows if r.source_class == "cited")
    # protocol flags on every CIRR / CIRCO / FashionIQ row, as the papers ran them or "unstated"
    flags = {(r.method, r.task): dict(r.flags) for r in rows if r.task in ("cirr", "circo", "fashioniq")}
    assert flags[("Paracosm", "circo")] == {"circo_text": "shared-concept"}
    assert flags[("CIReVL", "circo")] == {"circo_text": "relative-caption"}
    assert flags[("CIReVL", "cirr")] == {"cirr_reference": "reference-excluded"}
    assert flags[("LDRE", "cirr")] == {"cirr_reference": "unstated"}
    assert flags[("SoFT + CIReVL", "fashioniq")] == {"fashioniq_gallery": "unstated"}
    assert all(len(f) == 1 for f in flags.values())
    for secondary in ("XR", "WISER", "ReCALL", "HUG", "CSMCIR", "Pic2Word", "SEARLE", "LinCIR", "OSCAR"):
        assert secondary not in {r.method for r in rows}
    from cirbench.tasks import get_task_spec

    for r in rows:  # names the registry knows, so the rows land next to real runs
        spec = get_task_spec(r.task)
        assert r.split in spec.splits and r.protocol in spec.protocols, r
    text = (REPO / "leaderboards" / "reported.csv").read_text()
    comments = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    for left_out in ("[2nd]", "XR", "ReCALL", "HUG", "CSMCIR", "unverified", "ablation"):  # out, and why
        assert left_out in comments


@pytest.mark.parametrize(("row", "message"), [
    ("M,B,cirr,val,R@1,5,S,official,,,,,reference-kept", "'reference-kept' disagrees with protocol"),
    ("M,B,circo,val,mAP@5,5,S,official,,,shared,,", "unknown value 'shared'.*field 'circo_text'"),
    ("M,B,lb,test,R@1,5,S,official,,,relative-caption,,", "applies to circo rows only.*field 'circo_text'"),
    ("M,B,cirr,val,R@1,5,S,official,,hearsay,,,", "unknown source class 'hearsay'.*field 'source_class'"),
    ("M,B,cirr,val,R@1,5,S,nonsense,,,,,", "record 'line 2'.*field 'protocol'"),
])
def test_reported_flags_are_checked(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "r.csv"
    path.write_text("method,backbone,task,split,metric,value,source,protocol,note,source_class,circo_text,"
                    f"fashioniq_gallery,cirr_reference\n{row}\n")
    with pytest.raises(DatasetError, match=message):
        load_reported(path)


def test_cited_and_flagged_rows_are_shown_apart(tmp_path: Path, built: Built) -> None:
    rep = tmp_path / "rep.csv"
    rep.write_text("method,backbone,task,split,metric,value,source,protocol,source_class,circo_text\n"
                   "Own,L,lb,test,R@1,50,Own paper,official,primary,\n"
                   "Quoted,L,lb,test,R@1,40,Other paper's table,official,cited,\n"
                   "Hearsay,L,lb,test,R@1,30,a blog,official,secondary,\n"
                   "Para,G,circo,test,mAP@5,39.82,fig,shared-concept,primary,shared-concept\n")
    build_leaderboard([built.results / "perfect"], tmp_path / "out", reported=rep, n_resamples=100)
    md = (tmp_path / "out" / "lb-test.md").read_text()
    assert "| Own (L) | *reported* [1] | *50.00* |" in md
    assert "| Quoted (L) | *cited* [2] | *40.00* |" in md
    assert "| Hearsay (L) | *secondary, unchecked* [3] | *30.00* |" in md
    assert "Para (G): CIRCO query text: shared-concept" in (tmp_path / "out" / "circo-test.md").read_text()
    frame = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    reported = frame[frame.row_kind == "reported"]
    assert dict(zip(reported.row, reported.source_class)) == {
        "Own (L)": "primary", "Quoted (L)": "cited", "Hearsay (L)": "secondary", "Para (G)": "primary"}
    page = (tmp_path / "out" / "index.html").read_text()
    assert '<tr class="reported cited">' in page and '<tr class="reported secondary">' in page
    assert '<span class="pflags">CIRCO query text: shared-concept</span>' in page
    index = (tmp_path / "out" / "README.md").read_text()
    assert "| circo / test | shared-concept ⚠ | protocol shared-concept; reported numbers only |" in index


def test_reported_label() -> None:
    assert Reported("M", "", "t", "s", "R@1", 0.1, "S").label == "M"
