"""Bad-input sweep: many mistaken or hostile inputs through the `cirbench` command, each outcome classified.

    python scripts/bad_input_sweep.py               # the whole sweep, a summary per group and in total
    python scripts/bad_input_sweep.py -k cirr -v    # only cases whose name contains "cirr", with output
    python scripts/bad_input_sweep.py --json out.json

Every case writes small files in a benchmark's on-disk format (the test suite's fixture writers), breaks one
thing, runs one `cirbench` command in-process (typer's CliRunner) and classifies the outcome:

- clear:       a non-zero exit and a message that names what the case broke (each of its `expect` strings:
               the file, the record, the field or option, a suggestion);
- unclear:     a non-zero exit, no traceback, but the message misses one of them;
- traceback:   an exception escaped (or the output shows a Python traceback);
- silent:      exit 0 on an input that should have been refused, or a security canary fired (a command ran,
               a file outside a dataset root was read or written);
- half-written: any of the above that also left output behind (a result directory, a temporary folder).

A few cases are borderline inputs that must be *accepted* (a task name in capitals, a precomputed model over
a dataset whose image files are absent); they count as "ok" or "wrongly refused".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

Setup = Callable[[Path], "Spec"]


@dataclass
class Spec:
    """What one case runs and what a clear answer to it names."""

    args: list[str]
    expect: tuple[str, ...] = ()
    absent: tuple[Path, ...] = ()
    """Paths that must not exist afterwards (outputs of a refused command, canaries)."""
    canary: tuple[Path, ...] = ()
    """Paths whose existence afterwards means a security hole (a command ran, a file was written outside)."""
    keep: tuple[Path, ...] = ()
    """Paths that must still exist afterwards (a user's files next to an output)."""


@dataclass
class Case:
    name: str
    group: str
    setup: Setup
    accept: bool = False
    """A borderline input that must work (exit 0, and `expect` in the output)."""


@dataclass
class Outcome:
    case: str
    group: str
    kind: str
    half_written: bool
    exit_code: int
    output: str
    missing: list[str] = field(default_factory=list)


CASES: list[Case] = []


def case(group: str, *, accept: bool = False) -> Callable[[Setup], Setup]:
    def register(fn: Setup) -> Setup:
        CASES.append(Case(fn.__name__.removeprefix("c_"), group, fn, accept=accept))
        return fn
    return register


# ------------------------------------------------------------------------------------------------------
# Fixtures: the test suite's writers of each released format
# ------------------------------------------------------------------------------------------------------

_TEMPLATES: dict[str, Path] = {}
_TMP = Path(tempfile.mkdtemp(prefix="cirbench-sweep-"))


def _template(name: str, write: Callable[[Path], object]) -> Path:
    if name not in _TEMPLATES:
        root = _TMP / "templates" / name
        write(root)
        _TEMPLATES[name] = root
    return _TEMPLATES[name]


def fixture(w: Path, name: str) -> Path:
    """A fresh copy of a valid dataset of kind `name` under the case's work dir."""
    writers: dict[str, Callable[[Path], object]] = {
        "native": _write_native, "cirr": _write_cirr, "circo": _write_circo, "fashioniq": _write_fiq,
        "mml": _write_mml, "edir": _write_edir, "covr": _write_covr, "soft": _write_soft,
    }
    src = _template(name, writers[name])
    dst = w / name
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _write_native(root: Path) -> None:
    from cirbench.core.dataset import ImageRecord, QueryRecord, SplitData, write_dataset
    from tests.conftest import png

    colors = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255), "d": (255, 255, 0), "e": (0, 255, 255)}
    corpus = [ImageRecord(id=k, image=png(v), caption=f"a {k} square") for k, v in colors.items()]
    queries = [QueryRecord(id=f"q{i}", reference_id=r, text=f"make it {t}", relevant_ids=[t],
                           category="Attribute", subcategory="Color")
               for i, (r, t) in enumerate((("a", "b"), ("b", "c"), ("c", "e")), 1)]
    write_dataset(root, {"test": SplitData(queries=queries, corpus=corpus)}, name="tiny")


def _write_cirr(root: Path) -> None:
    from tests.test_tasks_cirr import write_cirr
    write_cirr(root)


def _write_circo(root: Path) -> None:
    from tests.test_tasks_circo import write_circo
    write_circo(root)


def _write_fiq(root: Path) -> None:
    from tests.test_tasks_fashioniq import write_fiq
    write_fiq(root)


def _write_mml(root: Path) -> None:
    from tests.test_tasks_mmlandmarks import write_release
    write_release(root)


def _write_edir(root: Path) -> None:
    from tests.conftest import png
    from tests.test_tasks_edir import image_names, write_manifests
    write_manifests(root)
    (root / "imgs_mc").mkdir()
    for n, name in enumerate(image_names()):
        (root / "imgs_mc" / name).write_bytes(png((n * 20, 0, 0), 4))


def _write_covr(root: Path) -> None:
    from tests.test_tasks_covr import write_dataset
    root.mkdir(parents=True)
    write_dataset(root)


def _write_soft(root: Path) -> None:
    import tests.test_tasks_soft as t
    t.write_cirr(root / "cirr")
    t.write_fashioniq(root / "fashioniq")
    sel = root / "mt_pipeline" / "llm"
    t._json(sel / "multi_target_selection" / "cirr_multi_target_selection.json", t.CIRR_MULTI)
    t._json(sel / "single_target_selection" / "cirr_selection_single_target_final.json", t.CIRR_SINGLE)
    for cat in ("dress", "shirt", "toptee"):
        t._json(sel / "multi_target_selection" / f"{cat}_multi_target_selection.json", t.FIQ_MULTI[cat])
        t._json(sel / "single_target_selection" / f"{cat}_selection_single_target_seed42.json",
                t.FIQ_SINGLE[cat])


def outside(w: Path, name: str = "secret.png") -> Path:
    """A real image outside every dataset root: reading it through a dataset is an escape."""
    from tests.conftest import png
    p = w / "outside" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(png((9, 9, 9), 4))
    return p


def ev(w: Path, task: str, *extra: str, model: str = "random", data_dir: Path | None = None) -> list[str]:
    """`cirbench eval` of a fast model, into w/out (which must not exist after a refusal)."""
    args = ["eval", "-m", model, "-t", task, "-o", str(w / "out"), "-q", "--bootstrap", "10", "--no-cache"]
    if data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    return args + list(extra)


def spec_eval(w: Path, task: str, *extra: str, expect: tuple[str, ...], model: str = "random",
              data_dir: Path | None = None, canary: tuple[Path, ...] = ()) -> Spec:
    return Spec(ev(w, task, *extra, model=model, data_dir=data_dir), expect, (w / "out",), canary)


def jload(p: Path) -> object:
    return json.loads(p.read_text())


def jsave(p: Path, data: object) -> None:
    p.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------------------------
# Native format (cirbench/core/dataset.py)
# ------------------------------------------------------------------------------------------------------


def _manifest(root: Path) -> dict:
    return json.loads((root / "cirbench.json").read_text())


def _set_manifest(root: Path, m: object) -> None:
    (root / "cirbench.json").write_text(json.dumps(m))


def _rewrite(path: Path, **cols: list) -> None:
    t = pq.read_table(path)
    for name, values in cols.items():
        i = t.column_names.index(name)
        t = t.set_column(i, name, pa.array(values, type=t.schema.field(name).type))
    pq.write_table(t, path)


@case("native")
def c_native_no_manifest(w: Path) -> Spec:
    d = fixture(w, "native")
    (d / "cirbench.json").unlink()
    return spec_eval(w, str(d), expect=("cirbench.json", str(d)))


@case("native")
def c_native_manifest_malformed(w: Path) -> Spec:
    d = fixture(w, "native")
    (d / "cirbench.json").write_text("{not json")
    return spec_eval(w, str(d), expect=("cirbench.json", "JSON"))


@case("native")
def c_native_manifest_list(w: Path) -> Spec:
    d = fixture(w, "native")
    _set_manifest(d, [1, 2])
    return spec_eval(w, str(d), expect=("cirbench.json", "object"))


@case("native")
def c_native_manifest_no_splits(w: Path) -> Spec:
    d = fixture(w, "native")
    m = _manifest(d)
    del m["splits"]
    _set_manifest(d, m)
    return spec_eval(w, str(d), expect=("cirbench.json", "splits"))


@case("native")
def c_native_split_entry_no_queries(w: Path) -> Spec:
    d = fixture(w, "native")
    m = _manifest(d)
    del m["splits"]["test"]["queries"]
    _set_manifest(d, m)
    return spec_eval(w, str(d), expect=("cirbench.json", "queries"))


@case("native")
def c_native_wrong_format(w: Path) -> Spec:
    d = fixture(w, "native")
    m = _manifest(d)
    m["format"] = "other"
    _set_manifest(d, m)
    return spec_eval(w, str(d), expect=("cirbench.json", "format"))


@case("native")
def c_native_format_version(w: Path) -> Spec:
    d = fixture(w, "native")
    m = _manifest(d)
    m["format_version"] = 7
    _set_manifest(d, m)
    return spec_eval(w, str(d), expect=("cirbench.json", "format_version"))


@case("native")
def c_native_unknown_split(w: Path) -> Spec:
    d = fixture(w, "native")
    return spec_eval(w, str(d), "--split", "dev", expect=("dev", "test"))


@case("native")
def c_native_corpus_path_absolute(w: Path) -> Spec:
    d = fixture(w, "native")
    m = _manifest(d)
    m["splits"]["test"]["corpus"] = str((d / "test" / "corpus.parquet").resolve())
    _set_manifest(d, m)
    return spec_eval(w, str(d), expect=("cirbench.json", "corpus", "absolute"))


