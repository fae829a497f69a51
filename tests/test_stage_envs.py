"""Per-stage Python environments: a stage runs in a second venv through resources.<stage>.runtime_env."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import run_cli, write_recipe

from pipeline.verify import verify

pytestmark = pytest.mark.slow


def _second_venv(folder: Path) -> Path:
    """A venv with its own interpreter path that sees this venv's packages (same Python, same Ray)
    through a .pth that adds our site-packages as a site dir (so its .pth files, e.g. the editable
    install of this package, are processed too). Nothing is downloaded."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    ours = sysconfig.get_paths()["purelib"]
    (Path(site) / "opens2s_base.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return python


def test_units_stage_runs_in_a_second_venv(tmp_path: Path, llm_url: str) -> None:
    python = _second_venv(tmp_path / "units-venv")
    probe = subprocess.run([str(python), "-c", "import ray, pipeline, sys; print(ray.__version__, sys.executable)"],
                           capture_output=True, text=True)  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-1000:]
    recipe = write_recipe(
        tmp_path, num_dialogues=1, shard_size=1, gates={"max_wer": 0.6},
        llm={"backend": "openai", "base_url": llm_url},
        resources={"units": {"num_cpus": 0.3, "runtime_env": {"py_executable": str(python),
                                                                "env_vars": {"OPENS2S_STAGE_ENV": "units"}}}},
    )  # fmt: skip
    out = tmp_path / "out"
    result = run_cli("build", str(recipe), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert verify(out)[0] == []
    interpreters = json.loads((out / "stats" / "shard-00000.json").read_text())["interpreters"]
    assert interpreters["units"] == [str(python)], interpreters
    assert interpreters["tts"] == [sys.executable] and interpreters["gates"] == [sys.executable]
    assert str(python) not in json.dumps(json.loads((out / "manifest.json").read_text())["recipe_hash"])


def test_unknown_runtime_env_key_is_refused(tmp_path: Path) -> None:
    from pipeline.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError, match="runtime_env: unsupported key"):
        load_recipe(write_recipe(tmp_path, resources={"tts": {"runtime_env": {"working_dir": "."}}}))
    a = load_recipe(write_recipe(tmp_path, name="a", resources={"tts": {"num_cpus": 0.3}}))
    env = {"num_cpus": 0.3, "runtime_env": {"env_vars": {"X": "1"}}}
    b = load_recipe(write_recipe(tmp_path, name="a", resources={"tts": env}))
    assert a.fingerprint() == b.fingerprint()  # where a stage runs does not change what it makes
