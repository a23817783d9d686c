"""Usage: reading an upstream's usage object (every style) and rendering it by one rule.

The rule: the seed's cache fields when the request used cache_control (the engine sets
`usage.cache_control` from the request), OpenAI's shape otherwise, never the upstream's style.
"""

from __future__ import annotations

from typing import Any

import pytest

from infergate.catalog import ModelSpec
from infergate.usage import MAX_TOKENS, Usage

SPEC = ModelSpec(
    id="m", backend="openai", base_url="http://127.0.0.1:9/v1", input_price=1.0, output_price=2.0
)

# llama.cpp's server reusing 646 of 647 prompt tokens (OpenAI's shape: cached tokens inside prompt_tokens)
LLAMA_SERVER = {
    "prompt_tokens": 647,
    "completion_tokens": 3,
    "total_tokens": 650,
    "prompt_tokens_details": {"cached_tokens": 646},
}
# the same reuse, told Anthropic's way (prompt_tokens is only the uncached rest)
ANTHROPIC_READ = {
    "prompt_tokens": 1,
    "completion_tokens": 3,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 646,
}
ANTHROPIC_WRITE = {
    "prompt_tokens": 5,
    "completion_tokens": 7,
    "cache_creation_input_tokens": 40,
    "cache_creation": {"ephemeral_5m_input_tokens": 25, "ephemeral_1h_input_tokens": 15},
    "cache_read_input_tokens": 30,
}
# DigitalOcean's seed shape (another infergate, or DigitalOcean itself, as the upstream)
SEED = {
    "prompt_tokens": 18,
    "completion_tokens": 4,
    "total_tokens": 22,
    "cache_created_input_tokens": 1005,
    "cache_creation": {"ephemeral_5m_input_tokens": 1005, "ephemeral_1h_input_tokens": 0},
    "cache_read_input_tokens": 0,
}


def read(raw: Any, cache_control: bool = False) -> Usage:
    usage = Usage.from_openai(raw)
    assert usage is not None, raw
    usage.cache_control = cache_control  # what an engine does when the request used cache_control
    return usage


def test_plain_openai_usage() -> None:
    usage = read({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (10, 5, 0)
    assert usage.to_chat() == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    assert usage.cost_nano_usd(SPEC) == 10 * 1000 + 5 * 2000


def test_llama_server_automatic_reuse_is_rendered_in_openais_shape() -> None:
    chat = read(LLAMA_SERVER).to_chat()
    assert chat == {
        "prompt_tokens": 647,
        "completion_tokens": 3,
        "total_tokens": 650,
        "prompt_tokens_details": {"cached_tokens": 646},
    }


def test_anthropic_style_without_cache_control_is_rendered_like_openais() -> None:
    """The upstream's style never decides the shape: the same reuse reads the same to the client."""
    assert read(ANTHROPIC_READ).to_chat() == read(LLAMA_SERVER).to_chat()
    assert read(ANTHROPIC_READ).cost_nano_usd(SPEC) == read(LLAMA_SERVER).cost_nano_usd(SPEC)


def test_from_openai_never_picks_the_seed_shape_itself() -> None:
    for raw in (LLAMA_SERVER, ANTHROPIC_READ, ANTHROPIC_WRITE, SEED):
        usage = Usage.from_openai(raw)
        assert usage is not None and usage.cache_control is False
        assert "cache_read_input_tokens" not in usage.to_chat()


@pytest.mark.parametrize("raw", [LLAMA_SERVER, ANTHROPIC_READ], ids=["openai-style", "anthropic-style"])
def test_request_with_cache_control_gets_the_seed_shape_from_any_style(raw: dict[str, Any]) -> None:
    assert read(raw, cache_control=True).to_chat() == {
        "prompt_tokens": 1,
        "completion_tokens": 3,
        "total_tokens": 4,
        "cache_created_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "cache_read_input_tokens": 646,
    }


def test_anthropic_cache_writes_are_counted_and_billed_by_class() -> None:
    usage = read(ANTHROPIC_WRITE)
    assert usage.input_tokens == 5 + 40 + 30 and usage.uncached_input_tokens == 5
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens, usage.cache_read_tokens) == (25, 15, 30)
    # 1 USD in / 2 USD out per 1M; writes 1.25x (5m) and 2x (1h), reads 0.1x: nano-USD per token
    cost = 5 * 1000 + 7 * 2000 + 25 * 1250 + 15 * 2000 + 30 * 100
    assert usage.cost_nano_usd(SPEC) == cost
    openai_shape = usage.to_chat()
    assert openai_shape["prompt_tokens"] == 75 and openai_shape["prompt_tokens_details"] == {
        "cached_tokens": 30
    }
    usage.cache_control = True
    assert usage.to_chat()["prompt_tokens"] == 5
    assert usage.to_chat()["cache_creation"] == {
        "ephemeral_5m_input_tokens": 25,
        "ephemeral_1h_input_tokens": 15,
    }
    assert usage.cost_nano_usd(SPEC) == cost  # the rendering never changes the bill


def test_seed_shape_round_trips() -> None:
    usage = read(SEED, cache_control=True)
    assert usage.cache_write_5m_tokens == 1005 and usage.input_tokens == 18 + 1005
    assert usage.to_chat() == SEED


def test_created_total_without_breakdown_is_a_5m_write() -> None:
    usage = read({"prompt_tokens": 2, "completion_tokens": 1, "cache_created_input_tokens": 9})
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens, usage.input_tokens) == (9, 0, 11)