@case("native")
def c_native_corpus_path_escapes(w: Path) -> Spec:
    d = fixture(w, "native")
    shutil.copy(d / "test" / "corpus.parquet", w / "elsewhere.parquet")
    m = _manifest(d)
    m["splits"]["test"]["corpus"] = "../elsewhere.parquet"
    _set_manifest(d, m)
    return spec_eval(w, str(d), expect=("cirbench.json", "corpus", "escapes"))


@case("native")
def c_native_queries_missing(w: Path) -> Spec:
    d = fixture(w, "native")
    (d / "test" / "queries.parquet").unlink()
    return spec_eval(w, str(d), expect=("queries.parquet", "missing"))


@case("native")
def c_native_queries_corrupt(w: Path) -> Spec:
    d = fixture(w, "native")
    (d / "test" / "queries.parquet").write_bytes(b"PAR1 not really")
    return spec_eval(w, str(d), expect=("queries.parquet", "parquet"))


@case("native")
def c_native_queries_no_text_column(w: Path) -> Spec:
    d = fixture(w, "native")
    p = d / "test" / "queries.parquet"
    t = pq.read_table(p)
    pq.write_table(t.drop(["text"]), p)
    return spec_eval(w, str(d), expect=("queries.parquet", "text"))


@case("native")
def c_native_duplicate_corpus_id(w: Path) -> Spec:
    d = fixture(w, "native")
    _rewrite(d / "test" / "corpus.parquet", id=["a", "b", "c", "d", "a"])
    return spec_eval(w, str(d), expect=("corpus.parquet", "'a'", "duplicate"))


@case("native")
def c_native_duplicate_query_id(w: Path) -> Spec:
    d = fixture(w, "native")
    _rewrite(d / "test" / "queries.parquet", id=["q1", "q1", "q3"])
    return spec_eval(w, str(d), expect=("queries.parquet", "'q1'", "duplicate"))


@case("native")
def c_native_null_query_id(w: Path) -> Spec:
    d = fixture(w, "native")
    _rewrite(d / "test" / "queries.parquet", id=["q1", None, "q3"])
    return spec_eval(w, str(d), expect=("queries.parquet", "record 1", "'id'"))


@case("native")
def c_native_null_text(w: Path) -> Spec:
    d = fixture(w, "native")
    _rewrite(d / "test" / "queries.parquet", text=["x", None, "y"])
    return spec_eval(w, str(d), expect=("queries.parquet", "q2", "text"))


@case("native")
def c_native_unknown_reference(w: Path) -> Spec:
    d = fixture(w, "native")
    _rewrite(d / "test" / "queries.parquet", reference_id=["a", "zz", "c"])
    return spec_eval(w, str(d), expect=("queries.parquet", "q2", "reference_id", "zz"))


@case("native")
def c_native_empty_relevant(w: Path) -> Spec:
    d = fixture(w, "native")
    _rewrite(d / "test" / "queries.parquet", relevant_ids=[["b"], [], ["e"]])
    return spec_eval(w, str(d), expect=("queries.parquet", "q2", "relevant_ids"))


@case("native")
def c_native_relevant_not_in_corpus(w: Path) -> Spec:
    d = fixture(w, "native")
    _rewrite(d / "test" / "queries.parquet", relevant_ids=[["b"], ["nope"], ["e"]])
    return spec_eval(w, str(d), expect=("queries.parquet", "q2", "relevant_ids", "nope"))


@case("native")
def c_native_bad_meta(w: Path) -> Spec:
    d = fixture(w, "native")
    _rewrite(d / "test" / "queries.parquet", meta=["{", None, None])
    return spec_eval(w, str(d), expect=("queries.parquet", "q1", "meta"))


def _image_paths(d: Path, paths: list[str | None]) -> None:
    _rewrite(d / "test" / "corpus.parquet", image=[None] * 5, image_path=paths)


@case("native")
def c_native_image_path_escapes(w: Path) -> Spec:
    d = fixture(w, "native")
    outside(w)
    _image_paths(d, ["../outside/secret.png"] * 5)
    return spec_eval(w, str(d), expect=("corpus.parquet", "image_path", "escapes"))


@case("native")
def c_native_image_path_absolute(w: Path) -> Spec:
    d = fixture(w, "native")
    p = outside(w)
    _image_paths(d, [str(p)] * 5)
    return spec_eval(w, str(d), expect=("corpus.parquet", "image_path", "absolute"))


@case("native")
def c_native_image_path_symlink_out(w: Path) -> Spec:
    d = fixture(w, "native")
    p = outside(w)
    (d / "images").mkdir()
    (d / "images" / "link.png").symlink_to(p)
    _image_paths(d, ["images/link.png"] * 5)
    return spec_eval(w, str(d), expect=("corpus.parquet", "image_path", "escapes"))


@case("native")
def c_native_image_dir_symlink_out(w: Path) -> Spec:
    d = fixture(w, "native")
    outside(w)
    (d / "images").symlink_to(w / "outside")
    _image_paths(d, ["images/secret.png"] * 5)
    return spec_eval(w, str(d), expect=("corpus.parquet", "image_path", "escapes"))


@case("native")
def c_native_image_missing_both(w: Path) -> Spec:
    d = fixture(w, "native")
    _image_paths(d, ["x.png", None, "y.png", "z.png", "u.png"])
    return spec_eval(w, str(d), expect=("corpus.parquet", "'b'", "image"))


@case("native")
def c_native_image_file_missing(w: Path) -> Spec:
    d = fixture(w, "native")
    blobs = pq.read_table(d / "test" / "corpus.parquet")["image"].to_pylist()
    _rewrite(d / "test" / "corpus.parquet", image=[None, *blobs[1:]],
             image_path=["images/a.png"] + [None] * 4)
    return spec_eval(w, str(d), expect=("images/a.png", "'a'", "missing"))


@case("native")
def c_native_image_not_decodable(w: Path) -> Spec:
    d = fixture(w, "native")
    blobs = pq.read_table(d / "test" / "corpus.parquet")["image"].to_pylist()
    # format 2 stores images as the datasets Image() feature: {"bytes": ..., "path": ...}
    bad = {**blobs[1], "bytes": b"not a png"} if isinstance(blobs[1], dict) else b"not a png"
    _rewrite(d / "test" / "corpus.parquet", image=[blobs[0], bad, *blobs[2:]])
    return spec_eval(w, str(d), expect=("'b'", "image", "decoded"))


@case("native")
def c_native_protocol_option_ignored(w: Path) -> Spec:
    d = fixture(w, "native")
    return spec_eval(w, str(d), "--protocol", "circo", expect=("--protocol", "circo"))


@case("native")
def c_native_task_option_ignored(w: Path) -> Spec:
    d = fixture(w, "native")
    return spec_eval(w, str(d), "--task-option", "check_images=false", expect=("check_images",))


# ------------------------------------------------------------------------------------------------------
# CIRR
# ------------------------------------------------------------------------------------------------------

CAP = "captions/cap.rc2.val.json"
SPL = "image_splits/split.rc2.val.json"


@case("cirr")
def c_cirr_no_data_dir(w: Path) -> Spec:
    return spec_eval(w, "cirr", expect=("--data-dir", "CIRBENCH_DATA"))


@case("cirr")
def c_cirr_data_dir_missing(w: Path) -> Spec:
    return spec_eval(w, "cirr", data_dir=w / "nope", expect=(str(w / "nope"), "does not exist"))


@case("cirr")
def c_cirr_no_captions_dir(w: Path) -> Spec:
    d = fixture(w, "cirr")
    shutil.rmtree(d / "captions")
    shutil.rmtree(d / "image_splits")
    return spec_eval(w, "cirr", data_dir=d, expect=("captions", str(d)))


@case("cirr")
def c_cirr_caption_malformed(w: Path) -> Spec:
    d = fixture(w, "cirr")
    (d / CAP).write_text("[{")
    return spec_eval(w, "cirr", data_dir=d, expect=("cap.rc2.val.json", "JSON"))


@case("cirr")
def c_cirr_caption_not_list(w: Path) -> Spec:
    d = fixture(w, "cirr")
    jsave(d / CAP, {"a": 1})
    return spec_eval(w, "cirr", data_dir=d, expect=("cap.rc2.val.json", "list"))


@case("cirr")
def c_cirr_pairid_missing(w: Path) -> Spec:
    d = fixture(w, "cirr")
    recs = jload(d / CAP)
    del recs[0]["pairid"]
    jsave(d / CAP, recs)
    return spec_eval(w, "cirr", data_dir=d, expect=("cap.rc2.val.json", "record 0", "pairid"))


@case("cirr")
def c_cirr_pairid_string(w: Path) -> Spec:
    d = fixture(w, "cirr")
    recs = jload(d / CAP)
    recs[2]["pairid"] = "x"
    jsave(d / CAP, recs)
    return spec_eval(w, "cirr", data_dir=d, expect=("cap.rc2.val.json", "record 2", "pairid"))


@case("cirr")
def c_cirr_reference_unknown(w: Path) -> Spec:
    d = fixture(w, "cirr")
    recs = jload(d / CAP)
    recs[0]["reference"] = "ghost"
    jsave(d / CAP, recs)
    return spec_eval(w, "cirr", data_dir=d, expect=("cap.rc2.val.json", "ghost", "reference"))


@case("cirr")
def c_cirr_members_not_list(w: Path) -> Spec:
    d = fixture(w, "cirr")
    recs = jload(d / CAP)
    recs[0]["img_set"]["members"] = "abc"
    jsave(d / CAP, recs)
    return spec_eval(w, "cirr", data_dir=d, expect=("cap.rc2.val.json", "img_set.members"))


@case("cirr")
def c_cirr_split_value_not_string(w: Path) -> Spec:
    d = fixture(w, "cirr")
    m = jload(d / SPL)
    first = next(iter(m))
    m[first] = 3
    jsave(d / SPL, m)
    return spec_eval(w, "cirr", data_dir=d, expect=("split.rc2.val.json", first))


