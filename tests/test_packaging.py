"""A non-editable install carries prompts/, voices/ and manifests/ and finds them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
    )
    (found,) = out.glob("opens2s_data-*.whl")
    return found


def test_wheel_ships_the_catalogs(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "pipeline/_data/prompts/catalog.yaml",
        "pipeline/_data/prompts/turns.yaml",
        "pipeline/_data/prompts/dialogue.yaml",
        "pipeline/_data/voices/speakers.yaml",
        "pipeline/_data/voices/emotions.yaml",
        "pipeline/_data/manifests/demo.yaml",
        "pipeline/stages/s5_units.py",
    ):
        assert needed in names, needed


def test_installed_package_finds_its_data(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import pipeline, pipeline.resources as r;"
        "from pipeline.recipe import load_recipe; from pipeline.catalogs import load_catalogs;"
        "c = load_catalogs(load_recipe('demo'));"
        "print(pipeline.__file__); print(r.data_dir('prompts')); print(len(c.speakers))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    module_file, prompts, speakers = result.stdout.split()
    assert module_file.startswith(str(target)) and prompts.startswith(str(target))
    assert int(speakers) >= 24
