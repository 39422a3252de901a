"""No path may escape a dataset root: the shared check (cirbench.core.paths) and a traversal test per loader.

Each loader test writes a real release in its format (the writers of the loader's own tests), points one
record at a real file outside the root (`../`, an absolute path, a symlink), and checks that loading is
refused with a message naming the file, the record and the field, even with check_images=false, and that
nothing was written outside.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cirbench.core.types import DatasetError
from cirbench.tasks import get_task

from .conftest import png


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A real image outside every dataset root."""
    p = tmp_path / "outside" / "secret.png"
    p.parent.mkdir(parents=True)
    p.write_bytes(png((1, 2, 3)))
    return p


# ----------------------------------------------------------------------------------------------------
# The shared check
# ----------------------------------------------------------------------------------------------------


def test_root_refuses_dotdot_absolute_and_symlinks(tmp_path: Path, secret: Path) -> None:
    from cirbench.core.paths import Root

    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "img" / "ok.png").write_bytes(b"x")
    (root / "img" / "link.png").symlink_to(secret)
    (root / "out").symlink_to(secret.parent, target_is_directory=True)
    (root / "inner.png").symlink_to(root / "img" / "ok.png")  # a symlink that stays inside is fine
    r = Root(root)
    assert r.join("img/ok.png") == root / "img" / "ok.png"
    assert r.join("./img//ok.png") == root / "img" / "ok.png"
    assert r.join("img/../img/ok.png") == root / "img" / "ok.png"
    assert r.join("inner.png") == root / "inner.png"
    assert r.join("img/not-there-yet.png") == root / "img" / "not-there-yet.png"  # writing is checked too
    cases = {"../outside/secret.png": "escapes", "img/../../outside/secret.png": "escapes",
             str(secret): "absolute path", "img/link.png": "through a symlink",
             "out/secret.png": "through a symlink", "": "empty"}
    for rel, why in cases.items():
        with pytest.raises(DatasetError, match=why) as e:
            r.join(rel, file=root / "list.json", record="r7", field="path")
        assert "list.json" in str(e.value) and "'r7'" in str(e.value) and "'path'" in str(e.value)


def test_a_symlinked_root_is_its_own_location(tmp_path: Path) -> None:
    """A dataset kept on another disk and linked in is normal: the root is resolved once."""
    from cirbench.core.paths import contained

    real = tmp_path / "disk" / "cirr"
    (real / "dev").mkdir(parents=True)
    (real / "dev" / "a.png").write_bytes(b"x")
    link = tmp_path / "cirr"
    link.symlink_to(real, target_is_directory=True)
    assert contained(link, "dev/a.png") == link / "dev" / "a.png"
    with pytest.raises(DatasetError, match="escapes"):
        contained(link, "../disk/cirr/dev/a.png")


def test_name_is_one_path_component() -> None:
    from cirbench.core.paths import Root

    for bad in ("..", ".", "a/b", "..//etc/passwd", "", "a\\b"):
        with pytest.raises(DatasetError, match="one path component"):
            Root.name(bad, file="ids.csv", record="line 3", field="images")
    assert Root.name("B00ABC") == "B00ABC"


# ----------------------------------------------------------------------------------------------------
# One traversal test per loader
# ----------------------------------------------------------------------------------------------------


def _refused(match: str, *args: object, **kwargs: object) -> str:
    with pytest.raises(DatasetError) as e:
        get_task(*args, **kwargs)  # type: ignore[arg-type]
    msg = str(e.value)
    assert all(part in msg for part in match.split("|")), msg
    return msg


def test_native(tiny_dataset: Path, secret: Path) -> None:
    corpus = tiny_dataset / "test" / "corpus.parquet"
    t = pq.read_table(corpus)
    for rel in ("../outside/secret.png", str(secret)):
        t2 = t.set_column(1, "image", pa.array([None] * t.num_rows, pa.binary())).set_column(
            2, "image_path", pa.array([rel] * t.num_rows, pa.string()))
        pq.write_table(t2, corpus)
        _refused("corpus.parquet|record 'a'|field 'image_path'", str(tiny_dataset))
    (tiny_dataset / "images").mkdir()
    (tiny_dataset / "images" / "a.png").symlink_to(secret)
    t2 = t.set_column(1, "image", pa.array([None] * t.num_rows, pa.binary())).set_column(
        2, "image_path", pa.array(["images/a.png"] * t.num_rows, pa.string()))
    pq.write_table(t2, corpus)
    _refused("through a symlink|corpus.parquet|field 'image_path'", str(tiny_dataset))
    pq.write_table(t, corpus)
    m = json.loads((tiny_dataset / "cirbench.json").read_text())
    m["splits"]["test"]["queries"] = "../../queries.parquet"
    (tiny_dataset / "cirbench.json").write_text(json.dumps(m))
    _refused("escapes|cirbench.json|field 'queries'", str(tiny_dataset))