def _cirr_escape(w: Path, value: Callable[[Path, str], str], check: str) -> Spec:
    d = fixture(w, "cirr")
    p = outside(w)
    m = jload(d / SPL)
    first = next(iter(m))
    m = {k: value(p, k) for k in m}
    jsave(d / SPL, m)
    return spec_eval(w, "cirr", "--task-option", f"check_images={check}", data_dir=d,
                     expect=("split.rc2.val.json", first))


@case("cirr")
def c_cirr_split_dotdot_nocheck(w: Path) -> Spec:
    return _cirr_escape(w, lambda p, k: "../../outside/secret.png", "false")


@case("cirr")
def c_cirr_split_dotdot_check(w: Path) -> Spec:
    return _cirr_escape(w, lambda p, k: "../../outside/secret.png", "true")


@case("cirr")
def c_cirr_split_absolute_nocheck(w: Path) -> Spec:
    return _cirr_escape(w, lambda p, k: str(p), "false")


@case("cirr")
def c_cirr_split_absolute_check(w: Path) -> Spec:
    return _cirr_escape(w, lambda p, k: str(p), "true")


@case("cirr")
def c_cirr_images_missing(w: Path) -> Spec:
    d = fixture(w, "cirr")
    shutil.rmtree(d / "img_raw" / "dev")
    return spec_eval(w, "cirr", data_dir=d, expect=("missing", "check_images=false", "--task-option"))


@case("cirr")
def c_cirr_markup_in_path(w: Path) -> Spec:
    d = fixture(w, "cirr")
    shutil.rmtree(d / "img_raw" / "dev")
    odd = w / "[old]" / "cirr"
    odd.parent.mkdir()
    d.rename(odd)
    return spec_eval(w, "cirr", data_dir=odd, expect=("[old]", "missing"))


@case("cirr")
def c_cirr_option_typo(w: Path) -> Spec:
    d = fixture(w, "cirr")
    return spec_eval(w, "cirr", "--task-option", "check_image=false", data_dir=d,
                     expect=("check_image", "check_images"))


@case("cirr")
def c_cirr_option_bad_bool(w: Path) -> Spec:
    d = fixture(w, "cirr")
    return spec_eval(w, "cirr", "--task-option", "check_images=maybe", data_dir=d,
                     expect=("check_images", "maybe"))


@case("cirr")
def c_cirr_unknown_split(w: Path) -> Spec:
    d = fixture(w, "cirr")
    return spec_eval(w, "cirr", "--split", "test2", data_dir=d, expect=("test2", "test1"))


@case("cirr")
def c_cirr_unknown_protocol(w: Path) -> Spec:
    d = fixture(w, "cirr")
    return spec_eval(w, "cirr", "--protocol", "reference-kep", data_dir=d,
                     expect=("reference-kep", "reference-kept"))


@case("cirr")
def c_cirr_image_root_missing(w: Path) -> Spec:
    d = fixture(w, "cirr")
    return spec_eval(w, "cirr", "--task-option", f"image_root={w / 'nowhere'}", data_dir=d,
                     expect=("nowhere",))


@case("cirr", accept=True)
def c_cirr_task_name_capitals(w: Path) -> Spec:
    d = fixture(w, "cirr")
    return Spec(ev(w, "CIRR", data_dir=d))


# ------------------------------------------------------------------------------------------------------
# CIRCO
# ------------------------------------------------------------------------------------------------------

CVAL = "annotations/val.json"
INFO = "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"


@case("circo")
def c_circo_annotations_missing(w: Path) -> Spec:
    d = fixture(w, "circo")
    (d / CVAL).unlink()
    return spec_eval(w, "circo", data_dir=d, expect=("val.json", "missing"))


@case("circo")
def c_circo_info_missing(w: Path) -> Spec:
    d = fixture(w, "circo")
    (d / INFO).unlink()
    return spec_eval(w, "circo", data_dir=d, expect=("image_info_unlabeled2017.json", "missing"))


@case("circo")
def c_circo_gt_string(w: Path) -> Spec:
    d = fixture(w, "circo")
    recs = jload(d / CVAL)
    recs[1]["gt_img_ids"] = ["x"]
    jsave(d / CVAL, recs)
    return spec_eval(w, "circo", data_dir=d, expect=("val.json", "record 1", "gt_img_ids"))


@case("circo")
def c_circo_target_not_in_gts(w: Path) -> Spec:
    d = fixture(w, "circo")
    recs = jload(d / CVAL)
    recs[0]["target_img_id"] = recs[0]["reference_img_id"]
    jsave(d / CVAL, recs)
    return spec_eval(w, "circo", data_dir=d, expect=("val.json", "record 0", "target_img_id"))


@case("circo")
def c_circo_reference_unknown(w: Path) -> Spec:
    d = fixture(w, "circo")
    recs = jload(d / CVAL)
    recs[0]["reference_img_id"] = 999999999
    jsave(d / CVAL, recs)
    return spec_eval(w, "circo", data_dir=d, expect=("val.json", "999999999", "reference_img_id"))


@case("circo")
def c_circo_duplicate_image_id(w: Path) -> Spec:
    d = fixture(w, "circo")
    info = jload(d / INFO)
    info["images"][1]["id"] = info["images"][0]["id"]
    jsave(d / INFO, info)
    return spec_eval(w, "circo", data_dir=d, expect=("image_info_unlabeled2017.json", "duplicate", "id"))


def _circo_escape(w: Path, name: Callable[[Path], str], check: str) -> Spec:
    d = fixture(w, "circo")
    p = outside(w, "secret.jpg")
    info = jload(d / INFO)
    for img in info["images"]:
        img["file_name"] = name(p)
    jsave(d / INFO, info)
    return spec_eval(w, "circo", "--task-option", f"check_images={check}", data_dir=d,
                     expect=("image_info_unlabeled2017.json", "file_name"))


@case("circo")
def c_circo_file_name_dotdot_nocheck(w: Path) -> Spec:
    return _circo_escape(w, lambda p: "../../../outside/secret.jpg", "false")


@case("circo")
def c_circo_file_name_absolute_nocheck(w: Path) -> Spec:
    return _circo_escape(w, lambda p: str(p), "false")


@case("circo")
def c_circo_coco_dir_missing(w: Path) -> Spec:
    d = fixture(w, "circo")
    return spec_eval(w, "circo", "--task-option", f"coco_dir={w / 'nococo'}", data_dir=d,
                     expect=("nococo",))


@case("circo")
def c_circo_not_a_record(w: Path) -> Spec:
    d = fixture(w, "circo")
    recs = jload(d / CVAL)
    recs[3] = "oops"
    jsave(d / CVAL, recs)
    return spec_eval(w, "circo", data_dir=d, expect=("val.json", "record 3"))


# ------------------------------------------------------------------------------------------------------
# FashionIQ
# ------------------------------------------------------------------------------------------------------

FCAP = "captions/cap.dress.val.json"
FSPL = "image_splits/split.dress.val.json"


@case("fashioniq")
def c_fiq_three_captions(w: Path) -> Spec:
    d = fixture(w, "fashioniq")
    recs = jload(d / FCAP)
    recs[4]["captions"] = ["a", "b", "c"]
    jsave(d / FCAP, recs)
    return spec_eval(w, "fashioniq", data_dir=d, expect=("cap.dress.val.json", "record 4", "captions"))


@case("fashioniq")
def c_fiq_candidate_missing(w: Path) -> Spec:
    d = fixture(w, "fashioniq")
    recs = jload(d / FCAP)
    del recs[2]["candidate"]
    jsave(d / FCAP, recs)
    return spec_eval(w, "fashioniq", data_dir=d, expect=("cap.dress.val.json", "record 2", "candidate"))


@case("fashioniq")
def c_fiq_category_typo(w: Path) -> Spec:
    d = fixture(w, "fashioniq")
    return spec_eval(w, "fashioniq", "--task-option", "categories=dres", data_dir=d,
                     expect=("categories", "dres", "dress"))


@case("fashioniq")
def c_fiq_image_ext(w: Path) -> Spec:
    d = fixture(w, "fashioniq")
    return spec_eval(w, "fashioniq", "--task-option", "image_ext=gif", data_dir=d,
                     expect=("image_ext", "gif"))


@case("fashioniq")
def c_fiq_target_not_in_split(w: Path) -> Spec:
    d = fixture(w, "fashioniq")
    recs = jload(d / FCAP)
    recs[5]["target"] = "B0ZZZZ"
    jsave(d / FCAP, recs)
    return spec_eval(w, "fashioniq", data_dir=d, expect=("cap.dress.val.json", "record 5", "target"))


@case("fashioniq")
def c_fiq_asin_dotdot_nocheck(w: Path) -> Spec:
    d = fixture(w, "fashioniq")
    outside(w)
    ids = jload(d / FSPL)
    ids[0] = "../../outside/secret"
    jsave(d / FSPL, ids)
    recs = jload(d / FCAP)
    for r in recs:
        r["candidate"] = ids[0]
    jsave(d / FCAP, recs)
    return spec_eval(w, "fashioniq", "--task-option", "check_images=false", data_dir=d,
                     expect=("split.dress.val.json", "record 0"))


@case("fashioniq")
def c_fiq_split_entry_int(w: Path) -> Spec:
    d = fixture(w, "fashioniq")
    ids = jload(d / FSPL)
    ids[3] = 17
    jsave(d / FSPL, ids)
    return spec_eval(w, "fashioniq", data_dir=d, expect=("split.dress.val.json", "record 3"))


@case("fashioniq")
def c_fiq_image_dir_missing(w: Path) -> Spec:
    d = fixture(w, "fashioniq")
    return spec_eval(w, "fashioniq", "--task-option", f"image_dir={w / 'noimg'}", data_dir=d,
                     expect=("noimg", "missing"))


