"""Read models of the panel: keys with last use and this month's spend, model status.

Spend comes from reports.build_report, the code behind GET /v2/gen-ai/usage, so the panel and
the API always agree. "Last use" is the key's latest ledger row: every request that reached a
model is billed there, so this costs nothing on the hot path (one indexed MAX per key).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from infergate.catalog import ModelSpec
from infergate.limits.store import LimitsRepository
from infergate.platform import Platform
from infergate.reports import build_report
from infergate.storage.db import usage_records
from infergate.storage.keys import KeyRecord


def month_start(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def all_keys(platform: Platform) -> list[KeyRecord]:
    records: list[KeyRecord] = []
    page = 1
    while True:
        batch, total = platform.keys.list(page, 200)
        records += batch
        if len(records) >= total or not batch:
            return records
        page += 1


def last_used(platform: Platform, uuids: list[str]) -> dict[str, int]:
    """Epoch ms of each key's latest billed request (keys never used are absent)."""
    if not uuids:
        return {}
    u = usage_records
    stmt = (
        select(u.c.key_uuid, func.max(u.c.created_ms)).where(u.c.key_uuid.in_(uuids)).group_by(u.c.key_uuid)
    )
    with platform.db.connect() as conn:
        return {k: int(ms) for k, ms in conn.execute(stmt).all()}


def key_rows(platform: Platform) -> list[dict[str, Any]]:
    keys = all_keys(platform)
    spend = {
        row["group"]: row["cost_usd"]
        for row in build_report(platform.ledger_repo, month_start().isoformat(), None, "key")["usage"]
    }
    used = last_used(platform, [k.uuid for k in keys])
    limits = LimitsRepository(platform.db).all()  # one row per limited key
    return [
        {
            "uuid": k.uuid,
            "name": k.name,
            "prefix": k.secret_prefix,
            "created_at": k.created_at,
            "created_by": k.created_by,
            "last_used_ms": used.get(k.uuid),
            "month_cost_usd": spend.get(k.uuid, 0.0),
            "limits": _limits_text(limits.get(k.uuid)),
        }
        for k in keys
    ]


def _limits_text(limits: Any) -> str:
    """A key's limits in a few words ("60 rpm · $5.00 a month"); "none" when it has none."""
    if limits is None:
        return "none"
    parts = [
        f"{limits.rpm} requests/min" if limits.rpm is not None else "",
        f"{limits.tpm} tokens/min" if limits.tpm is not None else "",
        f"{limits.max_concurrency} at once" if limits.max_concurrency is not None else "",
        f"${limits.monthly_budget_usd:,.2f} a month" if limits.monthly_budget_usd is not None else "",
    ]
    return " · ".join(p for p in parts if p) or "none"


def _local_load(engine: Any) -> dict[str, Any] | None:
    """Slots and queue of a local llama.cpp model (its scheduler's counters), else None."""
    scheduler = getattr(engine, "scheduler", None)
    if scheduler is None or not hasattr(scheduler, "parallel"):
        return None
    return {
        "state": getattr(scheduler, "state", "?"),
        "slots": scheduler.parallel,
        "busy": getattr(scheduler, "busy_sequences", 0),
        "queued": getattr(scheduler, "_queued", 0),
        "max_queue": scheduler.spec.max_queue,
    }


def model_rows(platform: Platform) -> list[dict[str, Any]]:
    rows = []
    for spec in platform.catalog:
        engine = platform.engines.get(spec.id)
        load = _local_load(engine) if engine is not None else None
        if engine is None:
            status, why = "failing", platform.engine_errors.get(spec.id, "no engine")
        else:
            reason = engine.readiness()
            if reason:
                status, why = "failing", reason
            elif load and load["state"] in ("unloaded", "not started"):
                status, why = "unloaded", "loads again on its next request"
            else:
                status, why = "loaded", ""
        if status == "failing":
            load = None  # its slots and queue mean nothing while it cannot serve
        rows.append({"spec": spec, "status": status, "why": why, "load": load, "unit": _unit(spec)})
    return rows


def _unit(spec: ModelSpec) -> str:
    return "1M characters" if spec.kind == "tts" else "1M tokens"


def servable_ids(platform: Platform, kind: str) -> list[str]:
    return [
        spec.id
        for spec in platform.catalog
        if spec.kind == kind
        and (engine := platform.engines.get(spec.id)) is not None
        and engine.readiness() is None
    ]
