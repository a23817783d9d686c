"""Per-sequence token sampling for the llama.cpp engine: sampler chains, grammars, logprobs.

Grammars are GBNF strings built on the request path (so a bad json_schema is a 400 before any
queueing); the llama.cpp sampler objects are built later on the model's worker thread.
"""

from __future__ import annotations

import ctypes
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as L
import numpy as np
from llama_cpp.llama_grammar import json_schema_to_gbnf

from infergate.errors import InvalidRequest

# JSON with bounded whitespace: an unbounded `ws` lets a small model loop on blanks forever.
# Strings exclude raw control characters, which strict JSON parsers reject.
JSON_OBJECT_GBNF = r"""
root ::= object
value ::= object | array | string | number | ("true" | "false" | "null")
object ::= "{" ws ( member ( "," ws member )* )? "}"
member ::= string ws ":" ws value ws
array ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\""
number ::= "-"? ([0-9] | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?
ws ::= | " " | "\n" [ ]{0,8}
"""

_CHAR_RULE = re.compile(r'^char ::= \[\^"\\\\\]', re.MULTILINE)
_SAFE_CHAR = r'char ::= [^"\\\x7F\x00-\x1F]'
_MAX_ENUM_RANGE = 1000  # integer ranges up to this size become enums so bounds are enforced

# Auto tool choice: constrain only once the reply starts like a tool call (text otherwise).
TOOL_TRIGGER_PATTERNS = [r"^\s*(\{)[\s\S]*$", r"^\s*<tool_call>\s*(\{)[\s\S]*$"]


def _bound_integers(node: Any) -> Any:
    """Rewrite small bounded integer ranges as enums: the GBNF converter ignores min/max."""
    if isinstance(node, list):
        return [_bound_integers(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _bound_integers(v) for k, v in node.items()}
    if out.get("type") == "integer" and "enum" not in out and "const" not in out:
        lo, hi = out.get("minimum"), out.get("maximum")
        if isinstance(out.get("exclusiveMinimum"), int | float) and not isinstance(lo, int | float):
            lo = math.floor(out["exclusiveMinimum"]) + 1
        if isinstance(out.get("exclusiveMaximum"), int | float) and not isinstance(hi, int | float):
            hi = math.ceil(out["exclusiveMaximum"]) - 1
        if isinstance(lo, int | float) and isinstance(hi, int | float) and 0 <= hi - lo <= _MAX_ENUM_RANGE:
            return {"enum": list(range(math.ceil(lo), math.floor(hi) + 1))}
    return out


def schema_grammar(schema: Any, param: str = "response_format.json_schema.schema") -> str:
    """GBNF for a JSON schema; an unusable schema is the client's error (400)."""
    if schema is None:
        return JSON_OBJECT_GBNF
    if not isinstance(schema, dict):
        raise InvalidRequest("the JSON schema must be an object", param=param)
    try:
        import jsonschema_rs  # optional: validates the schema itself against its metaschema

        jsonschema_rs.meta.validate(schema)
    except ImportError:
        pass
    except Exception as exc:
        raise InvalidRequest(f"invalid JSON schema: {str(exc).splitlines()[0]}", param=param) from None
    try:
        gbnf = json_schema_to_gbnf(json.dumps(_bound_integers(schema)))
    except Exception as exc:  # the converter asserts on what it cannot express
        raise InvalidRequest(f"unsupported JSON schema: {exc}", param=param) from None
    return _CHAR_RULE.sub(lambda _m: _SAFE_CHAR, gbnf)


def tool_call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """Schema of one call {"name": ..., "arguments": {...}} to any of `tools`."""
    alternatives = []
    for tool in tools:
        params = tool.get("parameters") or {"type": "object"}
        alternatives.append(
            {
                "type": "object",
                "properties": {"name": {"const": tool["name"]}, "arguments": params},
                "required": ["name", "arguments"],
            }
        )
    return alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}


@dataclass
class SamplingOptions:
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: str | None = None
    lazy_triggers: list[str] | None = None  # grammar applies only after one of these matches
    logprobs: bool = False
    top_logprobs: int = 0


_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


