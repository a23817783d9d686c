"""Prometheus metrics and the structured (JSON lines) access log."""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter(
    "infergate_requests_total", "HTTP requests answered", ["route", "method", "status"], registry=REGISTRY
)
LATENCY = Histogram(
    "infergate_request_duration_seconds",
    "Time to the last byte of the answer",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
TOKENS = Counter("infergate_tokens_total", "Tokens billed", ["model", "type"], registry=REGISTRY)
UPSTREAM_ERRORS = Counter(
    "infergate_upstream_errors_total", "Failures of model backends", ["model", "kind"], registry=REGISTRY
)
LEDGER_PENDING = Counter("infergate_ledger_rows_total", "Ledger rows recorded", registry=REGISTRY)
PROMPT_CACHE_BYTES = Gauge(
    "infergate_prompt_cache_bytes", "Saved prompt KV states", ["model", "where"], registry=REGISTRY
)
PROMPT_CACHE_ENTRIES = Gauge(
    "infergate_prompt_cache_entries", "Saved prompt prefixes", ["model"], registry=REGISTRY
)


def watch_prompt_cache(model: str, stats: Callable[[], Any]) -> None:
    """Export a KVStateStore's size, read when /metrics is scraped."""
    PROMPT_CACHE_BYTES.labels(model, "memory").set_function(lambda: stats().bytes_in_memory)
    PROMPT_CACHE_BYTES.labels(model, "disk").set_function(lambda: stats().bytes_on_disk)
    PROMPT_CACHE_ENTRIES.labels(model).set_function(lambda: stats().entries)


def metrics_payload() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


_request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def count_request(route: str, method: str, status: int, seconds: float) -> None:
    """`labels()` builds and locks on every call; the children are cached per label set."""
    children = _request_children.get((route, method, status))
    if children is None:
        children = (REQUESTS.labels(route, method, str(status)), LATENCY.labels(route))
        _request_children[(route, method, status)] = children
    children[0].inc()
    children[1].observe(seconds)


_token_children: dict[tuple[str, str], Any] = {}


def count_billed_tokens(model: str, **counts: int) -> None:
    """Add to infergate_tokens_total{model, type} for each nonzero count (type = the keyword)."""
    for kind, value in counts.items():
        if value:
            child = _token_children.get((model, kind))
            if child is None:
                child = _token_children[(model, kind)] = TOKENS.labels(model, kind)
            child.inc(value)


class AccessLog:
    """JSON-lines access log on stderr, written in batches by a thread of its own.

    The request path only appends a line to a list. `flush()` (every 200 ms from the app, at
    256 pending lines, and at shutdown) hands the batch to the writer thread, so a slow or
    blocked stderr (a full pipe, a paused log collector) never stalls the event loop.
    """

    def __init__(self) -> None:
        self.enabled = False
        self.stream: Any = sys.stderr
        self._pending: list[bytes] = []
        self._batches: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    def write(self, fields: dict[str, Any]) -> None:
        fields["ts"] = round(time.time(), 3)
        self._pending.append(orjson.dumps(fields))
        if len(self._pending) >= 256:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(target=self._write_forever, name="access-log", daemon=True)
            self._writer.start()
        self._batches.put(lines)

    def close(self) -> None:
        """Flush and wait until everything pending is written (at shutdown)."""
        self.flush()
        if self._writer is not None and self._writer.is_alive():
            self._batches.put(None)
            self._writer.join(timeout=5)
        self._writer = None

    def _write_forever(self) -> None:
        while (lines := self._batches.get()) is not None:
            try:
                self.stream.write(b"\n".join(lines).decode() + "\n")
                self.stream.flush()
            except Exception:  # logging must never break serving
                pass


ACCESS_LOG = AccessLog()


def setup_logging(access: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ACCESS_LOG.enabled = access


def log_access(fields: dict[str, Any]) -> None:
    if ACCESS_LOG.enabled:
        ACCESS_LOG.write(fields)


# The ledger writer (storage/ledger_writer.py): rows waiting for the database, and the fallbacks.
LEDGER_PENDING_ROWS = Gauge(
    "infergate_ledger_pending_rows", "Ledger rows waiting in memory to be written", registry=REGISTRY
)
LEDGER_SPILLED_ROWS = Counter(
    "infergate_ledger_spilled_rows_total",
    "Ledger rows written to the spill file because the database was unreachable",
    registry=REGISTRY,
)
LEDGER_WRITE_FAILURES = Counter(
    "infergate_ledger_write_failures_total",
    "Failed ledger write attempts (each one retried)",
    registry=REGISTRY,
)
