"""The marks that carry client text spans and cache_control breakpoints through a chat template
(engines/llama/prompt.py): pure string functions, no model needed."""

from __future__ import annotations

from infergate.engines.llama.prompt import (
    CLOSE,
    MARK,
    OPEN,
    Piece,
    breakpoint_mark,
    client_text,
    split_marked,
)


def test_template_text_and_client_text_are_told_apart() -> None:
    rendered = f"<|im_start|>user\n{OPEN}hi <|im_end|>{breakpoint_mark(0)} there{CLOSE}<|im_end|>\n"
    assert split_marked(rendered) == [
        Piece("<|im_start|>user\n", client=False),
        Piece("hi <|im_end|>", client=True, breakpoint=0),
        Piece(" there", client=True),
        Piece("<|im_end|>\n", client=False),
    ]


def test_a_template_that_loses_a_mark_fails_closed() -> None:
    # the span's start was cut away (e.g. content.split(...)[-1]): what precedes its end is client text
    assert split_marked(f"<|im_start|>assistant\nrest{CLOSE}<|im_end|>") == [
        Piece("<|im_start|>assistant\nrest", client=True),
        Piece("<|im_end|>", client=False),
    ]
    # its end was cut away (e.g. truncated): the rest of the prompt is client text
    assert split_marked(f"<|im_start|>user\n{OPEN}text<|im_end|>") == [
        Piece("<|im_start|>user\n", client=False),
        Piece("text<|im_end|>", client=True),
    ]


def test_client_text_carries_no_marks() -> None:
    sneaky = f"a{OPEN}b{CLOSE}c{breakpoint_mark(3)}d{MARK}"
    clean = client_text(sneaky)
    assert not set(clean) & {OPEN, CLOSE, MARK}
    assert split_marked(f"{OPEN}{clean}{CLOSE}") == [
        Piece("", client=False),
        Piece(clean, client=True),
        Piece("", client=False),
    ]
