"""Embedded TTS: eSpeak NG in-process through ctypes (library and data from `espeakng-loader`).

eSpeak's synthesis callback is process-global, so there is one synthesizer per process
(`EspeakEngine.instance()`); Ray runs each TTS actor in its own process.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from html import escape

import numpy as np

from pipeline.adapters.base import Audio

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_SSML = 0x10
_PHONEMES_IPA = 0x02
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Voice:
    """The engine parameters that make one eSpeak speaker."""

    name: str  # eSpeak voice and variant, e.g. "en-gb+f2"
    pitch: int = 50  # base pitch 0-100
    pitch_range: int = 50  # pitch range 0-100
    rate: int = 165  # words per minute
    volume: int = 100  # 0-200


@dataclass(frozen=True)
class Prosody:
    """Relative prosody for one rendering (an emotion at an intensity)."""

    pitch_delta: float = 0.0  # added to the voice's base pitch (0-100 scale)
    range_delta: float = 0.0  # added to the voice's pitch range (0-100 scale)
    rate_factor: float = 1.0  # multiplies the voice's rate
    volume_factor: float = 1.0  # multiplies the voice's volume
    pause_ms: int = 0  # extra pause between sentences (SSML break)


class EspeakEngine:
    """The process-wide eSpeak NG synthesizer."""

    _instance: EspeakEngine | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = int(self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0))
        if self.sample_rate <= 0:
            raise RuntimeError("eSpeak NG failed to initialise; reinstall the espeakng-loader wheel")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: ctypes must not free it
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self.version = self._version()

    @classmethod
    def instance(cls) -> EspeakEngine:
        """Return the process-wide engine, creating it on first use."""
        with cls._lock:
            if cls._instance is None:
                cls._instance = EspeakEngine()
            return cls._instance

    def _version(self) -> str:
        self._lib.espeak_Info.restype = ctypes.c_char_p
        raw = self._lib.espeak_Info(None)
        return raw.decode() if raw else "unknown"

    def _on_audio(self, wav: ctypes.Array, count: int, _events: int) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def has_voice(self, name: str) -> bool:
        """True if eSpeak accepts this voice name (with optional +variant)."""
        with self._lock:
            return self._lib.espeak_SetVoiceByName(name.encode()) == 0

    def phonemes(self, text: str, voice_name: str = "en-us") -> list[tuple[str, str]]:
        """IPA phonemes of `text` clause by clause, each with the punctuation that ended it ("" if none),
        through `espeak_TextToPhonemes` in IPA mode (what Piper voices were trained on)."""
        lib = self._lib
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        raw = text.encode("utf-8")
        buffer = ctypes.create_string_buffer(raw + b"\0")
        start = ctypes.addressof(buffer)
        pointer = ctypes.c_void_p(start)
        clauses: list[tuple[str, str]] = []
        with self._lock:
            if lib.espeak_SetVoiceByName(voice_name.encode()) != 0:
                raise ValueError(f"eSpeak has no voice {voice_name!r}")
            while pointer.value is not None:
                ipa = lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, _PHONEMES_IPA)
                # the pointer stops one character into the next clause: the clause ended just before it
                end = len(raw) if pointer.value is None else pointer.value - start - 1
                last = raw[:end].rstrip()[-1:].decode("ascii", "replace")
                clauses.append(((ipa or b"").decode("utf-8"), last if last in ".,?!:;" else ""))
        return clauses

    def synthesize(self, text: str, voice: Voice, prosody: Prosody | None = None) -> Audio:
        """Render `text` in `voice` with `prosody`; returns mono float32 audio."""
        prosody = prosody or Prosody()
        params = {
            "rate": round(voice.rate * prosody.rate_factor),
            "volume": round(voice.volume * prosody.volume_factor),
            "pitch": round(voice.pitch + prosody.pitch_delta),
            "range": round(voice.pitch_range + prosody.range_delta),
        }
        params = {
            k: int(np.clip(v, 0, 450 if k == "rate" else 200 if k == "volume" else 100)) for k, v in params.items()
        }
        ssml = _to_ssml(text, prosody.pause_ms)
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise ValueError(f"eSpeak has no voice {voice.name!r}; see `opens2s-data voices list`")
            for key, value in params.items():
                self._lib.espeak_SetParameter(_PARAM[key], value, 0)
            self._chunks = []
            payload = ssml.encode("utf-8") + b"\0"
            err = self._lib.espeak_Synth(payload, len(payload), 0, 0, 0, _CHARS_UTF8 | _SSML, None, None)
            self._lib.espeak_Synchronize()
            if err != 0:
                raise RuntimeError(f"eSpeak synthesis failed with error {err}")
            pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        return Audio(samples=pcm.astype(np.float32) / 32768.0, sample_rate=self.sample_rate)


def _to_ssml(text: str, pause_ms: int) -> str:
    """Wrap plain text in SSML, with an optional pause between sentences."""
    body = escape(text, quote=False)
    if pause_ms > 0:
        for mark in (". ", "! ", "? ", ", "):
            body = body.replace(mark, f"{mark.strip()} <break time='{pause_ms}ms'/> ")
    return f"<speak>{body}</speak>"
