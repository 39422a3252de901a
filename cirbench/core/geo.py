"""Geolocalisation metrics: great-circle distance and accuracy within distance thresholds.

MMLandmarks (Oshkr/mml-codebase `mmlandmarks/geoutils.py`) predicts a query's position as the GPS of its
top-1 gallery item and reports the share of queries whose prediction lies within 1, 25, 200, 750 and
2,500 km (street, city, region, country, continent) of the truth, by the haversine formula with a sphere of
radius 6,371 km. The comparison is `distance <= threshold`. Values here are fractions in [0, 1] like every
other cirbench metric; the reference code prints percentages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cirbench.core.types import DatasetError, Task

EARTH_RADIUS_KM = 6371.0
GEO_THRESHOLDS_KM: tuple[float, ...] = (1, 25, 200, 750, 2500)

__all__ = [
    "EARTH_RADIUS_KM",
    "GEO_THRESHOLDS_KM",
    "check_latlon",
    "geo_accuracy",
    "geo_hits",
    "geo_metric_name",
    "geo_per_query",
    "gps_columns",
    "gps_text",
    "haversine_km",
    "parse_gps_text",
]

GPS_PREFIX = "gps:"
"""A GPS point as an Item's content: `gps:<lat>,<lon>` (degrees, Python float repr). Tasks whose gallery is
GPS points (MMLandmarks' gps-gallery protocol, corpus modality "gps") write it; models with a location
encoder read it; models without one are refused for such a task before anything is encoded."""


def gps_text(lat: float, lon: float) -> str:
    """The Item text of a GPS point (round-trips exactly through `parse_gps_text`)."""
    return f"{GPS_PREFIX}{float(lat)!r},{float(lon)!r}"


def parse_gps_text(text: str | None) -> tuple[float, float] | None:
    """(lat, lon) of an Item text written by `gps_text`; None for any other text or an out-of-range point."""
    if text is None or not text.startswith(GPS_PREFIX):
        return None
    parts = text[len(GPS_PREFIX):].split(",")
    if len(parts) != 2:
        return None
    try:
        lat, lon = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
        return None
    return lat, lon


def geo_metric_name(threshold_km: float) -> str:
    """'Acc@1km', 'Acc@2500km', 'Acc@0.5km': the reference code's key, without trailing '.0'."""
    t = float(threshold_km)
    return f"Acc@{int(t) if t.is_integer() else t}km"


def haversine_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any, *, radius_km: float = EARTH_RADIUS_KM
                 ) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (broadcasting, vectorised).

    Uses atan2(sqrt(a), sqrt(1 - a)) as geoutils.py does, which stays accurate for antipodal points.
    """
    p1, l1, p2, l2 = (np.radians(np.asarray(x, dtype=np.float64)) for x in (lat1, lon1, lat2, lon2))
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
    a = np.clip(a, 0.0, 1.0)  # rounding can push a a hair past 1 for antipodes
    return np.asarray(radius_km * 2 * np.arctan2(np.sqrt(a), np.sqrt(1 - a)), dtype=np.float64)


def check_latlon(lat: Any, lon: Any, *, file: Any = None, record: Any = None) -> tuple[float, float]:
    """(lat, lon) as floats, or a DatasetError naming the file and record when unparsable or out of range."""
    out = []
    for name, value, bound in (("lat", lat, 90.0), ("lon", lon, 180.0)):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise DatasetError(f"{name} is not a number: {value!r}", file=file, record=record,
                               field=name) from None
        if not math.isfinite(v) or abs(v) > bound:
            raise DatasetError(f"{name} {value} is outside [-{bound:g}, {bound:g}]", file=file,
                               record=record, field=name)
        out.append(v)
    return out[0], out[1]


def _latlon_array(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{what} must have shape (n, 2) as (lat, lon) in degrees, got {arr.shape}")
    return arr


def geo_hits(pred_latlon: Any, true_latlon: Any, thresholds: Sequence[float] = GEO_THRESHOLDS_KM
             ) -> dict[str, np.ndarray]:
    """Per query, 1.0 when the prediction is within each threshold (inclusive), else 0.0.

    A prediction of NaN (no prediction) counts as a miss; a query whose truth is NaN gets NaN, so it is
    dropped from means rather than counted as a free miss.
    """
    pred = _latlon_array(pred_latlon, "pred_latlon")
    true = _latlon_array(true_latlon, "true_latlon")
    if pred.shape != true.shape:
        raise ValueError(f"pred_latlon {pred.shape} and true_latlon {true.shape} differ in length")
    dist = haversine_km(true[:, 0], true[:, 1], pred[:, 0], pred[:, 1])
    unknown_truth = np.isnan(true).any(axis=1)
    out: dict[str, np.ndarray] = {}
    for t in thresholds:
        hit = np.where(np.isnan(dist), 0.0, (dist <= float(t)).astype(np.float64))
        hit[unknown_truth] = np.nan
        out[geo_metric_name(t)] = hit
    return out


def geo_accuracy(pred_latlon: Any, true_latlon: Any, thresholds: Sequence[float] = GEO_THRESHOLDS_KM
                 ) -> dict[str, float]:
    """Share of queries (in [0, 1]) located within each threshold: geoutils.geo_accuracy / 100."""
    out = {}
    for name, v in geo_hits(pred_latlon, true_latlon, thresholds).items():
        finite = v[~np.isnan(v)]
        out[name] = float(finite.mean()) if finite.size else float("nan")
    return out


def _corpus_gps(task: Task) -> np.ndarray:
    if task.gps is None:
        raise ValueError(f"task {task.name!r} has no corpus GPS (Task.gps): not a geo task")
    gps = _latlon_array(task.gps, "Task.gps")
    if gps.shape[0] != len(task.corpus):
        raise ValueError(f"Task.gps has {gps.shape[0]} rows but the corpus has {len(task.corpus)}")
    return gps


def gps_columns(task: Task, indices: np.ndarray) -> dict[str, list[Any]]:
    """A geo task's run columns (`Task.run_columns`): the prediction, i.e. the GPS of each query's top-1
    item (NaN when the run is empty), and the truth, the query's own `meta["lat"]`, `meta["lon"]`."""
    gps = _corpus_gps(task)
    top1 = indices[:, 0] if indices.shape[1] else np.full(indices.shape[0], -1)
    pred = np.where((top1 >= 0)[:, None], gps[np.maximum(top1, 0)], np.nan)
    return {"pred_lat": pred[:, 0].tolist(), "pred_lon": pred[:, 1].tolist(),
            "lat": [q.meta.get("lat") for q in task.queries],
            "lon": [q.meta.get("lon") for q in task.queries]}


