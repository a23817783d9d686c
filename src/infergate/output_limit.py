"""A requested output limit no local model can give: 400 naming the field, before any work.

An embedded llama.cpp model can never write more tokens than its context holds (`n_ctx`, the
prompt included), so a larger `max_tokens` / `max_completion_tokens` / `max_output_tokens` is a
client error, as OpenAI answers for values above a model's limit. Upstream models are left to
their upstream, which knows its own limits.
"""

from __future__ import annotations

from infergate.catalog import ModelSpec
from infergate.errors import InvalidRequest


def check_output_limit(spec: ModelSpec, field: str, value: int | None) -> None:
    if value is None or spec.backend != "llama_cpp" or value <= spec.n_ctx:
        return
    raise InvalidRequest(
        f"{field} is too large: {value}. The model '{spec.id}' has a context of {spec.n_ctx} tokens "
        f"(prompt included), so {field} can be at most {spec.n_ctx}.",
        param=field,
        code="invalid_value",
    )
