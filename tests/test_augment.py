"""Acoustic conditions: the numpy implementation hits its SNR and RT60, and a build with `augment` on
keeps the parameters per user turn while every clip still decodes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from conftest import run_cli, write_recipe

from pipeline.adapters.augment_acoustic import Conditions, apply, colored_noise, room_impulse_response
from pipeline.adapters.base import Audio


def test_noise_is_added_at_the_sampled_snr_and_reverb_decays_at_rt60() -> None:
    rng = np.random.default_rng(0)
    sr = 16000
    tone = Audio((0.3 * np.sin(2 * np.pi * 220 * np.arange(2 * sr) / sr)).astype(np.float32), sr)
    noisy = apply(tone, Conditions("pink", 10.0, None), rng)
    assert len(noisy.samples) == len(tone.samples)
    assert np.max(np.abs(noisy.samples)) == pytest.approx(np.max(np.abs(tone.samples)), rel=1e-4)
    scale = float(np.dot(noisy.samples, tone.samples) / np.dot(tone.samples, tone.samples))
    residual = noisy.samples - scale * tone.samples  # what is not the tone is the added noise
    snr = 10 * np.log10(np.sum((scale * tone.samples) ** 2) / np.sum(residual**2))
    assert snr == pytest.approx(10.0, abs=0.5)
    for kind in ("white", "pink", "brown"):
        assert np.mean(colored_noise(kind, 4096, rng) ** 2) == pytest.approx(1.0)
    h = room_impulse_response(0.5, sr, rng)
    energy = np.cumsum(h[::-1] ** 2)[::-1]  # Schroeder backward integration of the tail
    tail = energy / energy[1]
    t60 = np.argmax(10 * np.log10(tail + 1e-20) < -25) / sr * 60 / 25  # extrapolated from the -25 dB point
    assert t60 == pytest.approx(0.5, rel=0.3)


@pytest.mark.slow
def test_build_with_acoustic_conditions_keeps_parameters_and_decodes(tmp_path: Path) -> None:
    augment = {"enabled": True, "share": 1.0, "reverb_share": 1.0, "snr_db": [12, 12.5]}
    recipe = write_recipe(tmp_path, name="aug", num_dialogues=2, shard_size=2, gates={"max_wer": 0.6}, augment=augment)
    out = tmp_path / "out"
    result = run_cli("build", str(recipe), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [r for f in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    if not rows:
        pytest.skip("the tiny build kept no dialogue")
    for turn in (t for r in rows for t in r["turns"]):
        samples, rate = sf.read(io.BytesIO(turn["audio"]["bytes"]))
        assert rate == 16000 and len(samples) == pytest.approx(turn["duration_s"] * 16000, abs=2)
        if turn["role"] == "user":
            assert turn["aug_noise"] in ("white", "pink", "brown") and 12 <= turn["aug_snr_db"] <= 12.5
            assert 0.2 <= turn["aug_rt60_s"] <= 0.7 and turn["f0_median_hz"] > 0  # labels of the clean clip
        else:
            assert turn["aug_noise"] == "" and turn["aug_snr_db"] is None
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train")
    try:
        decoded = [t["audio"].get_all_samples() for row in ds for t in row["turns"]]
    except (RuntimeError, OSError) as err:
        pytest.skip(f"datasets decodes audio through torchcodec, which cannot load here ({err}); install ffmpeg")
    assert all(s.sample_rate == 16000 and s.data.shape[-1] > 0 for s in decoded)
