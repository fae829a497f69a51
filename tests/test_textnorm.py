"""WER text normalisation: case, punctuation, numbers and contractions."""

from __future__ import annotations

import pytest

from pipeline.textnorm import normalize, number_to_words, word_error_rate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("I can't go; it's late.", "i can not go it is late"),
        ("We'll see what you've done", "we will see what you have done"),
        ("I won't", "i will not"),
        ("He paid 1,250 dollars in 2024", "he paid one thousand two hundred fifty dollars in two thousand twenty four"),
        ("It\u2019s OK, alright?", "it is ok all right"),
        ("  spaced   out  ", "spaced out"),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_number_to_words() -> None:
    assert number_to_words(0) == "zero"
    assert number_to_words(15) == "fifteen"
    assert number_to_words(40) == "forty"
    assert number_to_words(101) == "one hundred one"
    assert number_to_words(999_999).startswith("nine hundred ninety nine thousand")


def test_wer_ignores_formatting_but_not_words() -> None:
    assert word_error_rate("I can't believe it's 5 o'clock!", "i cannot believe it is five oclock") == 0.0
    assert word_error_rate("the cat sat on the mat", "the cat sat on a mat") == pytest.approx(1 / 6)
    assert word_error_rate("hello there", "") == 1.0
    assert word_error_rate("", "") == 0.0
