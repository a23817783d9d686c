"""Prometheus metrics and the structured (JSON lines) access log."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

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


def metrics_payload() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class JsonLineHandler(logging.Handler):
    """Writes each access record as one JSON object per line (cheap: orjson, no formatter)."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__()
        self.stream = stream or sys.stderr

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(orjson.dumps(record.msg).decode() + "\n")
        except Exception:  # logging must never break a request
            self.handleError(record)


access_log = logging.getLogger("infergate.access")
access_log.propagate = False


def setup_logging(access: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if access and not access_log.handlers:
        access_log.addHandler(JsonLineHandler())
    access_log.setLevel(logging.INFO if access else logging.CRITICAL)


def log_access(fields: dict[str, Any]) -> None:
    if access_log.isEnabledFor(logging.INFO):
        fields["ts"] = round(time.time(), 3)
        access_log.info(fields)
