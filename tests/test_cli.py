"""The small commands: voices list, voices audition, recipe-schema."""

from __future__ import annotations

import json
from pathlib import Path

import soundfile as sf
from conftest import run_cli


def test_voices_list_shows_the_catalog() -> None:
    result = run_cli("voices", "list", timeout=120)
    assert result.returncode == 0, result.stderr
    # the demo recipe's catalog: eSpeak user speakers and its Piper assistant voice
    assert "spk-01" in result.stdout and "spk-55" in result.stdout and "asst-joe" in result.stdout


def test_audition_writes_a_wav(tmp_path: Path) -> None:
    out = tmp_path / "a.wav"
    args = ("voices", "audition", "spk-05", "--emotion", "sad", "--intensity", "high", "--text", "I miss her.")
    result = run_cli(*args, "--out", str(out), timeout=120)
    assert result.returncode == 0, result.stderr
    data, rate = sf.read(out)
    assert rate == 22050 and len(data) > rate // 2


def test_audition_rejects_unknown_emotion_and_speaker(tmp_path: Path) -> None:
    bad_emotion = run_cli(
        "voices", "audition", "spk-05", "--emotion", "jolly", "--text", "hi", "--out", str(tmp_path / "x.wav")
    )
    assert bad_emotion.returncode == 2 and "unknown emotion 'jolly'" in bad_emotion.stderr
    bad_speaker = run_cli("voices", "audition", "nobody", "--text", "hi", "--out", str(tmp_path / "x.wav"))
    assert bad_speaker.returncode == 2 and "unknown speaker 'nobody'" in bad_speaker.stderr
    assert not (tmp_path / "x.wav").exists()


def test_recipe_schema_describes_fields() -> None:
    result = run_cli("recipe-schema", timeout=120)
    schema = json.loads(result.stdout)
    assert schema["properties"]["num_dialogues"]["description"]