class SeqSampler:
    """The sampler of one sequence. Owns llama.cpp sampler objects; use on the worker thread only.

    With a grammar, the token is first sampled unconstrained and only checked against the grammar;
    the costly full-vocabulary grammar pass runs only when that token is rejected (as llama-server).
    """

    def __init__(self, vocab: Any, n_vocab: int, opts: SamplingOptions, penalty_window: int) -> None:
        self.n_vocab = n_vocab
        self.chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        self.grammar: Any = None
        try:
            self._build(vocab, opts, penalty_window)
        except BaseException:
            self.close()
            raise
        self._cur: np.ndarray | None = None
        self._one = np.zeros(1, dtype=_TOKEN_DATA)

    def _add(self, sampler: Any) -> None:
        L.llama_sampler_chain_add(self.chain, sampler)

    def _build(self, vocab: Any, opts: SamplingOptions, penalty_window: int) -> None:
        if opts.logit_bias:
            bad = [t for t in opts.logit_bias if not 0 <= t < self.n_vocab]
            if bad:
                raise InvalidRequest(f"logit_bias: token id {bad[0]} is out of range", param="logit_bias")
            biases = (L.llama_logit_bias * len(opts.logit_bias))()
            for i, (tok, bias) in enumerate(opts.logit_bias.items()):
                biases[i].token, biases[i].bias = tok, bias
            self._add(L.llama_sampler_init_logit_bias(self.n_vocab, len(opts.logit_bias), biases))
        if opts.presence_penalty or opts.frequency_penalty:
            self._add(
                L.llama_sampler_init_penalties(
                    self.n_vocab, penalty_window, 1.0, opts.frequency_penalty, opts.presence_penalty
                )
            )
        if opts.temperature <= 0:
            self._add(L.llama_sampler_init_greedy())
        else:
            self._add(L.llama_sampler_init_temp(opts.temperature))
            if opts.top_p < 1.0:
                self._add(L.llama_sampler_init_top_p(max(opts.top_p, 1e-6), 1))
            seed = L.LLAMA_DEFAULT_SEED if opts.seed is None else opts.seed & 0xFFFFFFFF
            self._add(L.llama_sampler_init_dist(seed))
        if opts.grammar is not None:
            gbnf, root = opts.grammar.encode(), b"root"
            if opts.lazy_triggers:
                pats = (ctypes.c_char_p * len(opts.lazy_triggers))(*[p.encode() for p in opts.lazy_triggers])
                self.grammar = L.llama_sampler_init_grammar_lazy_patterns(
                    vocab, gbnf, root, pats, len(opts.lazy_triggers), None, 0
                )
            else:
                self.grammar = L.llama_sampler_init_grammar(vocab, gbnf, root)
            if not self.grammar:
                raise InvalidRequest(
                    "the requested output format could not be compiled to a grammar", param="response_format"
                )

    def sample(self, ctx: Any, idx: int) -> int:
        if self.grammar is None:  # fast path: all in C, accepts the token too
            return int(L.llama_sampler_sample(self.chain, ctx, idx))
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, idx), shape=(self.n_vocab,))
        token = self._apply(self.chain, logits, None)
        one = self._one
        one["id"][0], one["logit"][0], one["p"][0] = token, 1.0, 0.0
        arr = L.llama_token_data_array(
            data=one.ctypes.data_as(L.llama_token_data_p), size=1, selected=-1, sorted=False
        )
        L.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        if not math.isfinite(float(one["logit"][0])):  # rejected: constrain the full distribution
            token = self._apply(self.chain, logits, self.grammar)
        L.llama_sampler_accept(self.grammar, token)
        L.llama_sampler_accept(self.chain, token)
        return token

    def _apply(self, chain: Any, logits: np.ndarray, grammar: Any) -> int:
        if self._cur is None:
            self._cur = np.zeros(self.n_vocab, dtype=_TOKEN_DATA)
        cur = self._cur
        cur["id"] = np.arange(self.n_vocab, dtype=np.intc)
        cur["logit"] = logits
        cur["p"] = 0.0
        arr = L.llama_token_data_array(
            data=cur.ctypes.data_as(L.llama_token_data_p), size=self.n_vocab, selected=-1, sorted=False
        )
        if grammar is not None:
            L.llama_sampler_apply(grammar, ctypes.byref(arr))
        L.llama_sampler_apply(chain, ctypes.byref(arr))
        # samplers may re-point `data` (e.g. after sorting); read through the struct
        return int(arr.data[arr.selected].id)

    def close(self) -> None:
        if self.chain:
            L.llama_sampler_free(self.chain)
            self.chain = None
        if self.grammar:
            L.llama_sampler_free(self.grammar)
            self.grammar = None


def token_logprobs(
    ctx: Any, idx: int, n_vocab: int, token: int, top: int
) -> tuple[float, list[tuple[int, float]]]:
    """log P(token) under the model's raw distribution, and the `top` most likely alternatives."""
    logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, idx), shape=(n_vocab,)).astype(np.float64)
    peak = logits.max()
    logz = peak + math.log(float(np.exp(logits - peak).sum()))
    alts: list[tuple[int, float]] = []
    if top > 0:
        best = np.argpartition(-logits, top)[:top]
        best = best[np.argsort(-logits[best], kind="stable")]
        alts = [(int(t), float(logits[t] - logz)) for t in best]
    return float(logits[token] - logz), alts