# ------------------------------------------------------------------------------------------------------
# MMLandmarks
# ------------------------------------------------------------------------------------------------------


def _csv(p: Path, rows: list[list[str]]) -> None:
    p.write_text("\n".join(",".join(r) for r in rows) + "\n")


def _csv_rows(p: Path) -> list[list[str]]:
    return [line.split(",") for line in p.read_text().splitlines()]


@case("mmlandmarks")
def c_mml_query_csv_missing(w: Path) -> Spec:
    d = fixture(w, "mml")
    (d / "query" / "mml_query.csv").unlink()
    return spec_eval(w, "mmlandmarks-g2s", data_dir=d, expect=("mml_query.csv", "missing"))


@case("mmlandmarks")
def c_mml_lat_out_of_range(w: Path) -> Spec:
    d = fixture(w, "mml")
    p = d / "query" / "mml_query.csv"
    rows = _csv_rows(p)
    rows[1][2] = "123.0"
    _csv(p, rows)
    return spec_eval(w, "mmlandmarks-g2s", data_dir=d, expect=("mml_query.csv", "line 2", "lat"))


@case("mmlandmarks")
def c_mml_landmark_not_int(w: Path) -> Spec:
    d = fixture(w, "mml")
    p = d / "query" / "mml_query_ground.csv"
    rows = _csv_rows(p)
    rows[2][0] = "abc"
    _csv(p, rows)
    return spec_eval(w, "mmlandmarks-g2s", data_dir=d,
                     expect=("mml_query_ground.csv", "line 3", "landmark_id"))


def _mml_escape(w: Path, check: str) -> Spec:
    d = fixture(w, "mml")
    secret = outside(w)
    p = d / "index" / "mml_index_satellite.csv"
    rows = _csv_rows(p)
    # shard_path(id) = <root>/index/satellite/<id[0]>/<id[1]>/<id[2]>/<id>.png: "..//abs" makes <id[2]> "/"
    rows[1][0] = "..//" + str(secret.with_suffix(""))
    _csv(p, rows)
    return spec_eval(w, "mmlandmarks-g2s", "--task-option", f"check_images={check}", data_dir=d,
                     expect=("mml_index_satellite.csv", "line 2", "images"))


@case("mmlandmarks")
def c_mml_id_abs_escape_nocheck(w: Path) -> Spec:
    return _mml_escape(w, "false")


@case("mmlandmarks")
def c_mml_id_abs_escape_check(w: Path) -> Spec:
    return _mml_escape(w, "true")


@case("mmlandmarks")
def c_mml_id_dotdot(w: Path) -> Spec:
    d = fixture(w, "mml")
    p = d / "query" / "mml_query_ground.csv"
    rows = _csv_rows(p)
    rows[1][1] = "../../../../outside/secret"
    _csv(p, rows)
    return spec_eval(w, "mmlandmarks-g2s", "--task-option", "check_images=false", data_dir=d,
                     expect=("mml_query_ground.csv", "line 2", "images"))


@case("mmlandmarks")
def c_mml_text_id_escape(w: Path) -> Spec:
    d = fixture(w, "mml")
    p = d / "query" / "mml_query_text.csv"
    rows = _csv_rows(p)
    rows[1][1] = "..//etc/passwd"
    _csv(p, rows)
    return spec_eval(w, "mmlandmarks-t2s", "--task-option", "text_sampling=first", data_dir=d,
                     expect=("mml_query_text.csv", "line 2", "json"))


@case("mmlandmarks")
def c_mml_short_id(w: Path) -> Spec:
    d = fixture(w, "mml")
    p = d / "index" / "mml_index_satellite.csv"
    rows = _csv_rows(p)
    rows[1][0] = "ab"
    _csv(p, rows)
    return spec_eval(w, "mmlandmarks-g2s", data_dir=d, expect=("mml_index_satellite.csv", "line 2", "'ab'"))


@case("mmlandmarks")
def c_mml_text_sampling_bad(w: Path) -> Spec:
    d = fixture(w, "mml")
    return spec_eval(w, "mmlandmarks-t2s", "--task-option", "text_sampling=frist", data_dir=d,
                     expect=("text_sampling", "frist", "first"))


@case("mmlandmarks")
def c_mml_option_not_for_direction(w: Path) -> Spec:
    d = fixture(w, "mml")
    return spec_eval(w, "mmlandmarks-g2s", "--task-option", "text_sampling=first", data_dir=d,
                     expect=("text_sampling", "check_images"))


@case("mmlandmarks")
def c_mml_text_json_missing(w: Path) -> Spec:
    d = fixture(w, "mml")
    shutil.rmtree(d / "query" / "text")
    return spec_eval(w, "mmlandmarks-t2s", "--task-option", "text_sampling=first", data_dir=d,
                     expect=("txt101.json", "missing"))


@case("mmlandmarks")
def c_mml_image_listed_twice(w: Path) -> Spec:
    d = fixture(w, "mml")
    p = d / "query" / "mml_query_ground.csv"
    rows = _csv_rows(p)
    rows[2][1] = rows[1][1]
    _csv(p, rows)
    return spec_eval(w, "mmlandmarks-g2s", data_dir=d, expect=("mml_query_ground.csv", "twice"))


@case("mmlandmarks")
def c_mml_missing_column(w: Path) -> Spec:
    d = fixture(w, "mml")
    p = d / "index" / "mml_index_satellite.csv"
    rows = _csv_rows(p)
    rows[0][1] = "latitude"
    _csv(p, rows)
    return spec_eval(w, "mmlandmarks-g2s", data_dir=d, expect=("mml_index_satellite.csv", "lat"))


@case("mmlandmarks")
def c_mml_unknown_protocol(w: Path) -> Spec:
    d = fixture(w, "mml")
    return spec_eval(w, "mmlandmarks-g2s", "--protocol", "paper", data_dir=d,
                     expect=("paper", "paper-code"))


# ------------------------------------------------------------------------------------------------------
# EDIR
# ------------------------------------------------------------------------------------------------------


def _jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def _save_jsonl(p: Path, rows: list) -> None:
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))


@case("edir")
def c_edir_corpus_missing(w: Path) -> Spec:
    d = fixture(w, "edir")
    (d / "corpus.jsonl").unlink()
    return spec_eval(w, "edir", data_dir=d, expect=("corpus.jsonl", "missing"))


@case("edir")
def c_edir_malformed_line(w: Path) -> Spec:
    d = fixture(w, "edir")
    p = d / "queries.jsonl"
    lines = p.read_text().splitlines()
    lines[1] = "{oops"
    p.write_text("\n".join(lines) + "\n")
    return spec_eval(w, "edir", data_dir=d, expect=("queries.jsonl", "line 2"))


@case("edir")
def c_edir_duplicate_corpus_id(w: Path) -> Spec:
    d = fixture(w, "edir")
    rows = _jsonl(d / "corpus.jsonl")
    rows.append(dict(rows[0]))
    _save_jsonl(d / "corpus.jsonl", rows)
    return spec_eval(w, "edir", data_dir=d, expect=("corpus.jsonl", "duplicate", rows[0]["id"]))


@case("edir")
def c_edir_two_positives(w: Path) -> Spec:
    d = fixture(w, "edir")
    rows = _jsonl(d / "instances.jsonl")
    rows[0]["pos"] = rows[0]["pos"] * 2
    _save_jsonl(d / "instances.jsonl", rows)
    return spec_eval(w, "edir", data_dir=d, expect=("instances.jsonl", "q0", "pos"))


def _edir_query_image(w: Path, value: Callable[[Path], str], check: str) -> Spec:
    d = fixture(w, "edir")
    p = outside(w)
    rows = _jsonl(d / "queries.jsonl")
    rows[1]["image"] = value(p)
    _save_jsonl(d / "queries.jsonl", rows)
    return spec_eval(w, "edir", "--task-option", f"check_images={check}", data_dir=d,
                     expect=("queries.jsonl", "q1", "image"))


@case("edir")
def c_edir_query_image_dotdot_nocheck(w: Path) -> Spec:
    return _edir_query_image(w, lambda p: "../../outside/secret.png", "false")


@case("edir")
def c_edir_query_image_absolute_nocheck(w: Path) -> Spec:
    return _edir_query_image(w, lambda p: str(p), "false")


@case("edir")
def c_edir_query_image_absolute_check(w: Path) -> Spec:
    return _edir_query_image(w, lambda p: str(p), "true")


@case("edir")
def c_edir_corpus_image_escape_nocheck(w: Path) -> Spec:
    d = fixture(w, "edir")
    outside(w)
    rows = _jsonl(d / "corpus.jsonl")
    rows[0]["image"] = "../../outside/secret.png"
    _save_jsonl(d / "corpus.jsonl", rows)
    return spec_eval(w, "edir", "--task-option", "check_images=false", data_dir=d,
                     expect=("corpus.jsonl", rows[0]["id"], "image"))


@case("edir")
def c_edir_metadata_missing(w: Path) -> Spec:
    d = fixture(w, "edir")
    rows = _jsonl(d / "queries.jsonl")
    del rows[2]["metadata"]
    _save_jsonl(d / "queries.jsonl", rows)
    return spec_eval(w, "edir", data_dir=d, expect=("queries.jsonl", "q2", "metadata.subcategory"))


@case("edir")
def c_edir_revision_local(w: Path) -> Spec:
    d = fixture(w, "edir")
    return spec_eval(w, "edir", "--task-option", "revision=abc", data_dir=d, expect=("revision",))


@case("edir")
def c_edir_image_dir_missing(w: Path) -> Spec:
    d = fixture(w, "edir")
    return spec_eval(w, "edir", "--task-option", f"image_dir={w / 'noimg'}", data_dir=d,
                     expect=("noimg", "missing"))