def test_responses_style_names_are_read() -> None:
    usage = read({"input_tokens": 20, "output_tokens": 4, "input_tokens_details": {"cached_tokens": 16}})
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (20, 4, 16)


def test_cached_tokens_above_prompt_tokens_are_capped() -> None:
    usage = read({"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 50}})
    assert usage.cache_read_tokens == 5 and usage.uncached_input_tokens == 0


def test_completion_details_pass_through_and_give_reasoning_tokens() -> None:
    details = {"reasoning_tokens": 3, "accepted_prediction_tokens": 0}
    usage = read({"prompt_tokens": 5, "completion_tokens": 4, "completion_tokens_details": details})
    assert usage.reasoning_tokens == 3
    assert usage.to_chat()["completion_tokens_details"] == details


@pytest.mark.parametrize("bad", [5, [1, 2], "many", None, True, 1.5], ids=repr)
@pytest.mark.parametrize(
    "field", ["prompt_tokens_details", "input_tokens_details", "completion_tokens_details", "cache_creation"]
)
def test_details_that_are_not_objects_are_ignored_and_the_counts_kept(field: str, bad: Any) -> None:
    usage = read({"prompt_tokens": 12, "completion_tokens": 3, field: bad})
    assert (usage.input_tokens, usage.output_tokens) == (12, 3)
    assert usage.cache_read_tokens == usage.cache_write_5m_tokens == usage.cache_write_1h_tokens == 0
    chat = usage.to_chat()
    assert chat["prompt_tokens"] == 12 and "completion_tokens_details" not in chat


@pytest.mark.parametrize(
    "field", ["cached_tokens", "reasoning_tokens"], ids=["cached_tokens", "reasoning_tokens"]
)
@pytest.mark.parametrize("bad", ["7", 7.0, -7, None, [7], MAX_TOKENS + 1], ids=repr)
def test_bad_counts_inside_details_are_zero(field: str, bad: Any) -> None:
    where = "prompt_tokens_details" if field == "cached_tokens" else "completion_tokens_details"
    usage = read({"prompt_tokens": 12, "completion_tokens": 3, where: {field: bad}})
    assert usage.cache_read_tokens == usage.reasoning_tokens == 0 and usage.input_tokens == 12


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        "usage",
        5,
        {},
        {"prompt_tokens": 5},
        {"completion_tokens": 5},
        {"prompt_tokens": "5", "completion_tokens": 1},
        {"prompt_tokens": 5.0, "completion_tokens": 1},
        {"prompt_tokens": -1, "completion_tokens": 1},
        {"prompt_tokens": True, "completion_tokens": 1},
        {"prompt_tokens": None, "completion_tokens": 1},
        {"prompt_tokens": 1, "completion_tokens": [1]},
        {"prompt_tokens": MAX_TOKENS + 1, "completion_tokens": 1},
        {"prompt_tokens": 10**30, "completion_tokens": 1},
        # each count fits, their sum (the whole prompt) is past any context window
        {"prompt_tokens": MAX_TOKENS, "completion_tokens": 1, "cache_read_input_tokens": MAX_TOKENS},
    ],
    ids=repr,
)
def test_unusable_usage_is_none_so_the_caller_estimates(raw: Any) -> None:
    assert Usage.from_openai(raw) is None
