"""Stage 2: the dialogue writer (an LLM behind the OpenAI API).

Two modes, chosen by `llm.mode` in the recipe:
- `turns`: one short request per turn with few-shot examples (what a 135M local model can do);
- `dialogue`: one request per dialogue whose output is constrained by a JSON schema and
  validated with pydantic (for capable models such as Qwen3 behind vLLM).
Every turn passes the text gates (s2_text_gates.py). Invalid output is retried with a new seed up to
`llm.max_retries` times, then rejected (permanently) with the reason of the last failure; a request
the endpoint never answered rejects the dialogue transiently (`llm_request_failed`, or
`llm_endpoint_down` after an outage outlasted `reliability.outage_budget_s`), to be retried on
resume. An actor handles a batch of dialogues with up to `llm.max_concurrency` of them in flight at
once (threads; each dialogue's own requests are sequential because every turn depends on the
previous one).
"""

from __future__ import annotations

import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.adapters.llm_client import ChatClient, LLMError
from pipeline.failures import classify
from pipeline.io.request_cache import CACHE_PATH, RequestCache
from pipeline.recipe import Emotion, LLMConfig
from pipeline.records import Dialogue, Reject, Turn, turn_id
from pipeline.stages.base import Stage
from pipeline.stages.s2_text_gates import InvalidOutput, TextGates

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class TurnOut(BaseModel):
    """One turn as the LLM writes it in dialogue mode."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    text: str = Field(min_length=1, max_length=600)
    emotion: Literal[Emotion, "none"] = Field(
        "none", description="User turns: the emotion the turn expresses; assistant turns: none."
    )
    strategy: Literal["acknowledge", "validate", "reassure", "ask", "suggest", "none"] = Field(
        "none", description="Assistant turns: the empathy strategy used; user turns: none."
    )


class DialogueOut(BaseModel):
    """A whole dialogue as the LLM writes it in dialogue mode."""

    model_config = ConfigDict(extra="forbid")
    turns: list[TurnOut] = Field(min_length=2, max_length=16)


@dataclass(frozen=True)
class WrittenTurn:
    """A turn's text as written, with the assistant's empathy strategy ("" when the mode has none)."""

    text: str
    strategy: str = ""


def request_seed(*parts: object) -> int:
    """A stable 31-bit seed for one request, from the dialogue id, turn and attempt."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def clean_turn(text: str, max_sentences: int = 2) -> str:
    """Tidy one generated turn: first line only, no quotes or speaker labels, at most N sentences."""
    text = text.strip().split("\n")[0].strip()
    text = re.sub(r"^(user|assistant|listener|me|you)\s*:\s*", "", text, flags=re.I)
    text = text.strip().strip('"').strip("'").strip()
    sentences = _SENTENCE_END.split(text)
    return " ".join(sentences[:max_sentences]).strip()


class DialogueWriter(Stage):
    """Writes the turns of each dialogue with the recipe's LLM."""

    name = "dialogue"

    def setup(self) -> None:
        """Open the OpenAI client against the run's endpoint (with the folder's request cache)."""
        self.cfg = self.ctx.recipe.llm
        self.prompts = self.ctx.catalogs.prompts
        cache = RequestCache(self.ctx.out_dir / CACHE_PATH) if self.cfg.cache_requests else None
        rel = self.ctx.recipe.reliability
        self.client = ChatClient(self.cfg, self.ctx.llm_base_url, cache, rel.outage_budget_s, rel.probe_max_interval_s)
        self.gates = TextGates(self.ctx.recipe.text_gates, self.cfg, self.ctx.catalogs.emotion_sentences)
        self.gates.warm_up()

    def run_batch(self, dialogues: list[Dialogue]) -> list[Dialogue]:
        """Write up to `llm.max_concurrency` dialogues at once; results keep the input order."""
        if self.cfg.max_concurrency <= 1 or len(dialogues) <= 1:
            return [self.run(d) for d in dialogues]
        with ThreadPoolExecutor(max_workers=min(self.cfg.max_concurrency, len(dialogues))) as pool:
            return list(pool.map(self.run, dialogues))

    def process(self, dialogue: Dialogue) -> Dialogue:
        """Fill `dialogue.turns` with text, or reject it with the reason of the last failure."""
        dialogue.llm_model = self.cfg.model
        try:
            texts = self._write_turns(dialogue) if self.cfg.mode == "turns" else self._write_dialogue(dialogue)
        except InvalidOutput as err:
            dialogue.reject = Reject(stage=self.name, reason=err.reason, detail=str(err)[:300])
            return dialogue
        except LLMError as err:  # transient unless the server answered with a permanent error (e.g. 400)
            reason = "llm_endpoint_down" if err.outage else "llm_request_failed"
            dialogue.reject = Reject(self.name, reason, str(err), kind=classify(err))
            return dialogue
        add_turns(dialogue, texts, self.ctx.catalogs.emotions[dialogue.scenario.emotion].assistant_style)
        return dialogue

    def _attempts(self, dialogue: Dialogue, step: str, messages: list[dict[str, str]], max_tokens: int,
                  schema: dict[str, Any] | None, parse: Any) -> Any:  # fmt: skip
        """Ask until `parse` accepts the output; raise the last InvalidOutput after the retry budget."""
        last: InvalidOutput | None = None
        for attempt in range(self.cfg.max_retries + 1):
            raw = self.client.chat(messages, request_seed(dialogue.id, step, attempt), max_tokens, schema)
            try:
                return parse(raw)
            except InvalidOutput as err:
                last = err
        assert last is not None
        raise last

    def _turn_parser(self, role: str, emotion: str, earlier: list[str], situation: str) -> Any:
        def parse(raw: str) -> str:
            text = clean_turn(raw)
            self.gates.check(text, role, emotion, earlier, situation)
            return text

        return parse

    def _write_turns(self, dialogue: Dialogue) -> list[WrittenTurn]:
        sc, user_p, asst_p = dialogue.scenario, self.prompts["user"], self.prompts["assistant"]
        fields = {
            "persona_name": sc.persona.name,
            "persona_style": sc.persona.style,
            "situation": sc.situation,
            "emotion": sc.emotion,
            "intensity": sc.intensity,
        }
        texts: list[str] = []
        for exchange in range(sc.num_exchanges):
            if exchange == 0:
                ask = user_p["prompt"].format(**fields)
            else:
                ask = user_p["followup_prompt"].format(last_assistant=texts[-1], **fields)
            messages = _few_shot(user_p["system"], user_p["examples"], ask)
            parse = self._turn_parser("user", sc.emotion, list(texts), sc.situation)
            texts.append(self._attempts(dialogue, f"u{exchange}", messages, self.cfg.max_tokens, None, parse))
            ask = asst_p["prompt"].format(last_user=texts[-1], emotion=sc.emotion)
            messages = _few_shot(asst_p["system"], asst_p["examples"], ask)
            parse = self._turn_parser("assistant", sc.emotion, list(texts), sc.situation)
            texts.append(self._attempts(dialogue, f"a{exchange}", messages, self.cfg.max_tokens, None, parse))
        return [WrittenTurn(text) for text in texts]

    def _write_dialogue(self, dialogue: Dialogue) -> list[WrittenTurn]:
        sc = dialogue.scenario
        messages = dialogue_messages(self.prompts, dialogue)
        budget = dialogue_max_tokens(self.cfg, sc.num_exchanges)

        def parse(raw: str) -> list[WrittenTurn]:
            return parse_dialogue(raw, sc.num_exchanges, sc.emotion, self.gates, sc.situation)

        return self._attempts(dialogue, "dialogue", messages, budget, DialogueOut.model_json_schema(), parse)


