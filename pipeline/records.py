"""Typed records that travel through the pipeline, with deterministic hierarchical ids.

A dialogue id is `dlg-<seed>-<index>`; its turns are `<dialogue id>-t<NN>`. A record that a
stage rejects keeps travelling with its `Reject` so that every requested dialogue is accounted for.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

EMOTIONS = ("neutral", "happy", "sad", "angry", "fearful", "surprised", "disgusted")
INTENSITIES = ("low", "medium", "high")
AGE_GROUPS = ("teen", "young adult", "adult", "older adult")  # in order: neighbours are adjacent


def dialogue_id(seed: int, index: int) -> str:
    """Deterministic dialogue id from the recipe seed and the dialogue's index."""
    return f"dlg-{seed}-{index:06d}"


def dialogue_index(dialogue: str) -> int:
    """The index part of a dialogue id (`dlg-<seed>-<index>`)."""
    return int(dialogue.rsplit("-", 1)[1])


def turn_id(dialogue: str, number: int) -> str:
    """Deterministic turn id: the dialogue id plus the 1-based turn number."""
    return f"{dialogue}-t{number:02d}"


@dataclass
class Persona:
    """Who the user is."""

    name: str
    age_group: str
    gender: str
    occupation: str
    style: str


@dataclass
class Scenario:
    """What one dialogue is about, sampled from the catalogs."""

    topic: str
    situation: str
    persona: Persona
    emotion: str
    intensity: str
    speaker_id: str
    assistant_speaker_id: str
    num_exchanges: int


@dataclass
class Turn:
    """One utterance; filled in stage by stage (text, then audio, then checks, then units)."""

    turn_id: str
    role: str  # "user" or "assistant"
    text: str
    emotion: str  # target emotion (the assistant's style for assistant turns)
    intensity: str
    speaker_id: str
    audio: bytes = b""  # FLAC
    sampling_rate: int = 0
    duration_s: float = 0.0
    asr_text: str = ""
    wer: float | None = None
    emotion_measured: str = ""
    emotion_score: float | None = None
    speech_units: list[int] = field(default_factory=list)
    strategy: str = ""  # the assistant's empathy strategy (dialogue mode), else ""
    # paralinguistic labels: the speaker's catalog entry, then measured on the clean clip (stage 4)
    gender: str = ""
    age_group: str = ""
    accent: str = ""
    f0_median_hz: float | None = None
    speaking_rate_wps: float | None = None  # words per second of clip
    # acoustic conditions added after the gates (recipe `augment`): "" / None when the clip is clean
    aug_noise: str = ""
    aug_snr_db: float | None = None
    aug_rt60_s: float | None = None


@dataclass
class Reject:
    """Why an item was dropped, by which stage, with the measured values."""

    stage: str
    reason: str
    detail: str = ""
    turn_id: str = ""
    measured: dict[str, float | str] = field(default_factory=dict)
    kind: str = "permanent"  # "transient": the infrastructure failed, a resumed build retries it (failures.py)


@dataclass
class Dialogue:
    """One dialogue: its scenario, its turns, and (if dropped) why."""

    id: str
    index: int
    shard: int
    seed: int
    scenario: Scenario
    turns: list[Turn] = field(default_factory=list)
    llm_model: str = ""
    tts_backend: str = ""
    asr_backend: str = ""
    units_codebook: str = ""
    reject: Reject | None = None
    dropped_turns: list[Reject] = field(default_factory=list)  # exchanges cut by a gate
    timings: dict[str, float] = field(default_factory=dict)  # seconds spent per stage
    nodes: dict[str, str] = field(default_factory=dict)  # Ray node id each stage ran on
    interpreters: dict[str, str] = field(default_factory=dict)  # sys.executable each stage ran in
    # near-duplicate sketch computed on the workers (stages/s6_dedup.py): shingle hashes (uint64 bytes), band keys
    dedup_sketch: tuple[bytes, list[int]] | None = None

    @property
    def kept(self) -> bool:
        """True unless a stage rejected the whole dialogue."""
        return self.reject is None

    def summary(self) -> Dialogue:
        """A copy without the heavy per-turn payload (audio bytes, speech units): what the driver
        receives for ordering, near-duplicate removal, fail-fast and progress, while the full record
        stays on the workers for the shard writer."""
        turns = [replace(t, audio=b"", speech_units=[]) for t in self.turns]
        return replace(self, turns=turns)

    @property
    def transient(self) -> bool:
        """True if the dialogue was dropped by an infrastructure failure that a resume retries."""
        return self.reject is not None and self.reject.kind == "transient"