@case("edir")
def c_edir_extract_bad_bool(w: Path) -> Spec:
    d = fixture(w, "edir")
    return spec_eval(w, "edir", "--task-option", "extract=perhaps", data_dir=d, expect=("extract", "perhaps"))


# ------------------------------------------------------------------------------------------------------
# WebVid-CoVR
# ------------------------------------------------------------------------------------------------------

COVR_CSV = "webvid8m-covr_test.csv"


def _covr(w: Path, *opts: str, expect: tuple[str, ...], canary: tuple[Path, ...] = ()) -> Spec:
    d = w / "covr"
    frames = () if any(o.startswith("n_frames=") for o in opts) else ("--task-option", "n_frames=2")
    args = ["--task-option", f"frames_dir={w / 'frames'}", *frames, *opts]
    return spec_eval(w, "webvid-covr", *args, data_dir=d, expect=expect, canary=canary)


def _covr_rows(d: Path) -> list[list[str]]:
    return _csv_rows(d / COVR_CSV)


@case("webvid-covr")
def c_covr_csv_missing(w: Path) -> Spec:
    d = fixture(w, "covr")
    (d / COVR_CSV).unlink()
    return _covr(w, expect=(COVR_CSV, "missing"))


@case("webvid-covr")
def c_covr_edit_column_missing(w: Path) -> Spec:
    d = fixture(w, "covr")
    rows = _covr_rows(d)
    rows[0][2] = "caption"
    _csv(d / COVR_CSV, rows)
    return _covr(w, expect=(COVR_CSV, "edit"))


@case("webvid-covr")
def c_covr_empty_pth1(w: Path) -> Spec:
    d = fixture(w, "covr")
    rows = _covr_rows(d)
    rows[2][0] = ""
    _csv(d / COVR_CSV, rows)
    return _covr(w, expect=(COVR_CSV, "line 3", "pth1"))


@case("webvid-covr")
def c_covr_pth2_dotdot_reads_and_writes_outside(w: Path) -> Spec:
    from tests.test_tasks_covr import make_video
    d = fixture(w, "covr")
    make_video(w / "outside" / "evil.mp4", [0, 10, 20])
    rows = _covr_rows(d)
    rows[1][1] = "../../../../outside/evil"
    _csv(d / COVR_CSV, rows)
    # frames of pth2 go to <frames_dir>/<pth2>/: "../evil" would write w/outside/evil/
    return _covr(w, expect=(COVR_CSV, "line 2", "pth2"), canary=(w / "outside" / "evil",))


@case("webvid-covr")
def c_covr_pth1_absolute(w: Path) -> Spec:
    from tests.test_tasks_covr import make_video
    d = fixture(w, "covr")
    make_video(w / "outside" / "evil.mp4", [0, 10, 20])
    rows = _covr_rows(d)
    rows[1][0] = str(w / "outside" / "evil")
    _csv(d / COVR_CSV, rows)
    return _covr(w, expect=(COVR_CSV, "line 2", "pth1"), canary=(w / "outside" / "evil",))


@case("webvid-covr")
def c_covr_n_frames_text(w: Path) -> Spec:
    fixture(w, "covr")
    return _covr(w, "--task-option", "n_frames=many", expect=("n_frames", "many"))


@case("webvid-covr")
def c_covr_n_frames_zero(w: Path) -> Spec:
    fixture(w, "covr")
    return _covr(w, "--task-option", "n_frames=0", expect=("n_frames",))


@case("webvid-covr")
def c_covr_target_pool(w: Path) -> Spec:
    fixture(w, "covr")
    return _covr(w, "--task-option", "target_pool=max", expect=("target_pool", "max"))


@case("webvid-covr")
def c_covr_frame_format(w: Path) -> Spec:
    fixture(w, "covr")
    return _covr(w, "--task-option", "frame_format=gif", expect=("frame_format", "gif"))


@case("webvid-covr")
def c_covr_workers_text(w: Path) -> Spec:
    fixture(w, "covr")
    return _covr(w, "--task-option", "workers=lots", expect=("workers", "lots"))


@case("webvid-covr")
def c_covr_video_missing(w: Path) -> Spec:
    d = fixture(w, "covr")
    (d / "WebVid" / "8M" / "train" / "000001_000050" / "13.mp4").unlink()
    return _covr(w, expect=("13.mp4", "line 4", "pth1"))


@case("webvid-covr")
def c_covr_scores_malformed(w: Path) -> Spec:
    d = fixture(w, "covr")
    rows = _covr_rows(d)
    rows[0].append("scores")
    for r in rows[1:]:
        r.append('"[0.1, x]"')
    _csv(d / COVR_CSV, rows)
    return _covr(w, "--task-option", "target_pool=csv-scores", expect=(COVR_CSV, "line 2", "scores"))


# ------------------------------------------------------------------------------------------------------
# SoFT
# ------------------------------------------------------------------------------------------------------

SOFT_MULTI = "mt_pipeline/llm/multi_target_selection/cirr_multi_target_selection.json"


@case("soft")
def c_soft_no_data(w: Path) -> Spec:
    (w / "empty").mkdir()
    return spec_eval(w, "soft-cirr-multi", data_dir=w / "empty", expect=("mt_pipeline/llm", "cirr"))


@case("soft")
def c_soft_selection_missing(w: Path) -> Spec:
    d = fixture(w, "soft")
    (d / SOFT_MULTI).unlink()
    return spec_eval(w, "soft-cirr-multi", data_dir=d, expect=("cirr_multi_target_selection.json",))


@case("soft")
def c_soft_selection_not_list(w: Path) -> Spec:
    d = fixture(w, "soft")
    jsave(d / SOFT_MULTI, {"x": 1})
    return spec_eval(w, "soft-cirr-multi", data_dir=d, expect=("cirr_multi_target_selection.json", "list"))


@case("soft")
def c_soft_empty_scores(w: Path) -> Spec:
    d = fixture(w, "soft")
    recs = jload(d / SOFT_MULTI)
    recs[1]["confidence_scores"] = {}
    jsave(d / SOFT_MULTI, recs)
    return spec_eval(w, "soft-cirr-multi", data_dir=d,
                     expect=("cirr_multi_target_selection.json", "record 1", "confidence_scores"))


@case("soft")
def c_soft_reference_not_in_gallery(w: Path) -> Spec:
    d = fixture(w, "soft")
    recs = jload(d / SOFT_MULTI)
    recs[0]["reference_image_name"] = "ghost"
    jsave(d / SOFT_MULTI, recs)
    return spec_eval(w, "soft-cirr-multi", data_dir=d,
                     expect=("cirr_multi_target_selection.json", "record 0", "reference_image_name"))


@case("soft")
def c_soft_base_dir_missing(w: Path) -> Spec:
    d = fixture(w, "soft")
    return spec_eval(w, "soft-cirr-multi", "--task-option", f"base_dir={w / 'nobase'}", data_dir=d,
                     expect=("nobase",))


@case("soft")
def c_soft_caption_join(w: Path) -> Spec:
    d = fixture(w, "soft")
    return spec_eval(w, "soft-fashioniq-multi", "--task-option", "caption_join=c1", data_dir=d,
                     expect=("caption_join", "c1"))


@case("soft")
def c_soft_option_message_names_task_option(w: Path) -> Spec:
    d = fixture(w, "soft")
    shutil.rmtree(d / "cirr")
    return spec_eval(w, "soft-cirr-multi", data_dir=d, expect=("--task-option base_dir=",))


# ------------------------------------------------------------------------------------------------------
# Synthetic task
# ------------------------------------------------------------------------------------------------------


@case("synthetic")
def c_synthetic_option_typo(w: Path) -> Spec:
    return spec_eval(w, "synthetic-mini", "--task-option", "sed=3", expect=("sed", "seed"))


@case("synthetic")
def c_synthetic_seed_text(w: Path) -> Spec:
    return spec_eval(w, "synthetic-mini", "--task-option", "seed=abc", expect=("seed", "abc"))


@case("synthetic")
def c_synthetic_data_dir_not_a_dataset(w: Path) -> Spec:
    mine = w / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    s = spec_eval(w, "synthetic-mini", data_dir=mine, expect=("mine", "cirbench.json"))
    s.keep = (mine / "thesis.tex",)
    return s


# ------------------------------------------------------------------------------------------------------
# Precomputed vectors (cirbench/models/baselines.py)
# ------------------------------------------------------------------------------------------------------

NATIVE_IDS = {"query": ["q1", "q2", "q3"], "document": ["a", "b", "c", "d", "e"]}


def _vectors(w: Path, rows: list[tuple] | None = None, *, vector_type: pa.DataType | None = None) -> Path:
    if rows is None:
        rng = np.random.default_rng(0)
        rows = [(i, r, rng.standard_normal(4).tolist()) for r, ids in NATIVE_IDS.items() for i in ids]
    ids, roles, vecs = zip(*rows)
    p = w / "vectors.parquet"
    pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "role": pa.array(roles, pa.string()),
                             "vector": pa.array(vecs, vector_type or pa.list_(pa.float64()))}), p)
    return p


def _good_rows() -> list[tuple]:
    rng = np.random.default_rng(0)
    return [(i, r, rng.standard_normal(4).tolist()) for r, ids in NATIVE_IDS.items() for i in ids]


def _pre(w: Path, p: Path, *extra: str, expect: tuple[str, ...]) -> Spec:
    d = fixture(w, "native")
    return spec_eval(w, str(d), *extra, model=f"precomputed:{p}", expect=expect)


@case("precomputed")
def c_pre_missing_file(w: Path) -> Spec:
    return _pre(w, w / "nope.parquet", expect=("nope.parquet", "missing"))


@case("precomputed")
def c_pre_not_parquet(w: Path) -> Spec:
    p = w / "v.parquet"
    p.write_text("id,role,vector\n")
    return _pre(w, p, expect=("v.parquet", "parquet"))


