"""`opens2s-data check`: every stage of the demo recipe tried on 2 scenarios, with a table and an estimate."""

from __future__ import annotations

import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow


def test_check_demo_tries_every_stage() -> None:
    result = run_cli("check", "manifests/demo.yaml", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 5}
    for stage in ("scenarios", "dialogue", "tts", "gates", "units"):
        assert "ok (" in rows[stage], (stage, result.stdout)
    assert "espeak" in rows["tts"] and "faster-whisper" in rows["gates"] and "kmeans" in rows["units"]
    assert "estimate for 48 dialogues:" in result.stdout and "slowest stage" in result.stdout
