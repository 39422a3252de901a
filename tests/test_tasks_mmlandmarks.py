"""MMLandmarks: the released CSV/shard layout, both protocols, geolocalisation, and the released metrics.

The metric references below transcribe mml-codebase `mmlandmarks/metrics.py` (`_recall_at_k`,
`_average_precision`, `_eval_single_query`, the median rank of `evaluate_retrieval`) on full score vectors,
independently of cirbench's vectorised implementation.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cirbench.core.geo import geo_per_query
from cirbench.core.metrics import per_query_metrics
from cirbench.core.types import DatasetError, query_exclusions
from cirbench.tasks import get_task
from cirbench.tasks.mmlandmarks import (
    JUNK_PREFIX,
    junk_free_recall,
    load,
    market1501_map,
    per_query_values,
    shard_path,
)

from .conftest import png

LANDMARKS = {"101": (40.0, -100.0), "102": (35.0, -90.0), "103": (47.6, -122.3)}
Q_GROUND = {"101": ["gra101", "grb101"], "102": ["gra102"], "103": ["gra103", "grb103", "grc103"]}
Q_SAT = {"101": ["sat101x"], "102": ["sat102x"], "103": ["sat103x"]}
Q_SAT_ALL = {"101": ["sat101x", "sat101old"], "102": ["sat102x", "sat102old"], "103": ["sat103x"]}
IDX_GROUND = ["ig0001", "ig0002", "ig0003", "ig0004", "ig0005"]
IDX_SAT = {"is0001": (40.0001, -100.0001), "is0002": (10.0, 10.0), "is0003": (35.5, -90.5),
           "is0004": (-33.9, 151.2)}
TEXTS = {
    "101": {"Intro": "The Arch stands here. It is tall.\nSecond paragraph. More.", "History": "Built 1900."},
    "102": {"Lead": "A museum in town. Open daily."},
    "103": {"Lead": "A tower by the bay. Red roof.\nIt has stairs.", "Visit": "Tickets online. Cheap."},
}


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def _image(root: Path, split: str, modality: str, item_id: str, value: int) -> None:
    p = shard_path(root, split, modality, item_id)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(png((value % 256, 0, 0), 4))


def write_release(root: Path) -> Path:
    q = root / "query"
    _write_csv(q / "mml_query.csv", ["landmark_id", "CommonsCategory", "lat", "lon"],
               [[lid, f"Cat{lid}", lat, lon] for lid, (lat, lon) in LANDMARKS.items()])
    _write_csv(q / "mml_query_ground.csv", ["landmark_id", "images"],
               [[lid, " ".join(ids)] for lid, ids in Q_GROUND.items()])
    _write_csv(q / "mml_query_satellite.csv", ["landmark_id", "images"],
               [[lid, " ".join(ids)] for lid, ids in Q_SAT.items()])
    _write_csv(q / "mml_query_all_satellite.csv", ["landmark_id", "images"],
               [[lid, " ".join(ids)] for lid, ids in Q_SAT_ALL.items()])
    _write_csv(q / "mml_query_text.csv", ["landmark_id", "json"], [[lid, f"txt{lid}"] for lid in TEXTS])
    _write_csv(q / "mml_query_text_sentences.csv", ["landmark_id", "sentences"],
               [[lid, f"A landmark number {lid}"] for lid in TEXTS])
    _write_csv(root / "index" / "mml_index_ground.csv", ["images", "gldv2_id"],
               [[i, n] for n, i in enumerate(IDX_GROUND)])
    _write_csv(root / "index" / "mml_index_satellite.csv", ["images", "lat", "lon", "year"],
               [[i, lat, lon, 2020] for i, (lat, lon) in IDX_SAT.items()])
    n = 0
    for ids in Q_GROUND.values():
        for i in ids:
            _image(root, "query", "ground", i, n := n + 1)
    for ids in Q_SAT_ALL.values():
        for i in ids:
            _image(root, "query", "satellite", i, n := n + 1)
    for i in IDX_GROUND:
        _image(root, "index", "ground", i, n := n + 1)
    for i in IDX_SAT:
        _image(root, "index", "satellite", i, n := n + 1)
    for lid, sections in TEXTS.items():
        p = shard_path(root, "query", "text", f"txt{lid}")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(sections))
    return root


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return write_release(tmp_path / "mml")


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def test_g2s_paper_code(release: Path) -> None:
    task = get_task("mmlandmarks-g2s", data_dir=release)
    assert task.protocol.name == "paper-code" and task.split == "query"
    ids = [it.id for it in task.corpus]
    assert ids[:4] == [f"index/satellite/{i}" for i in IDX_SAT]
    assert ids[4:] == ["query/satellite/sat101x", "query/satellite/sat102x", "query/satellite/sat103x"]
    assert task.corpus[0].image == release / "index/satellite/i/s/0/is0001.png"
    assert [q.id for q in task.queries][:2] == ["query/ground/gra101", "query/ground/grb101"]
    assert len(task.queries) == 6
    q = task.queries[0]
    assert q.item.image == release / "query/ground/g/r/a/gra101.jpg" and q.item.text is None
    assert q.relevant_ids == ("query/satellite/sat101x",)
    assert q.candidate_ids == tuple(ids[4:])  # R@K ranks after junk removal
    assert q.meta["landmark_id"] == "101" and q.meta["lat"] == 40.0
    p = task.protocol
    assert p.metrics == ("R_s@1", "R_s@5", "R_s@10", "mAP@1000", "MedR") and p.top_k == 1000
    assert p.scorer is not None and p.scorer.params == {"junk_prefix": JUNK_PREFIX}
    assert p.to_dict()["scorer"] == {"name": "mmlandmarks-market1501", "params": {"junk_prefix": JUNK_PREFIX}}
    assert task.extra["n_index"] == 4
    assert task.metadata.query_modality == "image"


def test_s2g_full_gallery(release: Path) -> None:
    task = get_task("mmlandmarks-s2g", data_dir=release, protocol="full-gallery")
    assert len(task.corpus) == 5 + 6
    assert [q.id for q in task.queries] == [f"query/satellite/sat10{i}x" for i in (1, 2, 3)]
    assert task.queries[2].relevant_ids == tuple(f"query/ground/{i}" for i in Q_GROUND["103"])
    assert all(q.candidate_ids is None for q in task.queries)
    assert task.protocol.metrics == ("R@1", "R@5", "R@10", "mAP@1000", "MedR")
    assert task.protocol.scorer is not None and task.protocol.scorer.params == {}  # nothing is junk


def ref_sentence(mode: str) -> list[str]:
    """mml-codebase `_load_text_data`: random.seed(42), then one sample per CSV row."""
    random.seed(42)
    out = []
    for lid in TEXTS:
        sections = TEXTS[lid]
        if mode == "random":
            section = sections[random.choice(list(sections.keys()))]
            paragraph = random.choice(section.split("\n"))
            out.append(random.choice(paragraph.split(". ")))
        else:
            out.append(sections[list(sections.keys())[0]].split("\n")[0].split(". ")[0])
    return out


@pytest.mark.parametrize("mode", ["first", "random", "no_cues"])
def test_text_sampling(release: Path, mode: str) -> None:
    task = load("t2s", release, "query", "paper-code", text_sampling=mode)
    texts = [q.item.text for q in task.queries]
    want = [f"A landmark number {lid}" for lid in TEXTS] if mode == "no_cues" else ref_sentence(mode)
    assert texts == want
    assert [q.id for q in task.queries] == [f"query/text/{lid}" for lid in TEXTS]
    assert task.metadata.query_modality == "text"
    assert task.protocol.notes["text_sampling"] == mode
    assert task.queries[0].relevant_ids == ("query/satellite/sat101x",)
    with pytest.raises(ValueError, match="text_sampling"):
        load("t2s", release, "query", "paper-code", text_sampling="all")
    with pytest.raises(ValueError, match="does not accept"):
        load("g2s", release, "query", "paper-code", text_sampling="first")


def test_t2g_gallery(release: Path) -> None:
    task = get_task("mmlandmarks-t2g", data_dir=release)
    assert len(task.corpus) == 5 + 6
    assert task.queries[0].relevant_ids == ("query/ground/gra101", "query/ground/grb101")


def test_geolocalisation_tasks(release: Path) -> None:
    g2c = get_task("mmlandmarks-g2c", data_dir=release)
    ids = [it.id for it in g2c.corpus]
    assert ids[:4] == [f"index/satellite/{i}" for i in IDX_SAT]
    assert ids[4:] == ["query/satellite/sat101x", "query/satellite/sat101old", "query/satellite/sat102x",
                       "query/satellite/sat102old", "query/satellite/sat103x"]
    gps = g2c.gps
    assert gps.shape == (9, 2)
    np.testing.assert_allclose(gps[:4], list(IDX_SAT.values()))
    np.testing.assert_allclose(gps[4], LANDMARKS["101"])
    np.testing.assert_allclose(gps[8], LANDMARKS["103"])
    assert g2c.protocol.notes["geo_metrics"] == "Acc@1km,Acc@25km,Acc@200km,Acc@750km,Acc@2500km"
    # top-1: q0 an index tile ~14 m from landmark 101, q1 its own tile, q2 an index tile ~70 km away,
    # q3 and q5 far-away tiles, q4 the tile of its landmark
    top1 = np.array([0, 4, 2, 1, 8, 3])
    out = geo_per_query(top1, g2c)
    np.testing.assert_array_equal(out["Acc@1km"], [1, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(out["Acc@25km"], [1, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(out["Acc@200km"], [1, 1, 1, 0, 1, 0])

    s2c = get_task("mmlandmarks-s2c", data_dir=release)
    q = s2c.queries[0]
    assert q.exclude_ids == ("query/satellite/sat101x",)
    assert q.relevant_ids == ("query/satellite/sat101old",)
    assert s2c.queries[2].relevant_ids == ()  # landmark 103 has one tile only: it is the query
    assert query_exclusions(s2c)[0] == [4]
    assert query_exclusions(s2c)[2] == []  # ... and it stays in the gallery: the landmark's GPS point

    t2c = get_task("mmlandmarks-t2c", data_dir=release, text_sampling="first")
    assert t2c.queries[1].meta["lat"] == 35.0


def test_s2c_needs_all_years(release: Path) -> None:
    (release / "query" / "mml_query_all_satellite.csv").unlink()
    with pytest.raises(DatasetError, match="other years"):
        get_task("mmlandmarks-s2c", data_dir=release)
    g2c = get_task("mmlandmarks-g2c", data_dir=release)  # falls back to the latest tiles
    assert len(g2c.corpus) == 4 + 3


# ----------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------


def test_missing_column(release: Path) -> None:
    _write_csv(release / "query" / "mml_query_ground.csv", ["landmark_id", "image"], [[101, "gra101"]])
    with pytest.raises(DatasetError, match=r"column.*'images'.*mml_query_ground\.csv"):
        get_task("mmlandmarks-g2s", data_dir=release)


def test_gps_out_of_range(release: Path) -> None:
    rows = [[i, lat, lon, 2020] for i, (lat, lon) in IDX_SAT.items()]
    rows[2][1] = 123.0
    _write_csv(release / "index" / "mml_index_satellite.csv", ["images", "lat", "lon", "year"], rows)
    with pytest.raises(DatasetError, match=r"lat 123.0 is outside.*mml_index_satellite\.csv.*line 4.*is0003"):
        get_task("mmlandmarks-g2c", data_dir=release)
    _write_csv(release / "query" / "mml_query.csv", ["landmark_id", "lat", "lon"], [[101, 10, 200]])
    with pytest.raises(DatasetError, match=r"lon 200 is outside.*mml_query\.csv.*landmark 101"):
        get_task("mmlandmarks-g2s", data_dir=release)


def test_missing_images_and_files(release: Path) -> None:
    shard_path(release, "index", "ground", "ig0003").unlink()
    with pytest.raises(DatasetError, match=r"1 of .* images .* missing.*ig0003"):
        get_task("mmlandmarks-s2g", data_dir=release)
    task = get_task("mmlandmarks-s2g", data_dir=release, check_images="false")
    assert len(task.corpus) == 11
    (release / "index" / "mml_index_ground.csv").unlink()
    with pytest.raises(DatasetError, match=r"CSV file is missing.*Expected layout"):
        get_task("mmlandmarks-s2g", data_dir=release)
    shard_path(release, "query", "text", "txt102").write_text("[1, 2]")
    with pytest.raises(DatasetError, match=r"JSON object.*txt102\.json.*landmark 102"):
        load("t2s", release, "query", "paper-code", text_sampling="first")


# ----------------------------------------------------------------------------------------------------
# Metrics against a transcription of the released evaluator
# ----------------------------------------------------------------------------------------------------


def ref_recall(index: np.ndarray, good: np.ndarray, junk: np.ndarray) -> np.ndarray:
    cmc = np.zeros(len(index), dtype=np.int32)
    if good.size == 0:
        cmc[0] = -1
        return cmc
    index = index[np.isin(index, junk, invert=True)]
    rows_good = np.argwhere(np.isin(index, good)).flatten()
    cmc[rows_good[0]:] = 1
    return cmc


def ref_ap(index: np.ndarray, good: np.ndarray, junk: np.ndarray, topk: int) -> float:
    if good.size == 0:
        return 0.0
    index = index[:topk]
    index = index[np.isin(index, junk, invert=True)]
    rows_good = np.argwhere(np.isin(index, good)).flatten()
    ngood = len(good)
    ap = 0.0
    for i, row in enumerate(rows_good[:ngood]):
        precision = (i + 1) / (row + 1)
        old_precision = i / row if row != 0 else 1.0
        ap += (1.0 / ngood) * (old_precision + precision) / 2
    return ap


def _toy_run(seed: int, n_queries: int = 40, n_gallery: int = 60, n_junk: int = 35, topk: int = 12):
    """Labels as in MMLandmarksIndexSet: index items -1, query-split items their landmark id."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([-np.ones(n_junk, dtype=int), rng.integers(0, 6, n_gallery - n_junk)])
    q_labels = rng.integers(0, 6, n_queries)
    scores = rng.normal(size=(n_queries, n_gallery))
    scores[:, n_junk:] += 0.3 * (labels[n_junk:][None, :] == q_labels[:, None])
    order = np.stack([np.argsort(s)[::-1] for s in scores])  # the reference's ranking
    relevant = [np.flatnonzero(labels == ql) for ql in q_labels]
    junk = labels == -1
    return order, relevant, junk, topk, labels, q_labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_market1501_map_and_recall_match_reference(seed: int) -> None:
    order, relevant, junk, topk, labels, q_labels = _toy_run(seed)
    junk_idx = np.flatnonzero(junk)
    want_ap = [ref_ap(order[q], relevant[q], junk_idx, topk) for q in range(len(order))]
    got_ap = market1501_map(order, relevant, junk, topk=topk)
    answerable = np.array([r.size > 0 for r in relevant])
    np.testing.assert_allclose(got_ap[answerable], np.asarray(want_ap)[answerable], rtol=1e-12)
    assert np.isnan(got_ap[~answerable]).all()
    # full gallery: no junk
    want_full = [ref_ap(order[q], relevant[q], np.array([], dtype=int), topk) for q in range(len(order))]
    np.testing.assert_allclose(market1501_map(order, relevant, None, topk=topk)[answerable],
                               np.asarray(want_full)[answerable], rtol=1e-12)
    for k in (1, 5, 10):
        want_r = np.array([ref_recall(order[q], relevant[q], junk_idx)[k - 1] for q in range(len(order))],
                          dtype=float)
        np.testing.assert_array_equal(junk_free_recall(order, relevant, junk, k)[answerable],
                                      want_r[answerable])
        # the subset ranking (Query.candidate_ids = non-junk items) gives the same R@K
        subset = np.stack([row[~junk[row]] for row in order])
        sub = per_query_metrics([f"R_s@{k}"], order, relevant, subset_ranked=subset)[f"R_s@{k}"]
        np.testing.assert_array_equal(sub[answerable], want_r[answerable])
    # median rank: the first correct item in the full ranking, junk included
    first = np.array([int(np.argwhere(labels[order[q]] == q_labels[q])[0][0]) + 1
                      for q in range(len(order)) if answerable[q]])
    medr = per_query_metrics(["MedR"], order, relevant)["MedR"][answerable]
    assert np.median(medr) == np.median(first)


