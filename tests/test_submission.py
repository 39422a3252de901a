"""Test-server files: the writers produce what CIRR and CIRCO accept, and the validator finds every fault."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cirbench.core.run import Run
from cirbench.core.types import Task, query_exclusions
from cirbench.submission import validate_submission
from cirbench.tasks import circo, cirr


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CIRBENCH_DATA", raising=False)


def write_cirr_test1(root: Path) -> Path:
    """cap.rc2.test1.json + split.rc2.test1.json (README layout) with 2 img_sets and 50 more images."""
    sets = [[f"test1-{s * 10 + k}-{k % 4}-img{k % 2}" for k in range(6)] for s in range(2)]
    images = [n for m in sets for n in m] + [f"test1-{500 + i}-1-img0" for i in range(50)]
    records = [{"pairid": 12063 + n, "reference": sets[n % 2][n], "caption": "add a woman hugging   it",
                "img_set": {"id": n % 2, "members": sets[n % 2], "reference_rank": n}} for n in range(4)]
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    (root / "captions" / "cap.rc2.test1.json").write_text(json.dumps(records))
    rel = {n: f"./test1/{n}.png" for n in images}
    (root / "image_splits" / "split.rc2.test1.json").write_text(json.dumps(rel))
    return root


def write_circo_test(root: Path) -> Path:
    ids = [100_000 + 7 * i for i in range(60)]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "test.json").write_text(json.dumps(
        [{"reference_img_id": ids[q], "relative_caption": "has two dogs", "shared_concept": "a dog", "id": q}
         for q in range(3)]))
    info = root / "COCO2017_unlabeled" / "annotations"
    info.mkdir(parents=True)
    (info / "image_info_unlabeled2017.json").write_text(json.dumps(
        {"images": [{"file_name": f"{i:012d}.jpg", "id": i} for i in ids]}))
    return root


def fake_run(task: Task, *, with_subset: bool = True) -> Run:
    """Top-50 run over the Task's own exclusions (and candidate subsets), from fixed hashed scores."""
    n = len(task.corpus)
    indices, scores, sub_i, sub_s = [], [], [], []
    for q, ex in zip(task.queries, query_exclusions(task), strict=True):
        s = np.array([int(hashlib.sha1(f"{q.id}|{it.id}".encode()).hexdigest()[:8], 16)
                      for it in task.corpus], dtype=np.float64)
        s[ex] = -np.inf
        order = np.argsort(-s, kind="stable")[:50]
        indices.append(order)
        scores.append(s[order])
        cand = [task.corpus_positions[c] for c in q.candidate_ids or ()]
        sub = [cand[j] for j in np.argsort(-s[cand], kind="stable")[:3]] if cand else list(range(min(3, n)))
        sub_i.append(sub)
        sub_s.append(s[sub])
    return Run(query_ids=[q.id for q in task.queries], corpus_ids=[it.id for it in task.corpus],
               indices=np.array(indices, dtype=np.int64), scores=np.array(scores),
               subset_indices=np.array(sub_i, dtype=np.int64) if with_subset else None,
               subset_scores=np.array(sub_s) if with_subset else None)


