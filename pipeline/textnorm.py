"""Text normalisation for word error rate: case, punctuation, numbers and contractions."""

from __future__ import annotations

import re

_CONTRACTIONS = {
    "won't": "will not",
    "can't": "cannot",
    "shan't": "shall not",
    "ain't": "is not",
    "let's": "let us",
    "it's": "it is",
    "that's": "that is",
    "what's": "what is",
    "there's": "there is",
    "here's": "here is",
    "he's": "he is",
    "she's": "she is",
    "who's": "who is",
    "where's": "where is",
    "n't": " not",
    "'re": " are",
    "'ve": " have",
    "'ll": " will",
    "'d": " would",
    "'m": " am",
}
_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SPELLING = {"cannot": "can not", "okay": "ok", "alright": "all right"}


def number_to_words(n: int) -> str:
    """Spell a non-negative integer below one million in English words."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))
    if n < 1_000_000:
        rest = n % 1000
        return number_to_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + number_to_words(rest))
    return " ".join(_ONES[int(d)] for d in str(n))


def normalize(text: str) -> str:
    """Lower-case, expand contractions, spell numbers, drop punctuation, squeeze spaces."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    for short, full in _CONTRACTIONS.items():
        text = text.replace(short, full)
    text = re.sub(r"(\d),(\d{3})", r"\1\2", text)
    text = re.sub(r"\d+", lambda m: " " + number_to_words(int(m.group())) + " ", text)
    text = re.sub(r"[^a-z' ]+", " ", text).replace("'", "")
    words = [_SPELLING.get(word, word) for word in text.split()]
    return " ".join(" ".join(words).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER (jiwer) of `hypothesis` against `reference`, both normalised; 1.0 for an empty reference."""
    import jiwer

    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp if hyp else "<empty>"))