def dialogue_messages(prompts: dict[str, Any], dialogue: Dialogue) -> list[dict[str, str]]:
    """The chat messages that ask for a whole dialogue (dialogue mode)."""
    sc = dialogue.scenario
    user = prompts["user"].format(
        topic=sc.topic,
        situation=sc.situation,
        persona_name=sc.persona.name,
        persona_age_group=sc.persona.age_group,
        persona_gender=sc.persona.gender,
        persona_occupation=sc.persona.occupation,
        persona_style=sc.persona.style,
        emotion=sc.emotion,
        intensity=sc.intensity,
        num_exchanges=sc.num_exchanges,
    )
    return [{"role": "system", "content": prompts["system"]}, {"role": "user", "content": user}]


def dialogue_max_tokens(cfg: LLMConfig, num_exchanges: int) -> int:
    """Token budget of a whole-dialogue request: `llm.max_tokens` per turn plus room for the JSON."""
    return cfg.max_tokens * 2 * num_exchanges + 40


def parse_dialogue(
    raw: str, num_exchanges: int, emotion: str, gates: TextGates, situation: str = ""
) -> list[WrittenTurn]:
    """Validate a JSON dialogue against the schema, the turn order, the labels and the text gates."""
    if not raw.strip():
        raise InvalidOutput("llm_empty", "the server returned no text")
    try:
        parsed = DialogueOut.model_validate(json.loads(raw))
    except json.JSONDecodeError as err:
        raise InvalidOutput("llm_invalid_json", f"{err}: {raw[:120]!r}") from None
    except ValidationError as err:
        raise InvalidOutput("llm_schema_mismatch", str(err).splitlines()[0]) from None
    roles = [t.role for t in parsed.turns]
    expected = ["user", "assistant"] * num_exchanges
    if roles != expected:
        raise InvalidOutput("llm_wrong_turns", f"roles {roles}, expected {len(expected)} alternating")
    if any(t.role == "assistant" and t.strategy == "none" for t in parsed.turns):
        raise InvalidOutput("llm_missing_strategy", "an assistant turn names no empathy strategy")
    for turn in parsed.turns:
        if turn.role == "user" and turn.emotion != emotion:
            raise InvalidOutput("llm_wrong_emotion", f"a user turn is labelled {turn.emotion}, the target is {emotion}")
    texts = [" ".join(t.text.split()) for t in parsed.turns]
    for number, (text, role) in enumerate(zip(texts, roles, strict=True)):
        gates.check(text, role, emotion, texts[:number], situation)
    strategies = [t.strategy if t.role == "assistant" else "" for t in parsed.turns]
    return [WrittenTurn(text, strategy) for text, strategy in zip(texts, strategies, strict=True)]


def add_turns(dialogue: Dialogue, written: list[WrittenTurn], assistant_style: str) -> None:
    """Append the written turns: odd ones are the user's (scenario emotion and speaker), even ones the assistant's."""
    sc = dialogue.scenario
    for number, turn in enumerate(written, start=1):
        is_user = number % 2 == 1
        dialogue.turns.append(
            Turn(
                turn_id=turn_id(dialogue.id, number),
                role="user" if is_user else "assistant",
                text=turn.text,
                emotion=sc.emotion if is_user else assistant_style,
                intensity=sc.intensity if is_user else "low",
                speaker_id=sc.speaker_id if is_user else sc.assistant_speaker_id,
                strategy=turn.strategy,
            )
        )


def _few_shot(system: str, examples: list[dict[str, str]], ask: str) -> list[dict[str, str]]:
    """Chat messages: the system prompt, example pairs, then the real request."""
    messages = [{"role": "system", "content": system}]
    for example in examples:
        messages.append({"role": "user", "content": example["prompt"]})
        messages.append({"role": "assistant", "content": example["reply"]})
    messages.append({"role": "user", "content": ask})
    return messages
