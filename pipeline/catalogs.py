"""Catalogs under `prompts/` (topics, situations, personas, prompt templates) and `voices/`
(speakers, emotion rendering), loaded and checked against a recipe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.adapters.tts_espeak import Prosody, Voice
from pipeline.adapters.tts_piper import PiperStyle
from pipeline.recipe import Recipe, RecipeError
from pipeline.records import AGE_GROUPS, EMOTIONS, INTENSITIES, Persona
from pipeline.resources import resolve

# eSpeak's volume at 100 clips when an emotion raises it by 60%; 75 leaves headroom (measured).
DEFAULT_VOLUME = 75


@dataclass(frozen=True)
class Situation:
    """Something that happened to the user, and the emotions it can plausibly evoke."""

    text: str
    emotions: tuple[str, ...] = EMOTIONS


@dataclass(frozen=True)
class Topic:
    """A topic and the situations a user may bring about it."""

    id: str
    name: str
    situations: tuple[Situation, ...]

    def situations_for(self, emotion: str) -> tuple[Situation, ...]:
        """The situations that can plausibly evoke `emotion` (empty if none)."""
        return tuple(s for s in self.situations if emotion in s.emotions)


@dataclass(frozen=True)
class Speaker:
    """One voice of the speaker catalog."""

    id: str
    gender: str
    age_group: str
    accent: str
    voice: Voice


@dataclass(frozen=True)
class PiperSpeaker:
    """An assistant voice rendered by the embedded Piper model, with one style per assistant style."""

    id: str
    gender: str
    age_group: str
    accent: str
    styles: dict[str, PiperStyle]

    def style(self, name: str) -> PiperStyle:
        """The rendering of assistant style `name` (the neutral one when the catalog has no such style)."""
        return self.styles.get(name, self.styles["neutral"])


@dataclass(frozen=True)
class PromptSpeaker:
    """A CosyVoice2 zero-shot speaker: a prompt recording and its transcript."""

    id: str
    gender: str
    age_group: str
    accent: str
    prompt_wav: Path
    prompt_text: str
    role: str = "user"  # or "assistant"


@dataclass(frozen=True)
class EmotionStyle:
    """How one emotion is rendered, and the assistant style that answers it."""

    prosody: Prosody  # at high intensity
    instruct: str
    assistant_style: str


@dataclass(frozen=True)
class Catalogs:
    """Everything a build samples from, already filtered by the recipe."""

    version: str
    topics: tuple[Topic, ...]
    personas: tuple[Persona, ...]
    speakers: tuple[Speaker | PromptSpeaker, ...]
    assistants: tuple[Speaker | PromptSpeaker | PiperSpeaker, ...]
    emotions: dict[str, EmotionStyle]
    intensity_scale: dict[str, float]
    prompts: dict[str, Any]
    prompts_version: str
    emotion_sentences: dict[str, list[str]]
    text_gates_version: str
    production_speakers: tuple[PromptSpeaker, ...] = ()

    def speaker(self, speaker_id: str) -> Speaker | PromptSpeaker | PiperSpeaker:
        """Look up a user or assistant speaker by id."""
        for speaker in self.speakers + self.assistants:
            if speaker.id == speaker_id:
                return speaker
        raise KeyError(speaker_id)

    def voices_for(self, persona: Persona) -> tuple[Speaker | PromptSpeaker, ...]:
        """User speakers that may voice `persona`: its gender (any voice for a nonbinary persona) and
        its age group or an adjacent one (an age group the table does not order matches any)."""
        return tuple(s for s in self.speakers if voice_matches(persona, s))

    def prosody(self, emotion: str, intensity: str) -> Prosody:
        """The eSpeak prosody of `emotion` at `intensity`."""
        high, k = self.emotions[emotion].prosody, self.intensity_scale[intensity]
        return Prosody(
            pitch_delta=high.pitch_delta * k,
            range_delta=high.range_delta * k,
            rate_factor=1.0 + (high.rate_factor - 1.0) * k,
            volume_factor=1.0 + (high.volume_factor - 1.0) * k,
            pause_ms=round(high.pause_ms * k),
        )


def voice_matches(persona: Persona, speaker: Speaker | PromptSpeaker) -> bool:
    """True if `speaker` fits `persona`: same gender (a nonbinary persona or a speaker without one takes
    any) and equal or adjacent age group."""
    if persona.gender != "nonbinary" and speaker.gender and speaker.gender != persona.gender:
        return False
    if persona.age_group not in AGE_GROUPS or speaker.age_group not in AGE_GROUPS:
        return True
    return abs(AGE_GROUPS.index(persona.age_group) - AGE_GROUPS.index(speaker.age_group)) <= 1


def _read_yaml(path: Path, field: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{field}: {path} does not exist") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise RecipeError(f"{field}: {path} is not valid UTF-8 YAML: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{field}: {path} must hold a YAML mapping")
    return data


def _situation(entry: str | dict[str, Any]) -> Situation:
    """A catalog situation: a plain string (fits every emotion) or {text, emotions}."""
    if isinstance(entry, str):
        return Situation(entry)
    try:
        emotions = tuple(str(e) for e in entry["emotions"])
        situation = Situation(str(entry["text"]), emotions)
    except (KeyError, TypeError) as err:
        raise RecipeError(f"scenarios.catalog: situation {entry!r} needs text and emotions ({err})") from None
    unknown = [e for e in emotions if e not in EMOTIONS]
    if unknown or not emotions:
        raise RecipeError(f"scenarios.catalog: situation {situation.text!r} names unknown emotions {unknown}; "
                          f"use {', '.join(EMOTIONS)}")  # fmt: skip
    return situation


def _speaker(entry: dict[str, Any], field: str) -> Speaker:
    try:
        voice = Voice(
            name=str(entry["espeak"]["voice"]),
            pitch=int(entry["espeak"].get("pitch", 50)),
            pitch_range=int(entry["espeak"].get("pitch_range", 50)),
            rate=int(entry["espeak"].get("rate", 165)),
            volume=int(entry["espeak"].get("volume", DEFAULT_VOLUME)),
        )
        return Speaker(
            id=str(entry["id"]),
            gender=str(entry.get("gender", "")),
            age_group=str(entry.get("age_group", "")),
            accent=str(entry.get("accent", "")),
            voice=voice,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise RecipeError(f"{field}: malformed speaker entry {entry!r} ({err})") from None


def _piper_speaker(entry: dict[str, Any]) -> PiperSpeaker:
    field = "tts.speakers (piper_assistants)"
    try:
        styles = {str(name): PiperStyle(**spec) for name, spec in entry["piper"].items()}
        speaker = PiperSpeaker(
            id=str(entry["id"]),
            gender=str(entry.get("gender", "")),
            age_group=str(entry.get("age_group", "")),
            accent=str(entry.get("accent", "")),
            styles=styles,
        )
    except (KeyError, TypeError, AttributeError) as err:
        raise RecipeError(f"{field}: malformed entry {entry!r} ({err})") from None
    if "neutral" not in styles:
        raise RecipeError(f"{field}: {speaker.id} needs a `neutral` style")
    return speaker


def _prompt_speaker(entry: dict[str, Any], folder: Path) -> PromptSpeaker:
    """A production speaker whose prompt file exists and is readable mono-or-stereo audio of 1-30 s."""
    import soundfile as sf

    field = "tts.speakers (production)"
    try:
        wav = Path(entry["prompt_wav"])
        speaker = PromptSpeaker(
            id=str(entry["id"]),
            gender=str(entry.get("gender", "")),
            age_group=str(entry.get("age_group", "")),
            accent=str(entry.get("accent", "")),
            prompt_wav=wav if wav.is_absolute() else folder / wav,
            prompt_text=str(entry["prompt_text"]),
            role=str(entry.get("role", "user")),
        )
    except (KeyError, TypeError) as err:
        raise RecipeError(f"{field}: entry {entry!r} needs id, prompt_wav and prompt_text ({err})") from None
    where = f"{field}: speaker {speaker.id}: prompt_wav {speaker.prompt_wav}"
    if not speaker.prompt_wav.is_file():
        raise RecipeError(f"{where} does not exist; record or copy the prompt there")
    try:
        info = sf.info(str(speaker.prompt_wav))
    except (RuntimeError, sf.LibsndfileError) as err:
        raise RecipeError(f"{where} is not readable audio ({err})") from None
    if info.frames == 0 or not 1.0 <= info.duration <= 30.0 or info.samplerate < 16000:
        raise RecipeError(f"{where} must hold 1-30 s of audio at 16 kHz or more (has {info.duration:.1f} s)")
    if not speaker.prompt_text.strip():
        raise RecipeError(f"{field}: speaker {speaker.id}: prompt_text is empty; give the prompt's transcript")
    return speaker


def _select(items: tuple[Any, ...], wanted: list[str] | None, field: str, what: str) -> tuple[Any, ...]:
    if wanted is None:
        if not items:
            raise RecipeError(f"{field}: the {what} catalog is empty")
        return items
    known = {item.id: item for item in items}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise RecipeError(
            f"{field}: unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known)[:12])}"
            + (" ..." if len(known) > 12 else "")
        )
    if not wanted:
        raise RecipeError(f"{field}: the list is empty; omit the field to use every {what}")
    return tuple(known[name] for name in wanted)


def load_catalogs(recipe: Recipe, base: Path | None = None) -> Catalogs:
    """Load the catalogs a recipe names and check every reference; raises RecipeError."""
    raw = _read_yaml(resolve(recipe.scenarios.catalog, "prompts", base), "scenarios.catalog")
    topics = tuple(
        Topic(id=str(t["id"]), name=str(t["name"]), situations=tuple(_situation(s) for s in t["situations"]))
        for t in raw.get("topics") or []
    )
    if any(not t.situations for t in topics):
        raise RecipeError("scenarios.catalog: every topic needs at least one situation")
    personas = tuple(Persona(**p) for p in raw.get("personas") or [])
    if not personas:
        raise RecipeError("scenarios.catalog: the persona catalog is empty")
    topics = _select(topics, recipe.scenarios.topics, "scenarios.topics", "topic")
    homeless = [e for e in recipe.scenarios.emotions if not any(t.situations_for(e) for t in topics)]
    if homeless:
        raise RecipeError(
            f"scenarios.topics: no situation of the selected topics fits emotion(s) {', '.join(homeless)}; "
            "add topics or tag situations with those emotions"
        )

    voices_path = resolve(recipe.tts.speakers, "voices", base)
    voices = _read_yaml(voices_path, "tts.speakers")
    production = tuple(_prompt_speaker(e, voices_path.parent) for e in voices.get("production") or [])
    speakers = tuple(_speaker(e, "tts.speakers") for e in voices.get("speakers") or [])
    assistants: tuple[Speaker | PromptSpeaker | PiperSpeaker, ...]
    assistants = tuple(_speaker(e, "tts.speakers") for e in voices.get("assistants") or [])
    if recipe.tts.assistant_backend == "piper":
        assistants = tuple(_piper_speaker(e) for e in voices.get("piper_assistants") or [])
    if recipe.tts.backend == "cosyvoice2":  # zero-shot prompt speakers instead of eSpeak voices
        speakers = tuple(p for p in production if p.role == "user")
        assistants = tuple(p for p in production if p.role == "assistant")
    speakers = _select(speakers, recipe.scenarios.speakers, "scenarios.speakers", "speaker")
    assistants = _select(assistants, recipe.tts.assistant_speakers, "tts.assistant_speakers", "assistant speaker")
    # a persona is spoken only by a voice that fits it; personas no selected voice fits are left out
    personas = tuple(p for p in personas if any(voice_matches(p, s) for s in speakers))
    if not personas:
        raise RecipeError("scenarios.speakers: no selected speaker fits any persona's gender and age group; add voices")

    table = _read_yaml(resolve(recipe.tts.emotions, "voices", base), "tts.emotions")
    missing = [e for e in EMOTIONS if e not in (table.get("emotions") or {})]
    scale = {str(k): float(v) for k, v in (table.get("intensity_scale") or {}).items()}
    if missing or set(scale) != set(INTENSITIES):
        raise RecipeError(f"tts.emotions: the table must define every emotion and intensity (missing {missing})")
    emotions = {
        name: EmotionStyle(
            prosody=Prosody(**spec["espeak"]),
            instruct=str(spec.get("cosyvoice_instruct", "")),
            assistant_style=str(spec.get("assistant_style", "neutral")),
        )
        for name, spec in table["emotions"].items()
    }

    default_prompts = "turns.yaml" if recipe.llm.mode == "turns" else "dialogue.yaml"
    prompts = _read_yaml(resolve(recipe.llm.prompts or default_prompts, "prompts", base), "llm.prompts")
    gate_table = _read_yaml(resolve(recipe.text_gates.sentences, "prompts", base), "text_gates.sentences")
    sentences = {str(k): [str(x) for x in v] for k, v in (gate_table.get("emotions") or {}).items()}
    if sorted(sentences) != sorted(EMOTIONS) or not all(sentences.values()):
        raise RecipeError("text_gates.sentences: the file must give reference sentences for every emotion")
    return Catalogs(
        version=str(raw.get("version", "")),
        topics=topics,
        personas=personas,
        speakers=speakers,
        assistants=assistants,
        emotions=emotions,
        intensity_scale=scale,
        prompts=prompts,
        prompts_version=str(prompts.get("version", "")),
        emotion_sentences=sentences,
        text_gates_version=str(gate_table.get("version", "")),
        production_speakers=production,
    )


def check_voices(catalogs: Catalogs) -> None:
    """Raise RecipeError if the TTS engine lacks a voice the catalog names."""
    from pipeline.adapters.tts_espeak import EspeakEngine

    engine = EspeakEngine.instance()
    voices = {s.voice.name for s in catalogs.speakers + catalogs.assistants if isinstance(s, Speaker)}
    bad = sorted(name for name in voices if not engine.has_voice(name))
    if bad:
        raise RecipeError(f"tts.speakers: eSpeak NG has no voice {', '.join(map(repr, bad))}; fix the speaker catalog")
