"""Production smoke test for a GPU machine or cluster: `check`, then a 4-dialogue build, with verdicts.

Set the local model folders (nothing is downloaded), then run `python bench/production_smoke.py`:

  VLLM_BASE_URL            http://host:8000/v1 of a running vLLM server   (VLLM_MODEL, VLLM_API_KEY optional)
  COSYVOICE_REPO           CosyVoice checkout with third_party/Matcha-TTS
  COSYVOICE_MODEL_DIR      CosyVoice2-0.5B folder
  COSYVOICE_PROMPT_WAV     a 3-10 s prompt recording, COSYVOICE_PROMPT_TEXT its transcript
  FUNASR_ASR_DIR           SenseVoiceSmall (or Paraformer) folder
  EMOTION2VEC_DIR          emotion2vec_plus_base or _large folder
  GLM4VOICE_REPO           GLM-4-Voice checkout;  GLM4VOICE_TOKENIZER_DIR  glm-4-voice-tokenizer folder
  RAY_ADDRESS              optional: an existing cluster (default: a local Ray on this machine)
  OUT                      optional: output folder (default: a temporary one)

It writes a recipe derived from manifests/production-gpu.yaml (4 dialogues, 1 actor per stage, one
prompt speaker for the user and the assistant), runs `opens2s-data check` and `opens2s-data build`
and prints each stage's verdict from the output: dialogues kept and rejected by reason, predicted
emotions, units per second of assistant audio. Exit 0 only when every stage delivered. Under 8 minutes
on one GPU once the models are on local disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
NEEDED = ("VLLM_BASE_URL", "COSYVOICE_REPO", "COSYVOICE_MODEL_DIR", "COSYVOICE_PROMPT_WAV", "COSYVOICE_PROMPT_TEXT",
          "FUNASR_ASR_DIR", "EMOTION2VEC_DIR", "GLM4VOICE_REPO", "GLM4VOICE_TOKENIZER_DIR")  # fmt: skip


def smoke_recipe(folder: Path, env: dict[str, str]) -> Path:
    """The production recipe pointed at the local folders, sized for a smoke test."""
    recipe = yaml.safe_load((REPO / "manifests" / "production-gpu.yaml").read_text())
    speakers = yaml.safe_load((REPO / "voices" / "speakers.yaml").read_text())
    prompt = {"prompt_wav": env["COSYVOICE_PROMPT_WAV"], "prompt_text": env["COSYVOICE_PROMPT_TEXT"]}
    speakers["production"] = [{"id": "smoke-user", "role": "user", **prompt},
                              {"id": "smoke-assistant", "role": "assistant", **prompt}]  # fmt: skip
    (folder / "speakers.yaml").write_text(yaml.safe_dump(speakers, allow_unicode=True))
    recipe.update(name="production-smoke", num_dialogues=4, shard_size=2)
    recipe["llm"].update(base_url=env["VLLM_BASE_URL"], model=env.get("VLLM_MODEL", recipe["llm"]["model"]))
    recipe["llm"]["api_key_env"] = "VLLM_API_KEY" if env.get("VLLM_API_KEY") else None
    recipe["tts"].update(cosyvoice_repo=env["COSYVOICE_REPO"], cosyvoice_model_dir=env["COSYVOICE_MODEL_DIR"],
                         speakers=str(folder / "speakers.yaml"))  # fmt: skip
    recipe["asr"]["model_path"] = env["FUNASR_ASR_DIR"]
    recipe["gates"]["emotion_model_dir"] = env["EMOTION2VEC_DIR"]
    recipe["units"].update(glm4voice_repo=env["GLM4VOICE_REPO"], glm4voice_tokenizer_dir=env["GLM4VOICE_TOKENIZER_DIR"])
    for stage in recipe["resources"].values():
        stage["concurrency"] = 1
    path = folder / "production-smoke.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    return path


def run(*args: str) -> tuple[int, float]:
    """Run `opens2s-data ARGS` with its output on this console; returns (exit code, seconds)."""
    started = time.monotonic()
    code = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO).returncode
    return code, time.monotonic() - started


def verdicts(out: Path) -> list[str]:
    """One line per stage, from the build's shards and rejects."""
    import pyarrow.parquet as pq

    rows = [r for p in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    rejects = [r for p in sorted((out / "rejects").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    by_stage = Counter((r["stage"], r["reason"]) for r in rejects if r["level"] == "dialogue")
    turns = [t for r in rows for t in r["turns"]]
    user = [t for t in turns if t["role"] == "user"]
    assistant = [t for t in turns if t["role"] == "assistant"]
    seconds = sum(t["duration_s"] for t in assistant)
    units = sum(len(t["speech_units"] or []) for t in assistant)

    def rejected(stage: str) -> str:
        found = {reason: n for (s, reason), n in by_stage.items() if s == stage}
        return f"; rejected {found}" if found else ""

    predicted = Counter(str(t.get("emotion_measured") or "?") for t in user)
    return [
        f"dialogue: {len(rows)} kept of 4{rejected('dialogue')}",
        f"tts:      {len(turns)} turns, {sum(t['duration_s'] for t in turns):.1f} s of audio{rejected('tts')}",
        f"gates:    {len(user)} user turns kept, emotions predicted {dict(predicted)}{rejected('gates')}",
        f"units:    {units} units over {seconds:.1f} s = {units / max(seconds, 1e-9):.1f} units/s "
        f"(GLM-4-Voice: 12.5){rejected('units')}",
    ]


def main() -> int:
    """Check, build 4 dialogues, verify and print the verdicts."""
    missing = [name for name in NEEDED if not os.environ.get(name)]
    if missing:
        print(f"set {', '.join(missing)} (see the docstring of {__file__})", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="opens2s-smoke-"))
    out = Path(os.environ.get("OUT") or folder / "out")
    recipe = smoke_recipe(folder, dict(os.environ))
    address = ["--ray-address", os.environ["RAY_ADDRESS"]] if os.environ.get("RAY_ADDRESS") else []
    code, check_s = run("check", str(recipe), *address)
    print(f"check: exit {code} in {check_s:.0f} s")
    if code:
        return code
    code, build_s = run("build", str(recipe), "--out", str(out), *address)
    print(f"build: exit {code} in {build_s:.0f} s")
    verify_code, _ = run("verify", str(out))
    lines = verdicts(out) if (out / "data").is_dir() else []
    print("\n".join(lines))
    counts = (
        json.loads((out / "manifest.json").read_text()).get("counts", {}) if (out / "manifest.json").exists() else {}
    )
    ok = code == 0 and verify_code == 0 and counts.get("kept", 0) > 0
    print(f"verdict: {'every stage delivered' if ok else 'FAILED'} (output in {out})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