def test_junk_free_recall_is_nan_when_the_run_is_too_shallow() -> None:
    ranked = np.array([[0, 1, 2], [3, 0, 1]])  # positions 0, 1 are junk
    junk = np.array([True, True, False, False])
    out = junk_free_recall(ranked, [np.array([3]), np.array([3])], junk, k=2)
    assert np.isnan(out[0]) and out[1] == 1.0  # q0: one kept item, no hit: cannot tell R@2


def test_per_query_values_from_run_table() -> None:
    order, relevant, junk, topk, *_ = _toy_run(3, n_queries=10, n_gallery=30, n_junk=15, topk=30)
    names = np.array([f"{JUNK_PREFIX}satellite/{i}" if junk[i] else f"query/satellite/{i}"
                      for i in range(len(junk))], dtype=object)
    subset = [list(names[row[~junk[row]]][:10]) for row in order]
    first = [int(np.flatnonzero(np.isin(row, rel))[0]) + 1 if rel.size else 0
             for row, rel in zip(order, relevant, strict=True)]
    table = pa.table({"ranked_ids": [list(names[row]) for row in order],
                      "relevant_ids": [list(names[r]) for r in relevant],
                      "subset_ranked_ids": subset, "first_relevant_rank": first})
    protocol = {"metrics": ["R_s@1", "R_s@5", "mAP@30", "MedR"]}
    vals = per_query_values(table, protocol, junk_prefix=JUNK_PREFIX)
    ok = np.array([r.size > 0 for r in relevant])
    junk_idx = np.flatnonzero(junk)
    np.testing.assert_allclose(vals["mAP@30"][ok],
                               [ref_ap(order[q], relevant[q], junk_idx, 30) for q in np.flatnonzero(ok)])
    want_r5 = [ref_recall(order[q], relevant[q], junk_idx)[4] for q in np.flatnonzero(ok)]
    np.testing.assert_array_equal(vals["R_s@5"][ok], want_r5)
    np.testing.assert_array_equal(vals["MedR"][ok], np.asarray(first)[ok])
    # without a subset column the junk-free recall comes from the full run (exact here: depth = gallery)
    vals2 = per_query_values(table.drop(["subset_ranked_ids"]), protocol, junk_prefix=JUNK_PREFIX)
    np.testing.assert_array_equal(vals2["R_s@5"][ok], vals["R_s@5"][ok])
    # full-gallery protocol: no junk
    full = per_query_values(table, {"metrics": ["mAP@30"], "notes": {}})
    np.testing.assert_allclose(full["mAP@30"][ok], [ref_ap(order[q], relevant[q], np.array([], int), 30)
                                                    for q in np.flatnonzero(ok)])


