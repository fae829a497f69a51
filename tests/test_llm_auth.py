"""The OpenAI-endpoint probe sends the API key: a real llama.cpp server started with `--api_key`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli, write_recipe

from pipeline.adapters.llm_server import EmbeddedLLMServer, KeyRejectedError, endpoint_ready
from pipeline.verify import verify

pytestmark = pytest.mark.slow
KEY = "sk-opens2s-test-key-12"


@pytest.fixture(scope="module")
def keyed_url() -> Iterator[str]:
    """The embedded llama.cpp server refusing requests without `Authorization: Bearer KEY`."""
    with EmbeddedLLMServer(api_key=KEY) as url:
        yield url


def test_probe_sends_the_key_and_names_a_rejection(keyed_url: str) -> None:
    assert endpoint_ready(keyed_url, api_key=KEY)
    for wrong in (None, "sk-wrong"):
        with pytest.raises(KeyRejectedError, match="HTTP 401"):
            endpoint_ready(keyed_url, api_key=wrong)


def _recipe(tmp_path: Path, url: str) -> Path:
    llm = {"backend": "openai", "base_url": url, "api_key_env": "OPENS2S_KEYED_TEST"}
    return write_recipe(tmp_path, num_dialogues=1, shard_size=1, text_only=True, llm=llm)


def test_build_against_a_keyed_server(tmp_path: Path, keyed_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe, out = _recipe(tmp_path, keyed_url), tmp_path / "out"
    monkeypatch.setenv("OPENS2S_KEYED_TEST", "sk-wrong")
    wrong = run_cli("build", str(recipe), "--out", str(out))
    errors = [line for line in wrong.stderr.splitlines() if line.startswith("error:")]
    assert wrong.returncode == 2, wrong.stderr[-2000:]
    assert len(errors) == 1 and "key rejected" in errors[0] and "llm.api_key_env" in errors[0], wrong.stderr
    assert not out.exists()  # nothing written

    monkeypatch.setenv("OPENS2S_KEYED_TEST", KEY)
    right = run_cli("build", str(recipe), "--out", str(out))
    assert right.returncode == 0, right.stderr[-2000:]
    problems, counts = verify(out)
    assert problems == [] and counts["requested"] == 1 and counts["kept"] + counts["rejected"] == 1
    assert os.environ["OPENS2S_KEYED_TEST"] not in (out / "manifest.json").read_text()