def geo_per_query(run_indices_top1: Any, task: Task, thresholds: Sequence[float] = GEO_THRESHOLDS_KM
                  ) -> dict[str, np.ndarray]:
    """Per-query 0/1 for "Acc@1km" etc.: the prediction is the GPS of the top-1 corpus item.

    `run_indices_top1` holds each query's top-1 corpus position (`run.indices[:, 0]`; -1 when the run is
    empty: a miss). The corpus GPS is `Task.gps`, an (N, 2) array aligned with the corpus; the truth is
    `query.meta["lat"]`, `query.meta["lon"]`.
    """
    gps = _corpus_gps(task)
    top1 = np.asarray(run_indices_top1, dtype=np.int64).ravel()
    if top1.shape[0] != len(task.queries):
        raise ValueError(f"{top1.shape[0]} top-1 indices for {len(task.queries)} queries")
    if top1.size and top1.max() >= gps.shape[0]:
        raise ValueError(f"top-1 index {int(top1.max())} is outside the corpus ({gps.shape[0]} items)")
    pred = np.full((top1.size, 2), np.nan)
    ok = top1 >= 0
    pred[ok] = gps[top1[ok]]
    true = np.array([[q.meta.get("lat", np.nan), q.meta.get("lon", np.nan)] for q in task.queries],
                    dtype=np.float64).reshape(-1, 2)
    return geo_hits(pred, true, thresholds)