def test_market1501_map_needs_depth() -> None:
    with pytest.raises(ValueError, match="top 1000"):
        market1501_map(np.zeros((2, 50), dtype=np.int64), [np.array([0]), np.array([1])], None)
    padded = np.full((1, 20), -1)
    padded[0, :3] = [2, 0, 1]  # a gallery of 3 items, padded: fine
    # one positive at row 1: (old precision 0/1 + precision 1/2) / 2
    assert market1501_map(padded, [np.array([0])], None, topk=1000)[0] == pytest.approx(0.25)


def test_geolocalisation_through_the_eval_flow(release: Path, tmp_path: Path) -> None:
    """Acc@<x>km in result.json comes from the run's GPS columns and equals geo_per_query on its top-1."""
    import cirbench
    from cirbench.core.run import read_run_table
    from cirbench.evaluation import EvalOptions

    task = get_task("mmlandmarks-g2c", data_dir=release)
    result = cirbench.evaluate("random", task, output=tmp_path / "o",
                               options=EvalOptions(progress=False, n_bootstrap=0))
    table = read_run_table(tmp_path / "o" / "run.parquet")
    pos = task.corpus_positions
    top1 = np.array([pos[r[0]] for r in table.column("ranked_ids").to_pylist()])
    expected = geo_per_query(top1, task)
    for name, values in expected.items():
        assert result.overall[name].value == pytest.approx(float(np.nanmean(values)))
    assert {"pred_lat", "pred_lon", "lat", "lon"} <= set(table.column_names)