@pytest.fixture
def cirr_files(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    root = write_cirr_test1(tmp_path / "cirr")
    task = cirr.load(root, "test1", "official", check_images="false")
    paths = cirr.write_submission(task, fake_run(task), tmp_path / "out")
    return root, {json.loads(p.read_text())["metric"]: p for p in paths}


def _rewrite(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


# -- CIRR ---------------------------------------------------------------------------------------------------


def test_cirr_writer_output(cirr_files: tuple[Path, dict[str, Path]]) -> None:
    root, files = cirr_files
    names = sorted(p.name for p in files.values())
    assert names == ["cirr_test1_recall.json", "cirr_test1_recall_subset.json"]
    recall = json.loads(files["recall"].read_text())
    subset = json.loads(files["recall_subset"].read_text())
    assert list(recall)[:2] == ["version", "metric"] and recall["version"] == "rc2"
    assert subset["metric"] == "recall_subset"
    task = cirr.load(root, "test1", "official", check_images="false")
    for q in task.queries:
        assert len(recall[q.id]) == 50 and q.reference_id not in recall[q.id]
        assert len(subset[q.id]) == 3 and set(subset[q.id]) <= set(q.candidate_ids or ())
        assert not any(n.endswith(".png") for n in recall[q.id])
    assert validate_submission(files["recall"], "cirr", data_dir=root) == []
    assert validate_submission(files["recall_subset"], "cirr", data_dir=root) == []


def test_cirr_subset_falls_back_to_the_full_ranking(tmp_path: Path) -> None:
    root = write_cirr_test1(tmp_path / "cirr")
    task = cirr.load(root, "test1", "official", check_images="false")
    paths = cirr.write_submission(task, fake_run(task, with_subset=False), tmp_path / "out")
    assert validate_submission(paths[1], "cirr", data_dir=root) == []


def test_cirr_without_data_checks_structure_and_count(cirr_files: tuple[Path, dict[str, Path]]) -> None:
    _, files = cirr_files
    problems = validate_submission(files["recall"], "cirr")
    assert problems == ["file has 4 pair ids; CIRR rc2 test1 has 4148 (pass the data directory to list the "
                        "missing ones)"]


def test_cirr_validator_catches_each_fault(cirr_files: tuple[Path, dict[str, Path]]) -> None:
    root, files = cirr_files
    good = json.loads(files["recall"].read_text())

    def problems(mutate: Callable[[dict[str, Any]], object]) -> list[str]:
        data = json.loads(json.dumps(good))
        mutate(data)
        return validate_submission(_rewrite(files["recall"], data), "cirr", data_dir=root)

    assert any('"version" is' in p for p in problems(lambda d: d.update(version="rc1")))
    assert any('missing "version"' in p for p in problems(lambda d: d.pop("version")))
    assert any('"metric" is' in p for p in problems(lambda d: d.update(metric="recall@50")))
    assert any("without extension" in p and ".png" in p
               for p in problems(lambda d: d["12063"].__setitem__(0, d["12063"][0] + ".png")))
    assert any("repeat a name" in p for p in problems(lambda d: d["12064"].__setitem__(1, d["12064"][0])))
    assert any("exactly 50" in p and "12065 (49)" in p for p in problems(lambda d: d["12065"].pop()))
    missing = problems(lambda d: d.pop("12066"))
    assert any("1 of 4 test1 pair ids are missing: 12066" in p for p in missing)
    assert any("not in cap.rc2.test1.json" in p for p in problems(lambda d: d.update({"99999": d["12063"]})))
    assert any("own reference" in p for p in problems(lambda d: d["12063"].__setitem__(3, "test1-0-0-img0")))
    assert any("not in split.rc2.test1.json" in p
               for p in problems(lambda d: d["12064"].__setitem__(5, "test1-777-0-img0")))
    assert any("not pair ids" in p for p in problems(lambda d: d.update({"pair_1": []})))


def test_cirr_subset_checks(cirr_files: tuple[Path, dict[str, Path]]) -> None:
    root, files = cirr_files
    data = json.loads(files["recall_subset"].read_text())
    data["12063"] = data["12063"][:2]
    data["12064"][0] = "test1-510-1-img0"  # a gallery image outside the img_set
    out = validate_submission(_rewrite(files["recall_subset"], data), "cirr", data_dir=root)
    assert any("exactly 3" in p and "12063 (2)" in p for p in out)
    assert any("outside img_set.members" in p and "12064" in p for p in out)


def test_cirr_size_limit_and_bad_json(cirr_files: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    _, files = cirr_files
    big = tmp_path / "big.json"
    big.write_text(files["recall"].read_text() + " " * 5_000_001)
    assert any("at most 5 MB" in p for p in validate_submission(big, "cirr"))
    (tmp_path / "bad.json").write_text("{")
    bad = tmp_path / "bad.json"
    assert validate_submission(bad, "cirr")[0].startswith(f"{bad}: not valid JSON")
    nope = tmp_path / "nope.json"
    assert validate_submission(nope, "cirr") == [f"file not found: {nope}"]
    with pytest.raises(ValueError, match="fashioniq"):
        validate_submission(files["recall"], "fashioniq")


def test_cirr_writer_refuses_what_the_server_would_reject(tmp_path: Path) -> None:
    root = write_cirr_test1(tmp_path / "cirr")
    task = cirr.load(root, "test1", "official", check_images="false")
    run = fake_run(task)
    run.query_ids = run.query_ids[:-1]
    with pytest.raises(ValueError, match="no ranking for 1 queries"):
        cirr.write_submission(task, run, tmp_path / "out")
    val_like = Task(task.metadata, "val", task.queries, task.corpus, task.protocol)
    with pytest.raises(ValueError, match="test1"):
        cirr.write_submission(val_like, fake_run(task), tmp_path / "out")
    short = fake_run(task)
    short.indices[:, 30:] = -1
    with pytest.raises(ValueError, match="needs 50"):
        cirr.write_submission(task, short, tmp_path / "out")


def test_cirr_validator_reports_an_unreadable_data_dir(cirr_files: tuple[Path, dict[str, Path]],
                                                       tmp_path: Path) -> None:
    _, files = cirr_files
    out = validate_submission(files["recall"], "cirr", data_dir=tmp_path / "nowhere")
    assert out[0].startswith("ids not checked against the split")


# -- CIRCO --------------------------------------------------------------------------------------------------


@pytest.fixture
def circo_file(tmp_path: Path) -> tuple[Path, Path]:
    root = write_circo_test(tmp_path / "CIRCO")
    task = circo.load(root, "test", "official", check_images="false")
    (path,) = circo.write_submission(task, fake_run(task), tmp_path / "out")
    return root, path


def test_circo_writer_output(circo_file: tuple[Path, Path]) -> None:
    root, path = circo_file
    data = json.loads(path.read_text())
    assert path.name == "circo_test.json" and list(data) == ["0", "1", "2"]
    assert all(len(v) == 50 and len(set(v)) == 50 and all(type(i) is int for i in v) for v in data.values())
    assert validate_submission(path, "circo", data_dir=root) == []
    # without the data: structure is fine, but a real file must hold all 800 test queries
    problems = validate_submission(path, "circo")
    assert len(problems) == 1 and problems[0].startswith("797 of 800 test query ids are missing: 3, 4, 5")


def test_circo_validator_catches_each_fault(circo_file: tuple[Path, Path]) -> None:
    root, path = circo_file
    good = json.loads(path.read_text())

    def problems(mutate: Callable[[dict[str, Any]], object]) -> list[str]:
        data = json.loads(json.dumps(good))
        mutate(data)
        return validate_submission(_rewrite(path, data), "circo", data_dir=root)

    assert any("non-integer" in p for p in problems(lambda d: d.update({"0": [str(i) for i in d["0"]]})))
    assert any("repeat an image id" in p for p in problems(lambda d: d["1"].__setitem__(2, d["1"][0])))
    assert any("exactly 50" in p and "2 (51)" in p for p in problems(lambda d: d["2"].append(100_000)))
    assert any("1 of 3 test query ids are missing: 1" in p for p in problems(lambda d: d.pop("1")))
    assert any("not query ids" in p for p in problems(lambda d: d.update(version="rc2")))
    assert any("not test query ids: 7" in p for p in problems(lambda d: d.update({"7": d["0"]})))
    assert any("not COCO 2017 unlabeled" in p for p in problems(lambda d: d["0"].__setitem__(0, 5)))


def test_circo_writer_refuses_short_rankings(tmp_path: Path) -> None:
    root = write_circo_test(tmp_path / "CIRCO")
    task = circo.load(root, "test", "official", check_images="false")
    run = fake_run(task)
    run.indices[0, 49] = run.indices[0, 0]  # a repeat leaves 49 distinct ids
    with pytest.raises(ValueError, match="only 49"):
        circo.write_submission(task, run, tmp_path / "out")
    val_like = Task(task.metadata, "val", task.queries, task.corpus, task.protocol)
    with pytest.raises(ValueError, match="split test"):
        circo.write_submission(val_like, fake_run(task), tmp_path / "out")