@case("precomputed")
def c_pre_missing_column(w: Path) -> Spec:
    p = w / "v.parquet"
    pq.write_table(pa.table({"id": ["a"], "vector": [[1.0]]}), p)
    return _pre(w, p, expect=("v.parquet", "role"))


@case("precomputed")
def c_pre_bad_role(w: Path) -> Spec:
    rows = _good_rows()
    rows[2] = (rows[2][0], "querry", rows[2][2])
    return _pre(w, _vectors(w, rows), expect=("vectors.parquet", "row 2", "role", "querry"))


@case("precomputed")
def c_pre_duplicate_row(w: Path) -> Spec:
    rows = _good_rows()
    rows.append(rows[4])
    return _pre(w, _vectors(w, rows), expect=("vectors.parquet", "row 8", "duplicate", "'b'"))


@case("precomputed")
def c_pre_null_id(w: Path) -> Spec:
    rows = _good_rows()
    rows[1] = (None, rows[1][1], rows[1][2])
    return _pre(w, _vectors(w, rows), expect=("vectors.parquet", "row 1", "id"))


@case("precomputed")
def c_pre_null_vector(w: Path) -> Spec:
    rows = _good_rows()
    rows[5] = (rows[5][0], rows[5][1], None)
    return _pre(w, _vectors(w, rows), expect=("vectors.parquet", "row 5", "vector"))


@case("precomputed")
def c_pre_null_element(w: Path) -> Spec:
    rows = _good_rows()
    rows[5] = (rows[5][0], rows[5][1], [1.0, None, 2.0, 3.0])
    return _pre(w, _vectors(w, rows), expect=("vectors.parquet", "row 5", "vector"))


@case("precomputed")
def c_pre_string_vector(w: Path) -> Spec:
    rows = [(i, r, ["0.1", "x", "0.3", "0.4"]) for i, r, _ in _good_rows()]
    return _pre(w, _vectors(w, rows, vector_type=pa.list_(pa.string())),
                expect=("vectors.parquet", "vector", "numbers"))


@case("precomputed")
def c_pre_zero_vector(w: Path) -> Spec:
    rows = _good_rows()
    rows[6] = (rows[6][0], rows[6][1], [0.0, 0.0, 0.0, 0.0])
    return _pre(w, _vectors(w, rows), expect=("vectors.parquet", "row 6", "zero"))


@case("precomputed")
def c_pre_nan_vector(w: Path) -> Spec:
    rows = _good_rows()
    rows[0] = (rows[0][0], rows[0][1], [float("nan"), 1.0, 1.0, 1.0])
    return _pre(w, _vectors(w, rows), expect=("vectors.parquet", "row 0", "vector"))


@case("precomputed")
def c_pre_width_mismatch(w: Path) -> Spec:
    rows = _good_rows()
    rows[3] = (rows[3][0], rows[3][1], [1.0, 2.0])
    return _pre(w, _vectors(w, rows), expect=("vectors.parquet", "row 3", "width"))


@case("precomputed")
def c_pre_dim_option_mismatch(w: Path) -> Spec:
    return _pre(w, _vectors(w), "--option", "dim=8", expect=("vectors.parquet", "width", "8"))


@case("precomputed")
def c_pre_missing_corpus_vector(w: Path) -> Spec:
    rows = [r for r in _good_rows() if r[0] != "c"]
    return _pre(w, _vectors(w, rows), expect=("vectors.parquet", "'c'", "document"))


@case("precomputed")
def c_pre_unknown_option(w: Path) -> Spec:
    return _pre(w, _vectors(w), "--option", "normalise=false", expect=("normalise",))


@case("precomputed")
def c_pre_npy_count_mismatch(w: Path) -> Spec:
    d = w / "vecs"
    d.mkdir()
    np.save(d / "query.npy", np.ones((3, 4), dtype=np.float32))
    (d / "query_ids.txt").write_text("q1\nq2\n")
    np.save(d / "document.npy", np.ones((5, 4), dtype=np.float32))
    (d / "document_ids.txt").write_text("a\nb\nc\nd\ne\n")
    return _pre(w, d, expect=("query", "2 ids"))


