"""The wheel carries what the code reads at run time: pipeline configs, the fusion head, py.typed.

The wheel is built from a copy of the sources (`pip wheel --no-deps --no-build-isolation`, offline), unpacked
the way pip installs it (not editable), and imported from there in a fresh interpreter whose working
directory has no pipelines/ folder: `cirbench demo` and `cirbench build synthetic` must find the shipped
synthetic.yaml inside the package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("pip") is None and subprocess.run([sys.executable, "-m", "pip", "--version"],
                                                      capture_output=True).returncode != 0:
        pytest.skip("pip is not available")
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "cirbench", src / "cirbench", ignore=shutil.ignore_patterns("__pycache__"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "--no-index", "-q", "-w", str(base / "dist"), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (whl,) = (base / "dist").glob("cirbench-*.whl")
    return whl


def test_wheel_ships_the_pipeline_configs(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for cfg in sorted((ROOT / "cirbench" / "pipelines").glob("*.yaml")):
        assert f"cirbench/pipelines/{cfg.name}" in names
    methods = sorted((ROOT / "cirbench" / "methods").glob("*.yaml"))
    assert methods and all(f"cirbench/methods/{cfg.name}" in names for cfg in methods)
    assert {"cirbench/weights/fusion_head.safetensors", "cirbench/weights/fusion_head.json",
            "cirbench/py.typed", "cirbench/schemas/result.schema.json"} <= names
    # the top-level pipelines/ folder points at the packaged files instead of copying them
    for folder in ("pipelines", "methods"):
        links = sorted((ROOT / folder).glob("*.yaml"))
        assert links and all(link.is_symlink() for link in links)
        for link in links:
            assert link.resolve() == (ROOT / "cirbench" / folder / link.name).resolve()


def test_installed_package_finds_its_configs(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what a non-editable install puts in site-packages
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = (
        "import cirbench, sys\n"
        "from pathlib import Path\n"
        f"assert Path(cirbench.__file__).resolve().is_relative_to(Path({str(site)!r}).resolve()), "
        "cirbench.__file__\n"
        "from cirbench.tasks.synthetic import pipeline_config\n"
        "cfg = pipeline_config()\n"
        "assert cfg['pipeline'] == 'synthetic' and 'mini' in cfg['presets']\n"
        "from cirbench.builders import read_pipeline\n"
        "where, cfg = read_pipeline('pipelines/synthetic.yaml')\n"  # the README's command, from a wheel
        "assert where == 'cirbench/pipelines/synthetic.yaml' and cfg['pipeline'] == 'synthetic'\n"
        "assert read_pipeline('edir')[1]['pipeline'] == 'edir'\n"
        "from cirbench.retrieval.methods.config import read_method\n"
        "assert read_method('methods/ldre.yaml').kind == 'ldre' and read_method('cirevl').kind == 'cirevl'\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    res = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