def test_s2c_gallery_holds_every_query_landmarks_gps_point(release: Path, tmp_path: Path) -> None:
    """mml-codebase's GPS gallery is the index coordinates plus every query landmark's coordinates, so each
    query's true point can be retrieved. Landmark 103 has a single satellite tile (the query itself): its
    point must stay in that query's gallery."""
    import pyarrow.parquet as pq

    import cirbench
    from cirbench.evaluation import EvalOptions

    task = get_task("mmlandmarks-s2c", data_dir=release)
    gps = task.gps
    for q, excluded in zip(task.queries, query_exclusions(task), strict=True):
        eligible = [i for i in range(len(task.corpus)) if i not in set(excluded)]
        assert any(tuple(gps[i]) == (q.meta["lat"], q.meta["lon"]) for i in eligible), q.id
    # Through the eval flow: one axis per gallery tile; sat101x points at its landmark's older tile (hit),
    # sat102x at a tile 10,000 km away (miss), sat103x at itself, its landmark's only tile (hit).
    ids = [it.id for it in task.corpus]
    point = {"query/satellite/sat101x": "query/satellite/sat101old",
             "query/satellite/sat102x": "index/satellite/is0002",
             "query/satellite/sat103x": "query/satellite/sat103x"}
    rows = [(cid, "document", list(np.eye(len(ids))[n])) for n, cid in enumerate(ids)]
    rows += [(q, "query", list(np.eye(len(ids))[ids.index(t)])) for q, t in point.items()]
    vectors = tmp_path / "v.parquet"
    pq.write_table(pa.table({"id": [r[0] for r in rows], "role": [r[1] for r in rows],
                             "vector": [r[2] for r in rows]}), vectors)
    result = cirbench.evaluate(f"precomputed:{vectors}", "mmlandmarks-s2c", data_dir=release,
                               output=tmp_path / "o", options=EvalOptions(progress=False, n_bootstrap=0))
    assert result.overall["Acc@1km"].value == pytest.approx(2 / 3)
    assert "single tile keeps it" in result.protocol["notes"]["exclusion"]
