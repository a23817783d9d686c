"""`infergate keys limits UUID [--rpm N] [--tpm N] [--concurrency N] [--budget USD] [--clear]`.

Like the other `keys` commands it works on the database directly, then announces the change (epoch
file, Redis) so running servers apply it at once. Without options it only prints the key's state.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from infergate.errors import InvalidRequest
from infergate.limits.model import KeyLimits, LimitsStatus, month_of, month_start_ms
from infergate.limits.store import LimitsRepository
from infergate.storage.keys import KeyRepository

OPTIONS = {"rpm": "rpm", "tpm": "tpm", "concurrency": "max_concurrency", "budget": "monthly_budget_usd"}


# argparse prints a type function's ArgumentTypeError as is ("argument --rpm: ..."); any other
# error becomes "invalid <function name> value", which names our internals
def _count(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'none', got {text!r}") from None


def _usd(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an amount in USD or 'none', got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uuid")
    # SUPPRESS: an option left out is absent from args, so `--rpm none` (remove that limit) differs
    unset = argparse.SUPPRESS
    parser.add_argument(
        "--rpm", type=_count, default=unset, metavar="N", help="requests per minute ('none': no limit)"
    )
    parser.add_argument(
        "--tpm", type=_count, default=unset, metavar="N", help="tokens per minute ('none': no limit)"
    )
    parser.add_argument(
        "--concurrency", type=_count, default=unset, metavar="N", help="requests in flight at once"
    )
    parser.add_argument(
        "--budget", type=_usd, default=unset, metavar="USD", help="monthly budget in USD ('none': none)"
    )
    parser.add_argument(
        "--clear", action="store_true", help="remove every limit (before applying the others)"
    )


def run(
    args: argparse.Namespace, engine: Engine, redis_url: str | None, announce: Callable[[], None]
) -> dict[str, Any]:
    """Change what the options say (the rest stays), print-ready status of the key afterwards."""
    KeyRepository(engine).get(args.uuid)  # NotFound for an unknown or deleted key
    repo = LimitsRepository(engine)
    current = repo.get(args.uuid)
    given = {field: getattr(args, option) for option, field in OPTIONS.items() if hasattr(args, option)}
    if args.clear or given:
        base = KeyLimits() if args.clear else current
        try:
            limits = dataclasses.replace(base, **given)
        except InvalidRequest as exc:  # name the option, not the API field
            option = next((o for o, f in OPTIONS.items() if f == exc.param), exc.param)
            why = exc.message.split(": ", 1)[-1].replace("or null", "or none")  # the CLI's word for no limit
            raise InvalidRequest(f"--{option}: {why}", param=exc.param) from None
        repo.set(args.uuid, limits)
        announce()
        current = limits
    month = month_of(time.time())
    spent = repo.month_cost_nano(args.uuid, month_start_ms(month))
    reserved = 0
    if redis_url:
        from infergate.limits.redis_store import reserved_nano_sync

        try:
            reserved = reserved_nano_sync(redis_url, args.uuid)
        except Exception:  # the CLI still answers with Redis down; reservations are then per process
            reserved = 0
    return LimitsStatus(current, spent, reserved).to_dict()
