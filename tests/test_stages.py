"""Stages run without Ray: scenarios, dialogue writer (real local LLM), TTS and gates."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import write_recipe

from pipeline.adapters.base import Audio
from pipeline.catalogs import load_catalogs
from pipeline.io.audio import from_bytes, resample, to_flac
from pipeline.recipe import load_recipe
from pipeline.records import AGE_GROUPS, EMOTIONS, Dialogue, Turn
from pipeline.stages.base import BuildContext
from pipeline.stages.s1_scenarios import ScenarioSampler
from pipeline.stages.s2_dialogue import DialogueWriter, clean_turn
from pipeline.stages.s2_text_gates import InvalidOutput, check_form
from pipeline.stages.s3_tts import Synthesizer
from pipeline.stages.s4_gates import AudioGates


def make_ctx(folder: Path, url: str = "", **overrides: object) -> BuildContext:
    recipe = load_recipe(write_recipe(folder, **overrides))
    return BuildContext(recipe=recipe, catalogs=load_catalogs(recipe), out_dir=folder, llm_base_url=url)


def test_scenarios_are_deterministic_and_stratified(tmp_path: Path) -> None:
    sampler = ScenarioSampler(make_ctx(tmp_path, num_dialogues=14, shard_size=5))
    first = [sampler.new(i) for i in range(14)]
    again = [ScenarioSampler(make_ctx(tmp_path, num_dialogues=14, shard_size=5)).new(i) for i in range(14)]
    assert [d.scenario for d in first] == [d.scenario for d in again]
    assert [d.id for d in first[:2]] == ["dlg-3-000000", "dlg-3-000001"]
    assert [d.shard for d in first] == [0] * 5 + [1] * 5 + [2] * 4
    assert {d.scenario.emotion for d in first[:7]} == set(EMOTIONS)
    assert len({d.scenario.speaker_id for d in first}) >= 8
    other_seed = ScenarioSampler(make_ctx(tmp_path, seed=4)).new(0)
    assert other_seed.scenario != first[0].scenario


def test_scenarios_are_coherent_and_still_balanced(tmp_path: Path) -> None:
    """Voice fits persona, situation fits emotion; a round of the design keeps every emotion equally
    often and visits every plausible (emotion, topic) cell."""
    ctx = make_ctx(tmp_path)
    cat, n = ctx.catalogs, len(EMOTIONS) * len(ctx.catalogs.topics)
    scenarios = [ScenarioSampler(ctx).scenario(i) for i in range(n)]
    for sc in scenarios:
        voice = cat.speaker(sc.speaker_id)
        if sc.persona.gender != "nonbinary":
            assert voice.gender == sc.persona.gender, sc
        assert abs(AGE_GROUPS.index(voice.age_group) - AGE_GROUPS.index(sc.persona.age_group)) <= 1, sc
        topic = next(t for t in cat.topics if t.name == sc.topic)
        assert sc.situation in {s.text for s in topic.situations_for(sc.emotion)}, sc
    assert set(Counter(sc.emotion for sc in scenarios).values()) == {n // len(EMOTIONS)}
    plausible = {(e, t.name) for t in cat.topics for e in EMOTIONS if t.situations_for(e)}
    assert {(sc.emotion, sc.topic) for sc in scenarios} == plausible
    assert len(cat.personas) == 46  # no persona of the catalog is left without a fitting voice
    cells = Counter((p.gender, p.age_group) for p in cat.personas if p.gender != "nonbinary")
    assert all(len(cat.voices_for(next(p for p in cat.personas if (p.gender, p.age_group) == c))) >= 3 for c in cells)


def test_clean_and_check_turn() -> None:
    assert clean_turn('User: "I am tired. So tired. Really tired."\nmore') == "I am tired. So tired."
    check_form("I feel really happy about this today.", 4, 60)
    for bad, reason in [
        ("Too short.", "text_too_short"),
        ("As an AI language model I cannot feel sad at all.", "text_role_leak"),
        ("12345 67890 12345 67890 1234", "text_not_plain_english"),
    ]:
        with pytest.raises(InvalidOutput) as err:
            check_form(bad, 4, 60)
        assert err.value.reason == reason


def test_turns_mode_writes_alternating_turns(tmp_path: Path, llm_url: str) -> None:
    ctx = make_ctx(tmp_path, llm_url, scenarios={"min_exchanges": 2, "max_exchanges": 2})
    writer = DialogueWriter(ctx)
    writer.setup()
    dialogue = writer.run(ScenarioSampler(ctx).new(0))
    if dialogue.reject is not None:  # a 135M model may fail the text checks; then the reason is named
        assert dialogue.reject.reason.startswith(("llm_", "text_"))
        return
    assert [t.role for t in dialogue.turns] == ["user", "assistant", "user", "assistant"]
    assert [t.turn_id for t in dialogue.turns] == [f"dlg-3-000000-t0{n}" for n in range(1, 5)]
    assert all(4 <= len(t.text.split()) <= 60 for t in dialogue.turns)
    assert dialogue.turns[0].emotion == dialogue.scenario.emotion
    assert dialogue.turns[0].speaker_id == dialogue.scenario.speaker_id
    assert dialogue.turns[1].speaker_id == dialogue.scenario.assistant_speaker_id
    # Words are not compared across runs: with llama.cpp's prompt cache, a prefix evaluated in
    # other batches gives slightly different logits, so the same seed can sample other words.


def test_dialogue_mode_against_llama_cpp_schema(tmp_path: Path, llm_url: str) -> None:
    ctx = make_ctx(tmp_path, llm_url, llm={"mode": "dialogue", "max_retries": 1})
    writer = DialogueWriter(ctx)
    writer.setup()
    dialogue = writer.run(ScenarioSampler(ctx).new(1))
    # SmolLM2 follows the schema structurally; its content may still fail the text checks
    if dialogue.reject is None:
        assert [t.role for t in dialogue.turns] == ["user", "assistant"]
    else:
        assert dialogue.reject.stage == "dialogue" and dialogue.reject.reason.startswith("llm_")


class _Canned(BaseHTTPRequestHandler):
    body = ""
    calls = 0

    def do_GET(self) -> None:  # noqa: N802
        self._send(200, json.dumps({"object": "list", "data": []}))

    def do_POST(self) -> None:  # noqa: N802
        type(self).calls += 1
        self.rfile.read(int(self.headers.get("content-length", 0)))
        message = {"role": "assistant", "content": type(self).body}
        payload = {
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }  # fmt: skip
        self._send(200, json.dumps(payload))

    def _send(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def canned_server() -> Iterator[tuple[str, type[_Canned]]]:
    handler = type("Handler", (_Canned,), {"calls": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    server.shutdown()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "llm_invalid_json"),
        ("", "llm_empty"),
        ('{"turns": [{"role": "user", "text": "hi"}], "extra": 1}', "llm_schema_mismatch"),
        (
            '{"turns": [{"role": "user", "text": "I feel so sad about my dog today."},'
            ' {"role": "user", "text": "I feel so sad about my dog today."}]}',
            "llm_wrong_turns",
        ),
        (
            '{"turns": [{"role": "user", "emotion": "happy", "text": "I feel so sad about my dog today."},'
            ' {"role": "assistant", "strategy": "validate", "text": "Losing a dog hurts so much, it makes sense."}]}',
            "llm_wrong_emotion",
        ),
        (
            '{"turns": [{"role": "user", "emotion": "angry", "text": "My neighbor blocked my driveway again today."},'
            ' {"role": "assistant", "text": "That sounds so frustrating, I am sorry it keeps happening."}]}',
            "llm_missing_strategy",
        ),
    ],
)
def test_invalid_dialogue_output_is_retried_then_rejected(
    tmp_path: Path, canned_server: tuple[str, type[_Canned]], body: str, reason: str
) -> None:
    url, handler = canned_server
    handler.body = body
    ctx = make_ctx(tmp_path, url, llm={"backend": "openai", "base_url": url, "mode": "dialogue", "max_retries": 2})
    writer = DialogueWriter(ctx)
    writer.setup()
    dialogue = writer.run(ScenarioSampler(ctx).new(0))
    assert dialogue.reject is not None and dialogue.reject.reason == reason
    assert handler.calls == 3  # one try plus two retries


def test_huge_and_non_english_turns_are_rejected(tmp_path: Path, canned_server: tuple[str, type[_Canned]]) -> None:
    url, handler = canned_server
    llm = {"backend": "openai", "base_url": url, "max_retries": 0, "cache_requests": False}
    ctx = make_ctx(tmp_path, url, llm=llm)
    writer = DialogueWriter(ctx)
    writer.setup()
    for body, reason in [
        ("word " * 50_000, "text_too_long"),
        ("Ich bin sehr traurig \u00fcber alles heute.", "text_not_plain_english"),
    ]:
        handler.body = json.loads(f'"{body}"')
        dialogue = writer.run(ScenarioSampler(ctx).new(0))
        assert dialogue.reject is not None and dialogue.reject.reason == reason


def _rendered(ctx: BuildContext, texts: list[str], emotion: str = "angry", intensity: str = "high") -> Dialogue:
    dialogue = ScenarioSampler(ctx).new(0)
    user, assistant = ctx.catalogs.speakers[0].id, ctx.catalogs.assistants[0].id
    for n, text in enumerate(texts, start=1):
        if n % 2:
            dialogue.turns.append(Turn(f"{dialogue.id}-t0{n}", "user", text, emotion, intensity, user))
        else:
            dialogue.turns.append(Turn(f"{dialogue.id}-t0{n}", "assistant", text, "neutral", "low", assistant))
    tts = Synthesizer(ctx)
    tts.setup()
    return tts.run(dialogue)


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> AudioGates:
    stage = AudioGates(make_ctx(tmp_path_factory.mktemp("gates")))
    stage.setup()
    return stage


USER = "I am so angry that my neighbor blocked my driveway again this morning."
ASSISTANT = "That sounds really frustrating, and it makes sense that you are upset."


def test_gates_keep_good_audio(tmp_path: Path, gates: AudioGates) -> None:
    dialogue = gates.run(_rendered(gates.ctx, [USER, ASSISTANT]))
    assert dialogue.kept, dialogue.reject
    user, assistant = dialogue.turns
    assert user.wer is not None and user.wer <= 0.2 and user.asr_text
    assert user.emotion_measured == "angry" and user.emotion_score is not None
    assert assistant.emotion_measured == ""  # the emotion check applies to user turns


def _corrupt(dialogue: Dialogue, audio: Audio) -> Dialogue:
    turn = dialogue.turns[0]
    audio = resample(audio, 16000)
    turn.audio, turn.duration_s = to_flac(audio), round(audio.duration_s, 3)
    return dialogue


def test_gates_reject_corrupted_audio_with_the_right_reason(gates: AudioGates) -> None:
    ctx = gates.ctx
    rng = np.random.default_rng(0)
    good = _rendered(ctx, [USER, ASSISTANT])
    clip = from_bytes(good.turns[0].audio)
    sr = clip.sample_rate
    pad = np.zeros(int(2.5 * sr), dtype=np.float32)
    cases = {
        "truncated": (Audio(clip.samples[: int(0.3 * sr)], sr), "too_short"),
        "too long": (Audio(np.tile(clip.samples, 12), sr), "too_long"),
        "cut in half": (Audio(clip.samples[: len(clip.samples) // 2], sr), "wer_too_high"),
        "silent": (Audio(np.zeros_like(clip.samples), sr), "silent"),
        "leading silence": (Audio(np.concatenate([pad, clip.samples]), sr), "edge_silence"),
        "clipped": (Audio(np.clip(clip.samples * 8, -1, 1), sr), "clipping"),
        "whisper quiet": (Audio(clip.samples * 0.02, sr), "loudness_out_of_range"),
        "noise": (Audio(rng.normal(0, 0.2, len(clip.samples)).astype(np.float32), sr), "wer_too_high"),
    }
    for name, (audio, reason) in cases.items():
        dialogue = gates.run(_corrupt(_rendered(ctx, [USER, ASSISTANT]), audio))
        assert dialogue.reject is not None, name
        assert dialogue.reject.reason == reason, (name, dialogue.reject)
        assert dialogue.turns == []
        assert [r.reason for r in dialogue.dropped_turns] == [reason, "follows_rejected_turn"]
        assert "loudness_db" in dialogue.reject.measured
    wrong_text = _rendered(ctx, [USER, ASSISTANT])
    wrong_text.turns[0].text = "The weather by the sea was lovely and calm all week long."
    rejected = gates.run(wrong_text)
    assert rejected.reject is not None and rejected.reject.reason == "wer_too_high"
    assert rejected.reject.measured["wer"] > 0.8


def test_gates_catch_prosody_that_ignored_the_emotion(gates: AudioGates) -> None:
    neutral_render = _rendered(gates.ctx, [USER, ASSISTANT], emotion="neutral")
    neutral_render.turns[0].emotion = "angry"  # claims anger, sounds neutral
    dialogue = gates.run(neutral_render)
    assert dialogue.reject is not None and dialogue.reject.reason == "emotion_mismatch"
    assert dialogue.reject.measured["emotion_measured"] == "neutral"


def test_a_later_failure_keeps_the_earlier_exchange(gates: AudioGates) -> None:
    dialogue = _rendered(gates.ctx, [USER, ASSISTANT, USER, ASSISTANT])
    dialogue.turns[3].text = "Completely different words about trains and the harbour at night."
    dialogue = gates.run(dialogue)
    assert dialogue.kept
    assert [t.turn_id[-3:] for t in dialogue.turns] == ["t01", "t02"]
    assert [r.reason for r in dialogue.dropped_turns] == ["wer_too_high", "follows_rejected_turn"]
    from pipeline.io.shards import reject_rows

    targets = {row["turn_id"][-3:]: row["emotion_target"] for row in reject_rows(dialogue)}
    assert targets == {"t04": "neutral", "t03": "angry"}  # the assistant's style, the user's emotion
