"""API keys come only from the environment variable the recipe names and are never written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import CLI, REPO, write_recipe

from pipeline.adapters.llm_client import LLMError, api_key
from pipeline.recipe import LLMConfig
from pipeline.verify import verify

pytestmark = pytest.mark.slow
SECRET = "sk-test-9f8e7d6c5b4a-do-not-leak"


def test_missing_key_variable_is_named() -> None:
    cfg = LLMConfig(backend="openai", base_url="http://127.0.0.1:1/v1", api_key_env="OPENS2S_NO_SUCH_KEY")
    with pytest.raises(LLMError, match="OPENS2S_NO_SUCH_KEY is not set"):
        api_key(cfg)


def test_key_never_reaches_any_output_file(tmp_path: Path, llm_url: str) -> None:
    recipe = write_recipe(
        tmp_path,
        num_dialogues=1,
        llm={"backend": "openai", "base_url": llm_url, "api_key_env": "OPENS2S_TEST_KEY"},
    )
    out = tmp_path / "out"
    env = {**os.environ, "OPENS2S_TEST_KEY": SECRET}
    result = subprocess.run([*CLI, "build", str(recipe), "--out", str(out)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert SECRET not in result.stdout + result.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert "OPENS2S_TEST_KEY" in (out / "manifest.json").read_text()  # the variable's name, not its value
    assert verify(out)[0] == []