@case("precomputed")
def c_pre_npy_pickled(w: Path) -> Spec:
    d = w / "vecs"
    d.mkdir()
    np.save(d / "query.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (d / "query_ids.txt").write_text("q1\n")
    return _pre(w, d, expect=("query.npy",))


@case("precomputed")
def c_pre_npy_ids_missing(w: Path) -> Spec:
    d = w / "vecs"
    d.mkdir()
    np.save(d / "query.npy", np.ones((3, 4), dtype=np.float32))
    return _pre(w, d, expect=("query_ids.txt", "missing"))


@case("precomputed")
def c_pre_empty_dir(w: Path) -> Spec:
    d = w / "vecs"
    d.mkdir()
    return _pre(w, d, expect=("vecs", "query.npy"))


@case("precomputed", accept=True)
def c_pre_needs_no_images(w: Path) -> Spec:
    d = fixture(w, "native")
    _image_paths(d, ["images/a.png"] * 5)  # the image files do not exist: vectors were made elsewhere
    return Spec(ev(w, str(d), model=f"precomputed:{_vectors(w)}"))


# ------------------------------------------------------------------------------------------------------
# Models: names, options, plugins
# ------------------------------------------------------------------------------------------------------


def _model(w: Path, model: str, *extra: str, expect: tuple[str, ...], canary: tuple[Path, ...] = ()) -> Spec:
    d = fixture(w, "native")
    return spec_eval(w, str(d), *extra, model=model, expect=expect, canary=canary)


@case("models")
def c_model_typo_alias(w: Path) -> Spec:
    return _model(w, "clip-b23", expect=("clip-b23", "clip-b32"))


@case("models")
def c_model_typo_random(w: Path) -> Spec:
    return _model(w, "randm", expect=("randm", "random"))


@case("models")
def c_model_bare_hub_id(w: Path) -> Spec:
    return _model(w, "openai/clip-vit-base-patch32", expect=("hf-clip:openai/clip-vit-base-patch32",))


@case("models")
def c_model_unknown_family(w: Path) -> Spec:
    return _model(w, "hf-clp:openai/clip-vit-base-patch32", expect=("hf-clp", "hf-clip"))


@case("models")
def c_model_plugin_os_system(w: Path) -> Spec:
    canary = w / "pwned"
    return _model(w, "os:system", "--option", f"command=touch {canary}", expect=("--allow-plugins",),
                  canary=(canary,))


@case("models")
def c_model_plugin_without_optin(w: Path) -> Spec:
    return _model(w, "json:dumps", expect=("json:dumps", "--allow-plugins"))


@case("models")
def c_model_plugin_not_an_encoder(w: Path) -> Spec:
    return _model(w, "json:JSONDecoder", "--allow-plugins", expect=("json:JSONDecoder", "Encoder"))


@case("models")
def c_model_plugin_wrong_signature(w: Path) -> Spec:
    return _model(w, "json:dumps", "--allow-plugins", expect=("json:dumps", "obj"))


@case("models")
def c_model_plugin_missing_attr(w: Path) -> Spec:
    return _model(w, "json:nothing_here", "--allow-plugins", expect=("json", "nothing_here"))


@case("models")
def c_model_random_option_typo(w: Path) -> Spec:
    return _model(w, "random", "--option", "sed=1", expect=("sed", "seed"))


@case("models")
def c_model_random_option_bad_value(w: Path) -> Spec:
    return _model(w, "random", "--option", "dim=wide", expect=("dim", "wide"))


@case("models")
def c_model_fusion_option_typo(w: Path) -> Spec:
    return _model(w, "cirbench-fusion", "--option", "resolutoin=96", expect=("resolutoin", "resolution"))


@case("models")
def c_model_image_only_option(w: Path) -> Spec:
    return _model(w, "image-only", "--option", "fusion=sum", expect=("fusion",))


@case("models")
def c_model_text_only_option(w: Path) -> Spec:
    return _model(w, "text-only", "--option", "head=x", expect=("head",))


@case("models")
def c_model_fusion_head_missing(w: Path) -> Spec:
    return _model(w, "cirbench-fusion", "--option", f"head={w / 'nohead.safetensors'}",
                  expect=("nohead.safetensors",))


@case("models")
def c_model_hf_clip_option_typo(w: Path) -> Spec:
    return _model(w, f"hf-clip:{w / 'noclip'}", "--option", "fusoin=sum", expect=("fusoin", "fusion"))


@case("models")
def c_model_gme_option_typo(w: Path) -> Spec:
    return _model(w, f"gme:{w / 'nogme'}", "--option", "max_lenght=9", expect=("max_lenght", "max_length"))


@case("models")
def c_model_openclip_option_typo(w: Path) -> Spec:
    return _model(w, "open_clip:ViT-B-32/x", "--option", "alhpa=0.5", expect=("alhpa", "alpha"))


@case("models")
def c_model_st_option_typo(w: Path) -> Spec:
    return _model(w, f"st:{w / 'nost'}", "--option", "normalise=1", expect=("normalise",))


@case("models")
def c_model_option_no_equals(w: Path) -> Spec:
    return _model(w, "random", "--option", "seed", expect=("--option", "name=value"))


@case("models")
def c_model_dtype_bogus(w: Path) -> Spec:
    return _model(w, "cirbench-fusion", "--dtype", "float64", expect=("float64",))


@case("models")
def c_model_hf_clip_dir_missing(w: Path) -> Spec:
    return _model(w, f"hf-clip:{w / 'noclip'}", expect=("noclip",))


# ------------------------------------------------------------------------------------------------------
# CLI values
# ------------------------------------------------------------------------------------------------------


def _cli(w: Path, *extra: str, expect: tuple[str, ...], task: str | None = None) -> Spec:
    d = fixture(w, "native")
    return spec_eval(w, task or str(d), *extra, expect=expect)


@case("cli")
def c_cli_task_typo(w: Path) -> Spec:
    return spec_eval(w, "cirrr", expect=("cirrr", "cirr"))


@case("cli")
def c_cli_task_typo_mml(w: Path) -> Spec:
    return spec_eval(w, "mmlandmark-g2s", expect=("mmlandmark-g2s", "mmlandmarks-g2s"))


@case("cli")
def c_cli_task_path_missing(w: Path) -> Spec:
    return spec_eval(w, str(w / "no" / "such" / "dir"), expect=(str(w / "no" / "such" / "dir"),))


@case("cli")
def c_cli_limit_negative(w: Path) -> Spec:
    return _cli(w, "--limit", "-5", expect=("--limit",))


@case("cli")
def c_cli_limit_zero(w: Path) -> Spec:
    return _cli(w, "--limit", "0", expect=("--limit",))


@case("cli")
def c_cli_batch_size_zero(w: Path) -> Spec:
    return _cli(w, "--batch-size", "0", expect=("--batch-size",))


@case("cli")
def c_cli_batch_size_negative(w: Path) -> Spec:
    return _cli(w, "--batch-size", "-3", expect=("--batch-size",))


@case("cli")
def c_cli_top_k_zero(w: Path) -> Spec:
    return _cli(w, "--top-k", "0", expect=("--top-k",))


@case("cli")
def c_cli_bootstrap_negative(w: Path) -> Spec:
    return _cli(w, "--bootstrap", "-1", expect=("--bootstrap",))


@case("cli")
def c_cli_workers_negative(w: Path) -> Spec:
    return _cli(w, "--workers", "-2", expect=("--workers",))


@case("cli")
def c_cli_device_cuda_no_gpu(w: Path) -> Spec:
    return _cli(w, "--device", "cuda", expect=("cuda", "GPU"))


@case("cli")
def c_cli_device_bogus(w: Path) -> Spec:
    return _cli(w, "--device", "tpu", expect=("tpu", "--device"))


@case("cli")
def c_cli_search_dtype(w: Path) -> Spec:
    return _cli(w, "--search-dtype", "float8", expect=("float8",))


@case("cli")
def c_cli_search_backend(w: Path) -> Spec:
    return _cli(w, "--search-backend", "annoy", expect=("annoy",))


@case("cli")
def c_cli_rerank_unknown(w: Path) -> Spec:
    return _cli(w, "--rerank", "bogus", expect=("bogus", "soft"))


@case("cli")
def c_cli_rerank_no_constraints(w: Path) -> Spec:
    return _cli(w, "--rerank", "soft", expect=("--rerank-option constraints=",))


@case("cli")
def c_cli_rerank_lambda(w: Path) -> Spec:
    return _cli(w, "--rerank", "soft", "--rerank-option", f"constraints={w / 'c.json'}", "--rerank-option",
                "lambda=2", expect=("lambda", "[0, 1]"))


@case("cli")
def c_cli_rerank_mode(w: Path) -> Spec:
    return _cli(w, "--rerank", "soft", "--rerank-option", f"constraints={w / 'c.json'}", "--rerank-option",
                "mode=harsh", expect=("harsh",))


@case("cli")
def c_cli_constraints_missing(w: Path) -> Spec:
    return _cli(w, "--rerank", "soft", "--rerank-option", f"constraints={w / 'c.json'}", expect=("c.json",))


@case("cli")
def c_cli_repeated_task(w: Path) -> Spec:
    d = fixture(w, "native")
    args = ev(w, str(d)) + ["-t", "cirr"]
    return Spec(args, ("--task",), (w / "out",))


@case("cli")
def c_cli_repeated_model(w: Path) -> Spec:
    d = fixture(w, "native")
    args = ev(w, str(d)) + ["-m", "cirbench-fusion"]
    return Spec(args, ("--model",), (w / "out",))


@case("cli")
def c_cli_task_option_no_equals(w: Path) -> Spec:
    return _cli(w, "--task-option", "check_images", expect=("--task-option", "name=value"))


@case("cli")
def c_cli_output_is_a_file(w: Path) -> Spec:
    d = fixture(w, "native")
    (w / "out").write_text("not a dir")
    args = ev(w, str(d))
    return Spec(args, (str(w / "out"),), ())


@case("cli")
def c_cli_cache_dir_is_a_file(w: Path) -> Spec:
    d = fixture(w, "native")
    (w / "cachefile").write_text("x")
    args = [a for a in ev(w, str(d)) if a != "--no-cache"] + ["--cache-dir", str(w / "cachefile")]
    return Spec(args, ("cachefile",), (w / "out",))


@case("cli")
def c_cli_tasks_unknown_name(w: Path) -> Spec:
    return Spec(["tasks", "cirrr"], ("cirrr", "cirr"))


@case("cli", accept=True)
def c_cli_tasks_lists_options(w: Path) -> Spec:
    return Spec(["tasks", "cirr"], ("check_images", "--task-option", "val", "reference-kept"))


@case("cli")
def c_cli_card_unknown(w: Path) -> Spec:
    return Spec(["card", "cirrr", "-o", str(w / "cards")], ("cirrr", "cirr"), (w / "cards",))


@case("cli")
def c_cli_card_nothing(w: Path) -> Spec:
    return Spec(["card", "-o", str(w / "cards")], ("--all",), (w / "cards",))


@case("cli")
def c_cli_validate_task_typo(w: Path) -> Spec:
    (w / "sub.json").write_text("{}")
    return Spec(["validate-submission", str(w / "sub.json"), "--task", "cirrr"], ("cirrr", "cirr"))


@case("cli")
def c_cli_validate_missing_file(w: Path) -> Spec:
    return Spec(["validate-submission", str(w / "sub.json"), "--task", "cirr"], ("sub.json",))


@case("cli")
def c_cli_validate_malformed(w: Path) -> Spec:
    (w / "sub.json").write_text("{oops")
    return Spec(["validate-submission", str(w / "sub.json"), "--task", "circo"], ("sub.json", "JSON"))


@case("cli")
def c_cli_train_missing_dataset(w: Path) -> Spec:
    return Spec(["train", "/nonexistent", "-o", str(w / "head.safetensors"), "-q"],
                ("/nonexistent",), (w / "head.safetensors",))


@case("cli")
def c_cli_train_bad_suffix(w: Path) -> Spec:
    d = fixture(w, "native")
    return Spec(["train", str(d), "-o", str(w / "head.pt"), "-q"], ("head.pt", ".safetensors"),
                (w / "head.pt",))


@case("cli")
def c_cli_train_no_train_split(w: Path) -> Spec:
    d = fixture(w, "native")
    return Spec(["train", str(d), "-o", str(w / "head.safetensors"), "-q"], ("train",),
                (w / "head.safetensors",))


@case("cli")
def c_cli_train_epochs_zero(w: Path) -> Spec:
    d = fixture(w, "native")
    return Spec(["train", str(d), "-o", str(w / "head.safetensors"), "--epochs", "0", "-q"], ("epochs",),
                (w / "head.safetensors",))


@case("cli")
def c_cli_compare_missing(w: Path) -> Spec:
    return Spec(["compare", str(w / "a.json"), str(w / "b.json")], ("a.json",))


@case("cli")
def c_cli_compare_malformed(w: Path) -> Spec:
    (w / "a.json").write_text("{")
    (w / "b.json").write_text("{")
    return Spec(["compare", str(w / "a.json"), str(w / "b.json")], ("a.json", "JSON"))


@case("cli")
def c_cli_compare_not_a_result(w: Path) -> Spec:
    (w / "a.json").write_text("[1, 2]")
    (w / "b.json").write_text("[1, 2]")
    return Spec(["compare", str(w / "a.json"), str(w / "b.json")], ("a.json",))


def _result(w: Path, name: str = "good") -> Path:
    """One real result.json (random model on the native fixture)."""
    from typer.testing import CliRunner

    from cirbench.cli import app
    d = _template("native", _write_native)
    out = w / "results" / name
    res = CliRunner().invoke(app, ["eval", "-m", "random", "-t", str(d), "-o", str(out), "-q",
                                   "--bootstrap", "10", "--no-cache"])
    assert res.exit_code == 0, res.output
    return out / "result.json"


@case("cli", accept=True)
def c_cli_leaderboard_skips_malformed(w: Path) -> Spec:
    _result(w)
    bad = w / "results" / "bad" / "result.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"task": ')
    return Spec(["leaderboard", str(w / "results"), "-o", str(w / "lb"), "--resamples", "10"],
                ("warning", str(bad)))


@case("cli")
def c_cli_leaderboard_missing_path(w: Path) -> Spec:
    return Spec(["leaderboard", str(w / "nores"), "-o", str(w / "lb")], ("nores",), (w / "lb",))


@case("cli")
def c_cli_leaderboard_reported_missing(w: Path) -> Spec:
    _result(w)
    return Spec(["leaderboard", str(w / "results"), "-o", str(w / "lb"), "--reported", str(w / "rep.csv")],
                ("rep.csv",), (w / "lb",))


# ------------------------------------------------------------------------------------------------------
# Build configs (pipelines/*.yaml, cirbench/builders/)
# ------------------------------------------------------------------------------------------------------


def _pipeline(name: str) -> str:
    for cand in (ROOT / "pipelines" / name, ROOT / "cirbench" / "pipelines" / name):
        if cand.is_file():
            return cand.read_text()
    raise FileNotFoundError(name)


def _yaml(w: Path, text: str, name: str = "p.yaml") -> Path:
    p = w / name
    p.write_text(text)
    return p


def _build(w: Path, config: Path, *extra: str, expect: tuple[str, ...], canary: tuple[Path, ...] = ()
           ) -> Spec:
    out = w / "built"
    return Spec(["build", str(config), "--out", str(out), "-q", *extra], expect, (out,), canary)


def _edir_yaml(w: Path, edit: Callable[[dict], None]) -> Path:
    import yaml
    cfg = yaml.safe_load(_pipeline("edir.yaml"))
    cfg["lmm"]["backend"] = "template"
    edit(cfg)
    return _yaml(w, yaml.safe_dump(cfg))


def _photos(w: Path) -> str:
    from tests.conftest import png
    d = w / "photos"
    d.mkdir()
    for i in range(3):
        (d / f"p{i}.png").write_bytes(png((i * 60, 100, 20), 300))
    return f"folder:{d}"


@case("build")
def c_build_config_missing(w: Path) -> Spec:
    return _build(w, w / "nope.yaml", expect=("nope.yaml",))


@case("build")
def c_build_config_malformed(w: Path) -> Spec:
    return _build(w, _yaml(w, "pipeline: [synthetic\n"), expect=("p.yaml",))


@case("build")
def c_build_config_list(w: Path) -> Spec:
    return _build(w, _yaml(w, "- a\n- b\n"), expect=("p.yaml", "pipeline"))


@case("build")
def c_build_unknown_pipeline(w: Path) -> Spec:
    return _build(w, _yaml(w, "pipeline: synthtic\n"), expect=("p.yaml", "synthtic", "synthetic"))


@case("build")
def c_build_preset_typo(w: Path) -> Spec:
    return _build(w, _yaml(w, _pipeline("synthetic.yaml")), "--preset", "minni", expect=("minni", "mini"))


@case("build")
def c_build_limit_negative(w: Path) -> Spec:
    return _build(w, _yaml(w, _pipeline("synthetic.yaml")), "--limit", "-5", expect=("--limit",))


@case("build")
def c_build_synthetic_key_typo(w: Path) -> Spec:
    text = _pipeline("synthetic.yaml").replace("queries_per_reference: 4", "queries_per_referense: 4", 1)
    return _build(w, _yaml(w, text), "--limit", "3", expect=("p.yaml", "queries_per_referense"))


@case("build")
def c_build_synthetic_top_key_typo(w: Path) -> Spec:
    text = _pipeline("synthetic.yaml").replace("render:", "rendr:", 1)
    return _build(w, _yaml(w, text), "--limit", "3", expect=("p.yaml", "rendr", "render"))


@case("build")
def c_build_synthetic_workers_text(w: Path) -> Spec:
    text = _pipeline("synthetic.yaml").replace("workers: 2", "workers: two", 1)
    return _build(w, _yaml(w, text), "--limit", "3", expect=("p.yaml", "workers", "two"))


@case("build")
def c_build_synthetic_seed_negative(w: Path) -> Spec:
    return _build(w, _yaml(w, _pipeline("synthetic.yaml")), "--seed", "-1", "--limit", "3",
                  expect=("--seed",))


@case("build")
def c_build_out_is_users_folder(w: Path) -> Spec:
    mine = w / "built"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    s = Spec(["build", str(_yaml(w, _pipeline("synthetic.yaml"))), "--out", str(mine), "-q", "--limit", "3"],
             (str(mine), "cirbench.json"))
    s.keep = (mine / "notes.txt",)
    return s


@case("build")
def c_build_edir_key_typo(w: Path) -> Spec:
    cfg = _edir_yaml(w, lambda c: c["verify"]["embedding"].update(min_scroe=1))
    return _build(w, cfg, "--sources", _photos(w), expect=("p.yaml", "min_scroe", "verify.embedding"))


@case("build")
def c_build_edir_model_os_system(w: Path) -> Spec:
    canary = w / "pwned"
    cfg = _edir_yaml(w, lambda c: c["verify"]["embedding"].update(
        model="os:system", options={"command": f"touch {canary}"}))
    return _build(w, cfg, "--sources", _photos(w), expect=("p.yaml", "verify.embedding.model", "os:system"),
                  canary=(canary,))


@case("build")
def c_build_edir_model_typo(w: Path) -> Spec:
    cfg = _edir_yaml(w, lambda c: c["verify"]["embedding"].update(model="clip-l41"))
    return _build(w, cfg, "--sources", _photos(w), expect=("p.yaml", "clip-l41", "clip-l14"))


@case("build")
def c_build_edir_trust_remote_code(w: Path) -> Spec:
    cfg = _edir_yaml(w, lambda c: c["verify"]["embedding"].update(options={"trust_remote_code": True}))
    return _build(w, cfg, "--sources", _photos(w), expect=("p.yaml", "trust_remote_code"))


@case("build")
def c_build_edir_lmm_trust_remote_code(w: Path) -> Spec:
    def edit(c: dict) -> None:
        c["lmm"]["backend"] = "local"
        c["lmm"]["local"]["trust_remote_code"] = True
    return _build(w, _edir_yaml(w, edit), "--sources", _photos(w), expect=("p.yaml", "trust_remote_code"))


@case("build")
def c_build_edir_sources_missing(w: Path) -> Spec:
    return _build(w, _edir_yaml(w, lambda c: None), "--sources", f"folder:{w / 'nophotos'}",
                  expect=("nophotos",))


@case("build")
def c_build_shard_bad(w: Path) -> Spec:
    return _build(w, _edir_yaml(w, lambda c: None), "--shard", "3/2", expect=("--shard",))


@case("build")
def c_build_shard_text(w: Path) -> Spec:
    return _build(w, _edir_yaml(w, lambda c: None), "--shard", "a/b", expect=("--shard",))


@case("build")
def c_build_merge_nothing(w: Path) -> Spec:
    return _build(w, _edir_yaml(w, lambda c: None), "--merge", "2", expect=("no build", "built"))


@case("build")
def c_build_soft_model_plugin(w: Path) -> Spec:
    import yaml
    cfg = yaml.safe_load(_pipeline("soft-refine-cirr.yaml"))
    cfg["mining"]["model"] = "json:dumps"
    d = fixture(w, "cirr")
    cfg["sources"]["data_dir"] = str(d)
    return _build(w, _yaml(w, yaml.safe_dump(cfg)), expect=("p.yaml", "mining.model", "json:dumps"))


@case("build")
def c_build_soft_key_typo(w: Path) -> Spec:
    text = _pipeline("soft-refine-cirr.yaml").replace("mining:", "minning:", 1)
    return _build(w, _yaml(w, text), expect=("p.yaml", "minning"))


# ------------------------------------------------------------------------------------------------------
# Running and classifying
# ------------------------------------------------------------------------------------------------------


def _tmp_leftovers(w: Path) -> list[Path]:
    return [p for p in w.rglob("*") if ".tmp" in p.name and "cache" not in p.parts]


def run_case(c: Case, w: Path) -> Outcome:
    from typer.testing import CliRunner

    from cirbench.cli import app

    try:
        spec = c.setup(w)
    except Exception:
        return Outcome(c.name, c.group, "setup-error", False, -1, traceback.format_exc())
    env = {"COLUMNS": "1000", "CIRBENCH_CACHE": str(w / "cache"), "CIRBENCH_DATA": None,
           "CUDA_VISIBLE_DEVICES": ""}
    res = CliRunner(env=env).invoke(app, spec.args, catch_exceptions=True)
    out = res.output or ""
    exc = res.exception
    if exc is not None and not isinstance(exc, SystemExit):
        out += "\n" + "".join(traceback.format_exception(exc))
    fired = [str(p) for p in spec.canary if p.exists()]
    lost = [str(p) for p in spec.keep if not p.exists()]
    leftovers = [p for p in spec.absent if p.exists()] + _tmp_leftovers(w)
    missing = [t for t in spec.expect if t.lower() not in out.lower()]
    if fired or lost:  # a security hole or a lost user file counts whatever was printed afterwards
        kind = "silent"
        missing += [f"canary fired: {p}" for p in fired] + [f"user file lost: {p}" for p in lost]
    elif exc is not None and not isinstance(exc, SystemExit) or "Traceback (most recent call last)" in out:
        kind = "traceback"
    elif c.accept:
        kind = "ok" if res.exit_code == 0 and not missing else "wrongly-refused"
        leftovers = _tmp_leftovers(w)
    elif res.exit_code == 0:
        kind = "silent"
    else:
        kind = "clear" if not missing else "unclear"
    if kind in ("silent", "ok"):
        leftovers = [p for p in leftovers if p not in spec.absent]  # an accepted run writes its output
    return Outcome(c.name, c.group, kind, bool(leftovers), res.exit_code, out, missing)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", default=None, help="only cases whose name contains this")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the output of every non-clear case")
    ap.add_argument("--json", type=Path, default=None, help="write every outcome here")
    args = ap.parse_args()
    cases = [c for c in CASES if args.k is None or args.k in c.name or args.k == c.group]
    outcomes = []
    for n, c in enumerate(cases):
        w = _TMP / "cases" / f"{n:03d}-{c.name}"
        w.mkdir(parents=True)
        o = run_case(c, w)
        outcomes.append(o)
        flag = " +half-written" if o.half_written else ""
        missing = f"   missing: {o.missing}" if o.missing else ""
        print(f"{o.kind:15s} {c.group:12s} {c.name}{flag}{missing}")
        if args.verbose and o.kind not in ("clear", "ok"):
            print("    " + "\n    ".join(o.output.strip().splitlines()[-12:]))
    print()
    groups = sorted({o.group for o in outcomes})
    kinds = ("clear", "unclear", "traceback", "silent", "ok", "wrongly-refused", "setup-error")
    print(f"{'group':12s} {'tried':>5s} " + " ".join(f"{k:>9.9s}" for k in kinds) + " half-written")
    for g in [*groups, "total"]:
        sel = [o for o in outcomes if g == "total" or o.group == g]
        cnt = Counter(o.kind for o in sel)
        print(f"{g:12s} {len(sel):5d} " + " ".join(f"{cnt.get(k, 0):9d}" for k in kinds)
              + f" {sum(o.half_written for o in sel):12d}")
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    shutil.rmtree(_TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
