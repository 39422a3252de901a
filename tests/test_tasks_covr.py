"""WebVid-CoVR: frame choice (vs CoVR's code), the CSV layout, both exclusions, frame pooling, bad videos.

Tiny videos are written with PyAV: 16x16 grey frames whose level encodes (video, frame index), so a test can
tell which frame was decoded.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

av = pytest.importorskip("av")

from cirbench.core import video  # noqa: E402
from cirbench.core.metrics import per_query_metrics  # noqa: E402
from cirbench.core.types import DatasetError, query_exclusions  # noqa: E402
from cirbench.tasks import get_task  # noqa: E402

FOLDER = "000001_000050"
# (pth1, pth2): row 1's reference is row 0's target, row 3's reference is row 1's target; not sorted by pth2
ROWS = [("11", "30"), ("30", "12"), ("13", "20"), ("12", "40")]
BASE = {"11": 0, "12": 20, "13": 40, "20": 60, "30": 80, "40": 100}
N_VIDEO_FRAMES = 9


def level(vid: str, k: int) -> int:
    return BASE[vid] + 10 * k


def make_video(path: Path, levels: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=10)
    s.width = s.height = 16
    s.pix_fmt = "yuv420p"
    s.options = {"crf": "0"}
    for v in levels:
        frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), v, dtype=np.uint8), format="rgb24")
        for p in s.encode(frame):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()


def grey(img: object) -> int:
    """The frame's grey level, snapped to the multiple of 10 the video was written with (x264 may be off
    by one after the RGB -> YUV -> RGB round trip)."""
    return int(round(float(np.asarray(img).mean()) / 10) * 10)


def write_dataset(root: Path, rows: list[tuple[str, str]] = ROWS, scores: list[str] | None = None,
                  drop: str | None = None) -> Path:
    vids = root / "WebVid" / "8M" / "train"
    for vid in BASE:
        make_video(vids / FOLDER / f"{vid}.mp4", [level(vid, k) for k in range(N_VIDEO_FRAMES)])
    df = pd.DataFrame({"pth1": [f"{FOLDER}/{a}" for a, _ in rows], "pth2": [f"{FOLDER}/{b}" for _, b in rows],
                       "edit": [f"make it {b}" for _, b in rows], "txt1": [f"video {a}" for a, _ in rows],
                       "txt2": [f"video {b}" for _, b in rows]})
    if scores is not None:
        df["scores"] = scores
    if drop:
        df = df.drop(columns=[drop])
    df.to_csv(root / "webvid8m-covr_test.csv", index=False)
    return root


@pytest.fixture(scope="module")
def covr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("covr"))


# ----------------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------------


def ref_sample_frames(vlen: int, frames_per_video: int = 15) -> list[int]:
    """CoVR src/data/embs.py::sample_frames, transcribed."""
    acc_samples = min(vlen, frames_per_video)
    intervals = np.linspace(start=0, stop=vlen, num=acc_samples + 1).astype(int)
    ranges = [(interv, intervals[idx + 1] - 1) for idx, interv in enumerate(intervals[:-1])]
    return [(x[0] + x[1]) // 2 for x in ranges]


@pytest.mark.parametrize("vlen", [1, 2, 7, 14, 15, 16, 31, 300, 451])
def test_sample_indices_match_covr(vlen: int) -> None:
    assert video.sample_indices(vlen, 15) == [int(i) for i in ref_sample_frames(vlen, 15)]
    assert video.middle_index(vlen) == vlen // 2


def test_middle_and_sampled_frames(covr_dir: Path) -> None:
    path = covr_dir / "WebVid" / "8M" / "train" / FOLDER / "20.mp4"
    assert video.frame_count(path) == N_VIDEO_FRAMES
    assert grey(video.middle_frame(path)) == level("20", N_VIDEO_FRAMES // 2)
    frames = video.sample_frames(path, 3)
    want = [level("20", k) for k in ref_sample_frames(N_VIDEO_FRAMES, 3)]
    assert [grey(f) for f in frames] == want
    assert len(video.sample_frames(path, 15)) == N_VIDEO_FRAMES  # min(n, vlen) frames
    assert [grey(f) for f in video.read_frames(path, [8, 0])] == [level("20", 8), level("20", 0)]
    with pytest.raises(DatasetError, match="only 9 decodable frames"):
        video.read_frames(path, [9])


def test_frame_count_over_reported(covr_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A container that claims more frames than decode: frames are chosen again from the real count."""
    path = covr_dir / "WebVid" / "8M" / "train" / FOLDER / "13.mp4"
    monkeypatch.setattr(video, "frame_count", lambda *a, **k: 40)
    assert grey(video.middle_frame(path)) == level("13", N_VIDEO_FRAMES // 2)
    want = [level("13", k) for k in ref_sample_frames(N_VIDEO_FRAMES, 3)]
    assert [grey(f) for f in video.sample_frames(path, 3)] == want


def test_corrupt_and_missing_video(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    with pytest.raises(DatasetError, match=r"cannot be decoded.*bad\.mp4.*record 'row 7'"):
        video.middle_frame(bad, record="row 7")
    with pytest.raises(DatasetError, match=r"missing.*nope\.mp4"):
        video.frame_count(tmp_path / "nope.mp4")


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def test_load_official(covr_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames_dir = tmp_path / "frames"
    task = get_task("webvid-covr", data_dir=covr_dir, n_frames=3, frames_dir=str(frames_dir))
    assert task.split == "test" and task.protocol.name == "official"
    assert [it.id for it in task.corpus] == [f"{FOLDER}/{b}" for _, b in ROWS]
    q = task.queries[1]
    assert q.item.text == "make it 12" and q.relevant_ids == (f"{FOLDER}/12",)
    assert grey(q.item.load_image()) == level("30", N_VIDEO_FRAMES // 2)  # middle frame of the reference
    assert q.meta["txt1"] == "video 30"
    frames = task.extra["corpus_frames"][f"{FOLDER}/40"]
    assert [grey(f.load_image()) for f in frames] == [level("40", k) for k in ref_sample_frames(9, 3)]
    assert task.corpus[3].image == frames[1].image  # the middle sampled frame stands for the target
    assert task.corpus[3].caption == "video 40"
    # correct exclusion: a target whose video is the query's reference
    pos = task.corpus_positions
    assert task.protocol.exclude_reference
    assert query_exclusions(task) == [[], [pos[f"{FOLDER}/30"]], [], [pos[f"{FOLDER}/12"]]]
    assert task.protocol.metrics == ("R@1", "R@5", "R@10", "R@50", "meanR3", "meanR4")
    # cached: a second load decodes nothing

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(video, "_select", boom)
    again = get_task("webvid-covr", data_dir=covr_dir, n_frames=3, frames_dir=str(frames_dir))
    assert again.queries[0].item.image == task.queries[0].item.image


def ref_paper_code_mask(csv_path: Path) -> list[set[str]]:
    """The released evaluator's mask: ids from the rows sorted by pth2, features in file order."""
    df = pd.read_csv(csv_path)
    file_targets = df["pth2"].tolist()
    s = df.sort_values("pth2").reset_index(drop=True)
    pairid2ref, pairid2tar = s["pth1"].to_dict(), s["pth2"].to_dict()
    ref_ids = [pairid2ref[i] for i in range(len(df))]
    tar_ids = [pairid2tar[j] for j in range(len(df))]
    return [{file_targets[j] for j in range(len(df)) if ref_ids[i] == tar_ids[j]} for i in range(len(df))]


def test_paper_code_quirk(covr_dir: Path, tmp_path: Path) -> None:
    task = get_task("webvid-covr", data_dir=covr_dir, protocol="paper-code", n_frames=1,
                    frames_dir=str(tmp_path / "f"))
    want = ref_paper_code_mask(covr_dir / "webvid8m-covr_test.csv")
    assert [set(q.exclude_ids) for q in task.queries] == want
    assert want[0] == {f"{FOLDER}/20"}  # the quirk: not the query's own reference
    assert not task.protocol.exclude_reference
    assert "sorted by pth2" in task.protocol.notes["exclusion"]


def test_exclusion_matches_released_eval_recall() -> None:
    """eval_recall with self-similarity set to -10 vs ranking with the excluded targets removed."""
    rng = np.random.default_rng(0)
    n = 60
    refs = [f"v{i + 100}" for i in range(n)]
    tars = [f"v{i}" for i in range(n)]
    for i in range(0, n, 3):
        refs[i] = tars[(i + 1) % n]  # a third of the queries use another query's target as reference
    sim = rng.normal(size=(n, n))
    sim[np.arange(n), np.arange(n)] += 1.0
    masked = sim.copy()
    for i in range(n):
        for j in range(n):
            if refs[i] == tars[j]:
                masked[i][j] = -10
    ranks = np.array([np.where(np.argsort(s)[::-1] == i)[0][0] for i, s in enumerate(masked)])
    want = {k: 100.0 * (ranks < k).mean() for k in (1, 5, 10, 50)}
    ranked = []
    for i in range(n):
        order = [j for j in np.argsort(-sim[i], kind="stable") if tars[j] != refs[i]]
        ranked.append(order[:50] + [-1] * (50 - len(order[:50])))
    vals = per_query_metrics(["R@1", "R@5", "R@10", "R@50", "meanR3", "meanR4"], np.array(ranked),
                             [np.array([i]) for i in range(n)])
    got = {k: 100.0 * vals[f"R@{k}"].mean() for k in (1, 5, 10, 50)}
    assert got == pytest.approx(want)
    assert 100 * vals["meanR3"].mean() == pytest.approx((want[1] + want[5] + want[10]) / 3)
    assert 100 * vals["meanR4"].mean() == pytest.approx(sum(want.values()) / 4)


def test_csv_scores_pooling_and_expand_corpus(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "c", scores=["[0.1, 0.5, 0.2]", "[]", "", "[0.3, 0.3]"])
    task = get_task("webvid-covr", data_dir=root, n_frames=3, target_pool="csv-scores",
                    frames_dir=str(tmp_path / "f"))
    weights = task.extra["corpus_frame_weights"]
    e = [math.exp(x / 0.1) for x in (0.1, 0.5, 0.2)]
    assert weights[f"{FOLDER}/30"] == pytest.approx([x / sum(e) for x in e])
    assert set(weights) == {f"{FOLDER}/30"}  # empty scores and a length mismatch fall back to the mean
    assert "1 of 4 targets" in task.protocol.notes["target"]
    items, rows, w = video.expand_corpus(task)
    assert len(items) == 12 and rows[1] == [3, 4, 5]
    assert w is not None and w[0] == pytest.approx(weights[f"{FOLDER}/30"])
    assert w[1] == pytest.approx([1 / 3] * 3)
    plain = get_task("webvid-covr", data_dir=root, n_frames=3, frames_dir=str(tmp_path / "f"))
    assert video.expand_corpus(plain)[2] is None


def test_bad_input(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "nocol", drop="edit")
    with pytest.raises(DatasetError, match=r"column.*'edit'.*webvid8m-covr_test\.csv"):
        get_task("webvid-covr", data_dir=root, frames_dir=str(tmp_path / "f"))
    root = write_dataset(tmp_path / "novid")
    (root / "WebVid" / "8M" / "train" / FOLDER / "13.mp4").unlink()
    with pytest.raises(DatasetError,
                       match=r"(?s)13\.mp4 is missing.*record 'webvid8m-covr_test\.csv line 4'.*pth1"):
        get_task("webvid-covr", data_dir=root, frames_dir=str(tmp_path / "f"))
    root = write_dataset(tmp_path / "corrupt")
    (root / "WebVid" / "8M" / "train" / FOLDER / "40.mp4").write_bytes(b"not a video at all" * 50)
    with pytest.raises(DatasetError, match=r"cannot be decoded.*40\.mp4.*line 5"):
        get_task("webvid-covr", data_dir=root, frames_dir=str(tmp_path / "f"), workers=1)
    root = write_dataset(tmp_path / "dup", rows=[("11", "30"), ("12", "30")])
    with pytest.raises(DatasetError, match="unique pth2"):
        get_task("webvid-covr", data_dir=root, protocol="paper-code", frames_dir=str(tmp_path / "f"))
    task = get_task("webvid-covr", data_dir=root, n_frames=2, frames_dir=str(tmp_path / "f"))
    assert len(task.corpus) == 1 and len(task.queries) == 2  # a shared target is one gallery item
