"""`train --plan`: parameter counts from architecture dims equal the real modules' counts, and the CLI
prints the per-GPU memory for the Qwen3-8B OpenS2S model on 1 and 8 GPUs in both regimes, refusing what
cannot fit, without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from pipeline.train.config import ModelConfig
from pipeline.train.model import S2SModel
from pipeline.train.plan import PRESETS, QWEN3_06B, decoder_params, make_plan


@pytest.mark.parametrize("preset", ["opens2s-qwen3-8b", "qwen3-0.6b-llm"])
def test_plan_counts_the_parameters_the_model_has(preset: str) -> None:
    dims = PRESETS["opens2s-qwen3-8b"]
    if preset == "qwen3-0.6b-llm":
        dims = {**dims, "llm": QWEN3_06B}
    config = ModelConfig(name=preset, encoder=dims["encoder"], llm=dims["llm"], tts=dims["tts"], n_units=1,
                         adapter_inner_dim=dims["adapter_inner_dim"])  # fmt: skip
    with torch.device("meta"):  # the real modules, no memory
        model = S2SModel(config)

    def count(*parts: torch.nn.Module) -> int:
        return sum(p.numel() for part in parts for p in part.parameters())

    plan = make_plan(dims, "adapters-llm-tts", gpus=8, batch=4, seq_len=2048)
    assert plan.params == {
        "audio encoder": count(model.audio_encoder),
        "adapter+projections": count(model.adapter, model.llm2tts, model.spk2tts),
        "LLM": count(model.llm),
        "TTS LM": count(model.tts),
    }
    assert plan.trainable == count(model.adapter, model.llm2tts, model.spk2tts, model.llm, model.tts)
    assert decoder_params(QWEN3_06B)[0] == 596_049_920  # Qwen3-0.6B's published count (tied embeddings)


def test_cli_plan_for_the_qwen3_8b_model_on_1_and_8_gpus_in_both_regimes() -> None:
    script = """
import json, sys
from typer.testing import CliRunner
from pipeline.cli import app
runs = {}
for gpus in (1, 8):
    for regime in ("adapters", "adapters-llm-tts"):
        r = CliRunner().invoke(app, ["train", "x", "--plan", "--config", "opens2s", "--gpus", str(gpus),
                                     "--trainable", regime, "--batch-size", "4", "--seq-len", "2048",
                                     "--grad-checkpointing"])
        runs[f"{gpus}/{regime}"] = [r.exit_code, r.output]
print(json.dumps({"runs": runs, "torch": "torch" in sys.modules}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert not result["torch"]  # the plan comes before anything heavy is loaded
    runs = result["runs"]
    for key, (code, output) in runs.items():
        print(key, output.splitlines()[-1] if code == 0 else output.splitlines()[-2])
        assert "LLM 8.189 B" in output and "total per GPU" in output
    assert runs["1/adapters"][0] == runs["8/adapters"][0] == runs["8/adapters-llm-tts"][0] == 0
    code, output = runs["1/adapters-llm-tts"]  # 10 B trainable parameters with AdamW on one GPU
    assert code == 2 and "DOES NOT FIT in 80 GiB" in output and "--gpus" in output
