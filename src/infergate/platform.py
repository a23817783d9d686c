"""The running platform: catalog, database, keys, ledger and engines, started and stopped once.

api/ modules reach it as `request.app.state.platform`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypeVar

from sqlalchemy import text

from infergate.auth import KeyCache, RevocationEpoch
from infergate.catalog import SMOLLM2_ID, Catalog, ModelSpec
from infergate.config import Settings
from infergate.engines.base import ChatEngine, Engine
from infergate.engines.registry import BackendMissing, build_engine
from infergate.errors import InvalidRequest, NotFound, Unavailable
from infergate.jobs.queue import JobQueue, QueueSettings
from infergate.jobs.worker import Worker, WorkerSettings, start_worker
from infergate.limits import KeyLimiter
from infergate.metering import Charge, Meter
from infergate.responses.background import sweep_forever as sweep_background_responses
from infergate.responses.mcp import default_settings as mcp_settings
from infergate.storage.db import open_database
from infergate.storage.keys import KeyRepository
from infergate.storage.ledger import LedgerRepository
from infergate.storage.ledger_writer import LedgerWriter
from infergate.storage.media import MediaStore
from infergate.storage.responses import ResponseStore, StoreSettings
from infergate.tokens import warm_up as warm_up_tokenizer

log = logging.getLogger("infergate")
E = TypeVar("E", bound=Engine)
KIND_NAMES = {"tts": "text-to-speech (tts)"}


def _a(noun: str) -> str:
    """The noun with its indefinite article: "an image", "a chat"."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


class Platform:
    def __init__(self, settings: Settings, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or settings.load_catalog()
        self.db = open_database(settings.database_url)
        self.keys = KeyRepository(self.db)
        self.key_cache = KeyCache(self.keys, RevocationEpoch(settings.data_dir), settings.key_cache_ttl)
        self.limits = KeyLimiter(self.db, settings.redis_url, self.key_cache, settings.key_cache_ttl)
        self.ledger_repo = LedgerRepository(self.db)
        self.ledger = LedgerWriter(
            self.ledger_repo.insert,
            settings.data_dir / "ledger-spill.jsonl",
            flush_interval=settings.ledger_flush_ms / 1000,
        )
        self.mcp_settings = mcp_settings()  # INFERGATE_MCP_*: a bad value stops the start
        self.jobs = JobQueue(self.db, QueueSettings.from_env())  # durable async jobs (jobs/)
        self.worker_settings = WorkerSettings.from_env()  # `infergate worker` overrides it
        self.job_worker: Worker | None = None
        self.responses = ResponseStore(self.db, StoreSettings.from_env())  # stored responses, conversations
        self.media = MediaStore.from_env(settings.data_dir)  # generated files at signed URLs
        self.engines: dict[str, Engine] = {}
        self.engine_errors: dict[str, str] = {}
        self.draining = False

    async def start(self) -> None:
        # the estimating tokenizer loads in the background: no request waits on it
        self._tokenizer_warm_up = asyncio.create_task(asyncio.to_thread(warm_up_tokenizer))
        await self.ledger.start()
        await self.media.start()
        await self.responses.start()
        # background responses whose job died are marked failed, never left in_progress
        self._background_sweeper = asyncio.create_task(sweep_background_responses(self))
        await self.key_cache.start_fanout(self.settings.redis_url)
        await self.limits.start()
        for spec in self.catalog:
            try:
                engine = build_engine(spec, self.settings.data_dir)
            except BackendMissing as exc:
                self.engine_errors[spec.id] = str(exc)
                log.warning("model %s cannot serve: %s", spec.id, exc)  # e.g. a missing extra, with the hint
                continue
            self.engines[spec.id] = engine
        results = await asyncio.gather(*(e.start() for e in self.engines.values()), return_exceptions=True)
        for (model_id, _engine), result in zip(list(self.engines.items()), results, strict=True):
            if isinstance(result, BaseException):
                log.error("model %s failed to start: %s", model_id, result)
                self.engine_errors[model_id] = f"failed to start: {result}"
                del self.engines[model_id]
        # last: a worker claims jobs only once the engines they need are up
        self.job_worker = await start_worker(self, self.worker_settings)

    async def close(self) -> None:
        self.draining = True
        if self.job_worker is not None:  # running jobs finish (or are handed back) before engines close
            await self.job_worker.stop()
        await asyncio.gather(*(e.close() for e in self.engines.values()), return_exceptions=True)
        self._background_sweeper.cancel()
        await self.responses.close()
        await self.media.close()
        await self.limits.close()
        await self.ledger.close()
        await self.key_cache.close()
        self.db.dispose()

    def engine_for(self, model_id: str, kind: str, engine_type: type[E]) -> tuple[ModelSpec, E]:
        """The model's spec and engine for an endpoint serving `kind` models: 404 for an unknown
        model, 400 for one of another kind, 503 (with the reason) for one that cannot serve."""
        spec = self.catalog.get(model_id)
        if spec is None:
            raise NotFound(
                f"The model '{model_id}' does not exist; GET /v1/models lists the available ones.",
                param="model",
                code="model_not_found",
            )
        if spec.kind != kind:
            wanted = _a(KIND_NAMES.get(kind, kind))
            raise InvalidRequest(
                f"The model '{model_id}' is {_a(spec.kind)} model, not {wanted} model.",
                param="model",
                code="model_not_supported",
            )
        # engines are keyed by the real id: model_id may be one of the spec's aliases
        engine = self.engines.get(spec.id)
        if not isinstance(engine, engine_type):
            raise Unavailable(
                f"The model '{model_id}' cannot serve: {self.engine_errors.get(spec.id, 'not loaded')}",
                code="model_unavailable",
            )
        return spec, engine

    def chat_engine(self, model_id: str) -> tuple[ModelSpec, ChatEngine]:
        return self.engine_for(model_id, "chat", ChatEngine)

    def meter(self, charge: Charge, **options: Any) -> Meter:
        """The request's bill (see metering.py): settle it on every way out."""
        return Meter(self.ledger, charge, **options)

    async def admit(
        self,
        charge: Charge,
        *,
        max_output_tokens: int | None = None,
        extra_cost_nano: int = 0,
        **options: Any,
    ) -> Meter:
        """Admit a request and open its bill: every endpoint that does billable work starts here.

        This is where the key's limits (rate, concurrency, budget) are checked and the request's
        largest possible cost reserved; `Meter.settle` settles the reservation to the real cost.
        `max_output_tokens` bounds the output (None: the model's context bounds it); `extra_cost_nano`
        is the largest cost priced per unit rather than per token (images, seconds of audio, see
        `usage.unit_cost_nano`). A refused request raises RateLimited (429) before any work; no
        request object is needed (job workers call it too).
        """
        meter = self.meter(charge, **options)
        await self.limits.admit(meter, max_output_tokens, extra_cost_nano)
        return meter

    def readiness(self) -> str | None:
        try:
            with self.db.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            return f"database unreachable: {exc}"
        if self.draining:
            return "shutting down"
        default = self.catalog.get(SMOLLM2_ID)
        if default is not None:
            engine = self.engines.get(SMOLLM2_ID)
            if engine is None:
                return f"{SMOLLM2_ID}: {self.engine_errors.get(SMOLLM2_ID, 'not loaded')}"
            reason = engine.readiness()
            if reason:
                return f"{SMOLLM2_ID}: {reason}"
        return None
