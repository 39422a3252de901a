"""Haversine distance and geo accuracy against independent references (mml-codebase geoutils.py semantics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cirbench.core.geo import (
    EARTH_RADIUS_KM,
    GEO_THRESHOLDS_KM,
    check_latlon,
    geo_accuracy,
    geo_hits,
    geo_metric_name,
    geo_per_query,
    haversine_km,
)
from cirbench.core.types import DatasetError, Item, Query, Task, TaskMetadata


def ref_haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """The textbook formula with asin, written independently of cirbench.core.geo."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


def ref_geo_accuracy(true: list[tuple[float, float]], pred: list[tuple[float, float]],
                     thresholds: tuple[float, ...]) -> dict[str, float]:
    """geoutils.geo_accuracy, as a percentage, with the loop spelled out."""
    errors = [ref_haversine(t[0], t[1], p[0], p[1]) for t, p in zip(true, pred, strict=True)]
    return {f"Acc@{t}km": sum(e <= t for e in errors) / len(errors) * 100 for t in thresholds}


def test_known_distances() -> None:
    one_degree = 2 * math.pi * EARTH_RADIUS_KM / 360
    assert haversine_km(0, 0, 0, 1) == pytest.approx(one_degree, rel=1e-12)
    assert haversine_km(0, 0, 1, 0) == pytest.approx(one_degree, rel=1e-12)
    assert haversine_km(10, 20, 10, 20) == 0.0
    assert haversine_km(0, 0, 0, 180) == pytest.approx(math.pi * EARTH_RADIUS_KM, rel=1e-12)
    assert haversine_km(90, 0, -90, 0) == pytest.approx(math.pi * EARTH_RADIUS_KM, rel=1e-12)
    # Paris -> London, about 343.5 km on this sphere
    assert haversine_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343.5, abs=1.0)
    # across the antimeridian
    assert haversine_km(0, 179.5, 0, -179.5) == pytest.approx(one_degree, rel=1e-9)


def test_haversine_matches_reference_on_random_points() -> None:
    rng = np.random.default_rng(0)
    lat1, lat2 = rng.uniform(-90, 90, 200), rng.uniform(-90, 90, 200)
    lon1, lon2 = rng.uniform(-180, 180, 200), rng.uniform(-180, 180, 200)
    got = haversine_km(lat1, lon1, lat2, lon2)
    want = [ref_haversine(*p) for p in zip(lat1, lon1, lat2, lon2, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-6)
    # symmetric
    np.testing.assert_allclose(haversine_km(lat2, lon2, lat1, lon1), got, rtol=1e-12)


def test_geo_accuracy_matches_reference() -> None:
    rng = np.random.default_rng(1)
    true = rng.uniform([-60, -170], [60, 170], size=(300, 2))
    # predictions at spread-out distances: some metres away, some continents away
    offsets = rng.choice([0.001, 0.1, 1.0, 5.0, 20.0, 80.0], size=(300, 1)) * rng.uniform(-1, 1, (300, 2))
    pred = np.clip(true + offsets, [-90, -180], [90, 180])
    got = geo_accuracy(pred, true)
    want = ref_geo_accuracy([tuple(t) for t in true], [tuple(p) for p in pred], GEO_THRESHOLDS_KM)
    assert list(got) == ["Acc@1km", "Acc@25km", "Acc@200km", "Acc@750km", "Acc@2500km"]
    for k, v in want.items():
        assert got[k] * 100 == pytest.approx(v, abs=1e-9)
    assert 0 < got["Acc@1km"] < got["Acc@2500km"] <= 1


def test_threshold_is_inclusive_and_missing_prediction_is_a_miss() -> None:
    d = 2 * math.pi * EARTH_RADIUS_KM / 360  # one degree of longitude at the equator
    hits = geo_hits([[0, 1], [np.nan, np.nan], [0, 0]], [[0, 0], [0, 0], [np.nan, np.nan]],
                    thresholds=(d + 1e-6, 1))
    name = geo_metric_name(d + 1e-6)
    np.testing.assert_array_equal(hits[name][:2], [1.0, 0.0])
    assert np.isnan(hits[name][2])  # no truth: dropped, not counted
    assert geo_metric_name(1) == "Acc@1km" and geo_metric_name(2500.0) == "Acc@2500km"
    assert geo_metric_name(0.5) == "Acc@0.5km"


def test_check_latlon_names_file_and_record() -> None:
    assert check_latlon("12.5", "-100") == (12.5, -100.0)
    with pytest.raises(DatasetError, match=r"lat .*outside.*file 'x.csv'.*record 'line 3'.*field 'lat'"):
        check_latlon(91, 0, file="x.csv", record="line 3")
    with pytest.raises(DatasetError, match=r"lon .*outside.*field 'lon'"):
        check_latlon(0, -180.5, file="x.csv", record=1)
    with pytest.raises(DatasetError, match="not a number"):
        check_latlon("north", 0, file="x.csv", record=1)
    with pytest.raises(DatasetError, match="outside"):
        check_latlon(float("nan"), 0)


def _geo_task() -> Task:
    corpus = [Item(id=c) for c in ("a", "b", "c")]
    gps = np.array([[55.0, 12.0], [40.0, -74.0], [55.001, 12.001]])
    queries = [Query(id=f"q{i}", item=Item(id=f"q{i}", text="x"), meta={"lat": lat, "lon": lon})
               for i, (lat, lon) in enumerate([(55.0, 12.0), (40.1, -74.1), (0.0, 0.0)])]
    return Task(TaskMetadata(name="geo-toy"), "test", queries, corpus, gps=gps)


def test_geo_per_query_uses_top1_gps() -> None:
    task = _geo_task()
    out = geo_per_query(np.array([2, 1, -1]), task)
    # q0 -> c (about 0.13 km away), q1 -> b (about 14 km), q2 -> nothing (a miss)
    np.testing.assert_array_equal(out["Acc@1km"], [1, 0, 0])
    np.testing.assert_array_equal(out["Acc@25km"], [1, 1, 0])
    np.testing.assert_array_equal(out["Acc@2500km"], [1, 1, 0])
    assert list(geo_per_query(np.array([0, 0, 0]), task, thresholds=(10,))) == ["Acc@10km"]
    with pytest.raises(ValueError, match="outside the corpus"):
        geo_per_query(np.array([5, 0, 0]), task)
    with pytest.raises(ValueError, match="not a geo task"):
        geo_per_query(np.array([0, 0, 0]), Task(TaskMetadata(name="t"), "s", task.queries, task.corpus))
