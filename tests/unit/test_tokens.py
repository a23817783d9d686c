"""The estimating tokenizer: exact up to a size, sampled and scaled past it."""

from __future__ import annotations

import random

from infergate import tokens


def _text(chars: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    words = ["the", "gateway", "bills", "every", "token", "exactly", "once,", "ledger", "Paris", "42", "é"]
    out: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(words)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:chars]


def test_texts_up_to_the_threshold_are_counted_exactly() -> None:
    assert tokens.count_tokens("") == 0
    assert tokens.count_tokens("Hello world") == 2
    text = _text(tokens.SAMPLED_ABOVE_CHARS)
    assert tokens.count_tokens(text) == tokens._count(tokens._load(), text)


def test_large_texts_are_estimated_within_a_few_percent() -> None:
    text = _text(4 * tokens.SAMPLED_ABOVE_CHARS)
    exact = tokens._count(tokens._load(), text)
    assert abs(tokens.count_tokens(text) - exact) / exact < 0.03