@pytest.mark.parametrize("check", [True, False])
@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_cirr(tmp_path: Path, secret: Path, kind: str, check: bool) -> None:
    from .test_tasks_cirr import write_cirr

    root = write_cirr(tmp_path / "cirr")
    p = root / "image_splits" / "split.rc2.val.json"
    names = json.loads(p.read_text())
    first = next(iter(names))
    names[first] = "../../outside/secret.png" if kind == "dotdot" else str(secret)
    p.write_text(json.dumps(names))
    _refused(f"split.rc2.val.json|record '{first}'", "cirr", data_dir=root, check_images=check)


def test_circo(tmp_path: Path, secret: Path) -> None:
    from .test_tasks_circo import write_circo

    root = write_circo(tmp_path / "circo")
    p = root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    info = json.loads(p.read_text())
    info["images"][0]["file_name"] = "../../../outside/secret.png"
    p.write_text(json.dumps(info))
    _refused(f"image_info_unlabeled2017.json|record {info['images'][0]['id']}|field 'file_name'", "circo",
             data_dir=root, check_images=False)


def test_fashioniq(tmp_path: Path, secret: Path) -> None:
    from .test_tasks_fashioniq import write_fiq

    root = write_fiq(tmp_path / "fiq")
    caps = root / "captions" / "cap.dress.val.json"
    recs = json.loads(caps.read_text())
    recs[1]["candidate"] = "../../outside/secret"
    caps.write_text(json.dumps(recs))
    _refused("cap.dress.val.json|record 1|field 'candidate'", "fashioniq", data_dir=root, check_images=False)


@pytest.mark.parametrize("check", [True, False])
def test_mmlandmarks_abs_id(tmp_path: Path, secret: Path, check: bool) -> None:
    """`..//abs/path`: the third character '/' made joinpath restart at the filesystem root."""
    from .test_tasks_mmlandmarks import write_release

    root = write_release(tmp_path / "mml")
    p = root / "index" / "mml_index_satellite.csv"
    lines = p.read_text().splitlines()
    cells = lines[1].split(",")
    cells[0] = "..//" + str(secret.with_suffix(""))
    lines[1] = ",".join(cells)
    p.write_text("\n".join(lines) + "\n")
    _refused("mml_index_satellite.csv|record 'line 2'|field 'images'", "mmlandmarks-g2s", data_dir=root,
             check_images=check)


def test_mmlandmarks_text_json(tmp_path: Path) -> None:
    from .test_tasks_mmlandmarks import write_release

    root = write_release(tmp_path / "mml")
    p = root / "query" / "mml_query_text.csv"
    lines = p.read_text().splitlines()
    lines[1] = lines[1].split(",")[0] + ",../../../../etc/passwd"
    p.write_text("\n".join(lines) + "\n")
    _refused("mml_query_text.csv|record 'line 2'|field 'json'", "mmlandmarks-t2s", data_dir=root,
             text_sampling="first")


@pytest.mark.parametrize("field", ["queries", "corpus"])
def test_edir_without_image_check(tmp_path: Path, secret: Path, field: str) -> None:
    from .test_tasks_edir import write_manifests

    root = tmp_path / "edir"
    write_manifests(root)
    p = root / f"{field}.jsonl"
    rows = [json.loads(x) for x in p.read_text().splitlines()]
    rows[0]["image"] = str(secret) if field == "queries" else "../outside/secret.png"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _refused(f"{field}.jsonl|record '{rows[0]['id']}'|field 'image'", "edir", data_dir=root,
             check_images=False)


@pytest.mark.parametrize("col", ["pth1", "pth2"])
def test_webvid_covr_reads_and_writes_inside(tmp_path: Path, col: str) -> None:
    pytest.importorskip("av")
    from .test_tasks_covr import make_video, write_dataset

    root = tmp_path / "covr"
    root.mkdir()
    write_dataset(root)
    make_video(tmp_path / "evil.mp4", [0, 10, 20])
    p = root / "webvid8m-covr_test.csv"
    lines = p.read_text().splitlines()
    cells = lines[2].split(",")
    # from <covr>/WebVid/8M/train and from frames/a/b/c, four levels up is tmp_path: evil.mp4, and evil/
    cells[0 if col == "pth1" else 1] = "../../../../evil"
    lines[2] = ",".join(cells)
    p.write_text("\n".join(lines) + "\n")
    frames = tmp_path / "frames" / "a" / "b" / "c"
    _refused(f"webvid8m-covr_test.csv|record 'line 3'|field '{col}'", "webvid-covr", data_dir=root,
             frames_dir=str(frames), n_frames=2)
    assert not (tmp_path / "evil").exists() and not frames.exists()  # no frame written anywhere


def test_soft_uses_the_base_loaders_checks(tmp_path: Path, secret: Path) -> None:
    from .test_tasks_soft import CIRR_IMAGES, write_cirr

    root = tmp_path / "soft"
    write_cirr(root / "cirr")
    p = root / "cirr" / "image_splits" / "split.rc2.val.json"
    names = json.loads(p.read_text())
    names[CIRR_IMAGES[0]] = os.path.relpath(secret, root / "cirr" / "img_raw")
    p.write_text(json.dumps(names))
    _refused(f"split.rc2.val.json|record '{CIRR_IMAGES[0]}'", "soft-cirr-multi", data_dir=root,
             check_images=False)
