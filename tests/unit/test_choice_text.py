"""ChoiceText: UTF-8 across token pieces, stop sequences never leaked, logprobs with their text."""

from __future__ import annotations

from infergate.engines.llama.text import ChoiceText


def test_a_character_split_across_tokens_is_sent_whole() -> None:
    out = ChoiceText([], logprobs=False)
    snowman = "☃".encode()
    assert not out.add(b"a" + snowman[:1])
    assert out.take() == ("a", None)
    assert not out.add(snowman[1:])
    assert out.take() == ("☃", None)
    assert out.take() is None


def test_stop_sequence_is_cut_and_a_possible_start_is_held_back() -> None:
    out = ChoiceText(["END"], logprobs=False)
    assert not out.add(b"Hello E")
    assert out.take() == ("Hello ", None)  # "E" may begin "END"
    assert not out.add(b"x")
    assert out.take() == ("Ex", None)
    assert not out.add(b" EN")
    assert out.take() == (" ", None)
    assert out.add(b"D and more")  # "END" completed across tokens
    assert out.text == "Hello Ex "
    assert out.take(final=True) is None


def test_held_tail_goes_out_when_final() -> None:
    out = ChoiceText(["END"], logprobs=False)
    out.add(b"The E")
    assert out.take() == ("The ", None)
    assert out.take(final=True) == ("E", None)


def test_logprobs_travel_with_their_text() -> None:
    out = ChoiceText(["XY"], logprobs=True)
    out.add(b"a", {"token": "a"})
    out.add(b"X", {"token": "X"})
    assert out.take() == ("a", [{"token": "a"}])
    out.add(b"b", {"token": "b"})
    assert out.take() == ("Xb", [{"token": "X"}, {"token": "b"}])
