"""Facts from the product document (the seed) that several tests check against."""

from __future__ import annotations

# The usage object of a chat completion that used cache_control, exactly these keys.
SEED_CACHE_USAGE_FIELDS = frozenset(
    {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cache_created_input_tokens",
        "cache_creation",
        "cache_read_input_tokens",
    }
)
