"""The model catalog TOML: every mistake is reported with its entry (position and id) and field, prices
convert exactly, and `infergate serve` refuses a bad catalog before binding its port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from infergate.catalog import SMOLLM2_ID, Catalog, CatalogError, ModelSpec
from infergate.usage import Usage

INFERGATE = str(Path(sys.executable).parent / "infergate")
UPSTREAM = 'backend = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'


def write(folder: Path, text: str, name: str = "catalog.toml") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def load(tmp_path: Path, text: str) -> Catalog:
    return Catalog.load(write(tmp_path, text), tmp_path / "data")


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(CatalogError) as info:
        load(tmp_path, text)
    return str(info.value)


def entry(model_id: str, body: str = UPSTREAM) -> str:
    return f'\n[[models]]\nid = "{model_id}"\n{body}'


# --- errors name the entry and the field -------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        pytest.param(UPSTREAM + "tempreature = 0.5\n", "tempreature", "Extra inputs", id="unknown-field"),
        pytest.param(UPSTREAM + 'input_price = "cheap"\n', "input_price", "number", id="price-not-a-number"),
        pytest.param(
            UPSTREAM + "input_price = -1.0\n",
            "input_price",
            "greater than or equal to 0",
            id="negative-price",
        ),
        pytest.param(
            UPSTREAM + "n_ctx = 64\n", "n_ctx", "greater than or equal to 128", id="n_ctx-too-small"
        ),
        pytest.param(UPSTREAM + "timeout = 0\n", "timeout", "greater than 0", id="zero-timeout"),
        pytest.param(UPSTREAM + "name = 5\n", "name", "string", id="name-not-a-string"),
        pytest.param(UPSTREAM + 'created = "yesterday"\n', "created", "integer", id="created-not-an-integer"),
        pytest.param('backend = "llama_cpp"\npath = 5\n', "path", "string", id="path-not-a-string"),
        pytest.param('backend = "vllm"\n', "backend", "'llama_cpp', 'openai'", id="unknown-backend"),
        pytest.param(UPSTREAM + 'kind = "video"\n', "kind", "'chat'", id="unknown-kind"),
        pytest.param(
            'backend = "openai"\nbase_url = "127.0.0.1:9/v1"\n',
            "base_url",
            "pattern",
            id="base_url-without-scheme",
        ),
        pytest.param("", "backend", "Field required", id="no-backend"),
    ],
)
def test_invalid_field_names_entry_and_field(tmp_path: Path, body: str, field: str, words: str) -> None:
    text = "builtins = false\n" + entry("fine") + entry("broken", body)
    message = error_of(tmp_path, text)
    assert message.startswith("catalog entry 2 (id 'broken'): "), message
    assert f"field '{field}'" in message, message
    assert words in message, message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(UPSTREAM + 'input_price = "0.5"\n', "input_price", id="price-as-string"),
        pytest.param(UPSTREAM + 'threads = "4"\n', "threads", id="threads-as-string"),
        pytest.param(
            UPSTREAM + 'supports_cache_control = "yes"\n', "supports_cache_control", id="bool-as-string"
        ),
        pytest.param(UPSTREAM + "timeout = true\n", "timeout", id="timeout-as-bool"),
    ],
)
def test_wrong_toml_type_is_an_error_not_a_coercion(tmp_path: Path, body: str, field: str) -> None:
    """TOML has typed values: a quoted number or "yes" for a boolean is a typo to report, not to guess."""
    message = error_of(tmp_path, "builtins = false\n" + entry("typed", body))
    assert message.startswith("catalog entry 1 (id 'typed'): "), message
    assert f"field '{field}'" in message, message


def test_entry_without_id_is_named_by_position(tmp_path: Path) -> None:
    message = error_of(tmp_path, entry("one") + "\n[[models]]\n" + UPSTREAM)
    assert message.startswith("catalog entry 2: "), message
    assert "field 'id'" in message and "Field required" in message, message


def test_invalid_id_names_the_id_field(tmp_path: Path) -> None:
    message = error_of(tmp_path, entry("has space"))
    assert message.startswith("catalog entry 1 (id 'has space'): field 'id'"), message


def test_openai_backend_needs_base_url(tmp_path: Path) -> None:
    message = error_of(tmp_path, entry("fine") + entry("no-url", 'backend = "openai"\n'))
    assert message.startswith("catalog entry 2 (id 'no-url'): "), message
    assert "base_url" in message and "openai" in message, message


def test_duplicate_id(tmp_path: Path) -> None:
    message = error_of(tmp_path, entry("twice") + entry("other") + entry("twice"))
    assert message == "catalog entry 3 (id 'twice'): field 'id': duplicate id 'twice'"


def test_missing_api_key_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERGATE_TEST_UPSTREAM_KEY", raising=False)
    text = entry("keyed", UPSTREAM + 'api_key_env = "INFERGATE_TEST_UPSTREAM_KEY"\n')
    message = error_of(tmp_path, text)
    assert message.startswith("catalog entry 1 (id 'keyed'): field 'api_key_env'"), message
    assert "INFERGATE_TEST_UPSTREAM_KEY" in message and "not set" in message, message
    monkeypatch.setenv("INFERGATE_TEST_UPSTREAM_KEY", "sk-upstream")
    assert load(tmp_path, text).get("keyed").api_key_env == "INFERGATE_TEST_UPSTREAM_KEY"


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[[models]]\nid = "a"\nbackend = "openai\n')
    with pytest.raises(CatalogError) as info:
        Catalog.load(path, tmp_path)
    message = str(info.value)
    assert path in message and "invalid TOML" in message and "line 3" in message, message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="file not found"):
        Catalog.load(str(tmp_path / "nope.toml"), tmp_path)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param("modles = []\n", "unknown top-level key(s): modles", id="unknown-top-level-key"),
        pytest.param('builtins = "no"\n', "'builtins' must be true or false", id="builtins-not-bool"),
        pytest.param('[models]\nid = "a"\n', "array of tables", id="models-as-a-table"),
        pytest.param("models = [1]\n", "catalog entry 1: must be a table", id="entry-not-a-table"),
    ],
)
def test_catalog_shape_errors(tmp_path: Path, text: str, words: str) -> None:
    assert words in error_of(tmp_path, text)


# --- built-ins, replacement, paths --------------------------------------------------------------


def test_builtins_are_served_alongside_entries(tmp_path: Path) -> None:
    catalog = load(tmp_path, entry("mine"))
    assert [m.id for m in catalog] == [SMOLLM2_ID, "piper-en-us-joe", "espeak-tts", "mine"]


def test_no_catalog_is_the_builtins(tmp_path: Path) -> None:
    catalog = Catalog.load(None, tmp_path)
    assert [m.id for m in catalog] == [SMOLLM2_ID, "piper-en-us-joe", "espeak-tts"]  # speech: the extra
    assert catalog.get(SMOLLM2_ID).backend == "llama_cpp" and catalog.get("espeak-tts").kind == "tts"
    assert catalog.get("piper-en-us-joe").backend == "piper"


def test_builtins_false_turns_them_off(tmp_path: Path) -> None:
    catalog = load(tmp_path, "builtins = false\n" + entry("only"))
    assert [m.id for m in catalog] == ["only"]
    assert catalog.get(SMOLLM2_ID) is None


def test_same_id_replaces_a_builtin(tmp_path: Path) -> None:
    text = entry(SMOLLM2_ID, UPSTREAM + "input_price = 0.5\n")
    catalog = load(tmp_path, text)
    replaced = catalog.get(SMOLLM2_ID)
    assert replaced.backend == "openai" and replaced.input_price == 0.5
    assert [m.id for m in catalog].count(SMOLLM2_ID) == 1 and len(catalog) == 3


def test_relative_path_is_relative_to_the_catalog_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not where the catalog is
    text = (
        entry("rel", 'backend = "llama_cpp"\npath = "models/x.gguf"\n')
        + entry("abs", 'backend = "llama_cpp"\npath = "/srv/m.gguf"\n')
        + entry("home", 'backend = "llama_cpp"\npath = "~/m.gguf"\n')
    )
    catalog = Catalog.load(write(folder, text), tmp_path / "data")
    assert catalog.get("rel").path == str(folder.resolve() / "models" / "x.gguf")
    assert catalog.get("abs").path == "/srv/m.gguf"
    assert catalog.get("home").path == os.path.expanduser("~/m.gguf")


def test_relative_catalog_path_resolves_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", entry("rel", 'backend = "llama_cpp"\npath = "x.gguf"\n'))
    monkeypatch.chdir(tmp_path)
    catalog = Catalog.load("conf/catalog.toml", tmp_path / "data")
    assert catalog.get("rel").path == str(tmp_path.resolve() / "conf" / "x.gguf")


# --- prices -------------------------------------------------------------------------------------


def test_price_nano_converts_usd_per_million_tokens() -> None:
    spec = ModelSpec(id="p", backend="llama_cpp", input_price=0.10, output_price=0.30)
    assert spec.price_nano("input") == 100  # $0.10 / 1M tokens = 100 nano-USD per token
    assert spec.price_nano("output") == 300
    assert ModelSpec(id="p", backend="llama_cpp", input_price=3.0).price_nano("input") == 3000
    assert ModelSpec(id="p", backend="llama_cpp", input_price=0.0).price_nano("input") == 0


def test_float_prices_convert_without_binary_error() -> None:
    # 0.1 + 0.2 style errors would turn 0.3 into 299.99999999999997 -> 299 when truncated
    for price in (0.3, 0.7, 1.1, 2.675, 0.29):
        spec = ModelSpec(id="p", backend="llama_cpp", input_price=price)
        assert spec.price_nano("input") == int(Decimal(str(price)) * 1000), price


def test_default_cache_prices_are_anthropics_multipliers() -> None:
    spec = ModelSpec(id="p", backend="llama_cpp", input_price=3.0, output_price=15.0)
    assert spec.price_nano("cache_write_5m") == 3750  # 1.25x
    assert spec.price_nano("cache_write_1h") == 6000  # 2x
    assert spec.price_nano("cache_read") == 300  # 0.1x


def test_explicit_cache_prices_win_even_when_zero() -> None:
    spec = ModelSpec(
        id="p",
        backend="llama_cpp",
        input_price=3.0,
        cache_write_5m_price=1.0,
        cache_write_1h_price=0.0,
        cache_read_price=0.5,
    )
    assert spec.price_nano("cache_write_5m") == 1000
    assert spec.price_nano("cache_write_1h") == 0
    assert spec.price_nano("cache_read") == 500


def test_cache_prices_from_the_catalog(tmp_path: Path) -> None:
    catalog = load(tmp_path, entry("c", UPSTREAM + "input_price = 1.0\ncache_read_price = 0.05\n"))
    spec = catalog.get("c")
    assert (spec.price_nano("cache_read"), spec.price_nano("cache_write_5m")) == (50, 1250)


def test_cost_of_a_request() -> None:
    spec = ModelSpec(id="p", backend="llama_cpp", input_price=3.0, output_price=15.0)
    usage = Usage(input_tokens=1000, output_tokens=100, cache_read_tokens=400, cache_write_5m_tokens=200)
    # 400 uncached input, 100 output, 400 read, 200 written (5m)
    assert usage.cost_nano_usd(spec) == 400 * 3000 + 100 * 15000 + 400 * 300 + 200 * 3750


@pytest.mark.parametrize(
    ("input_price", "tokens", "expected_nano"),
    [
        (0.075, 1_000_000, 7_500_000),  # 1M cache-read tokens at 0.1 x $0.075/1M = $0.0075
        (0.0375, 1_000_000, 3_750_000),
    ],
)
def test_sub_nano_prices_are_billed_exactly(input_price: float, tokens: int, expected_nano: int) -> None:
    spec = ModelSpec(id="p", backend="llama_cpp", input_price=input_price)
    assert Usage(input_tokens=tokens, cache_read_tokens=tokens).cost_nano_usd(spec) == expected_nano


# --- `infergate serve` with a bad catalog --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(tmp_path: Path, catalog_path: str) -> tuple[subprocess.CompletedProcess[str], int, float]:
    port = free_port()
    env = {
        **os.environ,
        "INFERGATE_DATA_DIR": str(tmp_path / "data"),
        "INFERGATE_CONFIG": catalog_path,
        "INFERGATE_ADMIN_TOKEN": "t",
    }
    started = time.monotonic()
    result = subprocess.run(
        [INFERGATE, "serve", "--port", str(port)], env=env, capture_output=True, text=True, timeout=60
    )
    return result, port, time.monotonic() - started


def assert_port_unbound(port: int) -> None:
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "something listens on the port"


def test_serve_with_a_bad_entry_exits_2_naming_entry_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, entry("good") + entry("bad", UPSTREAM + "tempreature = 0.5\n"))
    result, port, _ = serve(tmp_path, path)
    assert result.returncode == 2, result.stderr
    assert "catalog entry 2 (id 'bad')" in result.stderr and "field 'tempreature'" in result.stderr, (
        result.stderr
    )
    assert "serving" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert_port_unbound(port)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param('[[models]]\nid = "a"\nbackend = "openai\n', "invalid TOML", id="invalid-toml"),
        pytest.param(entry("x") + entry("x"), "duplicate id 'x'", id="duplicate"),
    ],
)
def test_serve_with_a_bad_catalog_exits_2(tmp_path: Path, text: str, words: str) -> None:
    result, port, _ = serve(tmp_path, write(tmp_path, text))
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert_port_unbound(port)


def test_serve_with_a_missing_catalog_exits_2(tmp_path: Path) -> None:
    result, port, _ = serve(tmp_path, str(tmp_path / "missing.toml"))
    assert result.returncode == 2, result.stderr
    assert "file not found" in result.stderr, result.stderr
    assert_port_unbound(port)
