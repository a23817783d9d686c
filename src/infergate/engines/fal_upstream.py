"""A fal-compatible queue upstream: async-invoke jobs of any kind (image, tts, audio) forwarded to
`POST {base_url}/{model}`, then polled at the `status_url` it answers, read at `response_url`
and cancelled at `cancel_url` (fal's queue protocol). The key comes from the environment
variable the catalog names (`api_key_env`), sent as `Authorization: Key ...`.

The engine keeps no state between calls: a job records the submitted request (`FalRequest`)
so a retried job polls the same upstream request instead of paying for a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from infergate.catalog import ModelSpec
from infergate.engines.base import Engine
from infergate.errors import InvalidRequest, UpstreamError

POLL_START, POLL_MAX = 0.2, 5.0  # seconds between status polls: doubling, capped


@dataclass(frozen=True)
class FalRequest:
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FalRequest:
        return cls(**{k: str(raw[k]) for k in ("request_id", "status_url", "response_url", "cancel_url")})


class FalQueueEngine(Engine):
    def __init__(self, spec: ModelSpec, data_dir: Path | None = None) -> None:
        super().__init__(spec, data_dir)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.spec.timeout, connect=self.spec.connect_timeout)
        self._session = aiohttp.ClientSession(timeout=timeout, headers=self._headers())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.spec.api_key_env or "", "")
        return {"Authorization": f"Key {key}"} if key else {}

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "engine not started"
        return self._session

    async def submit(self, payload: dict[str, Any]) -> FalRequest:
        url = f"{(self.spec.base_url or '').rstrip('/')}/{self.spec.upstream_name}"
        answer = await self._call("POST", url, json=payload)
        try:
            return FalRequest.from_dict(answer)
        except (KeyError, TypeError):
            raise UpstreamError(f"the fal upstream's submit answer lacks request URLs: {answer}") from None

    async def wait(self, request: FalRequest) -> dict[str, Any]:
        """Poll until the request completes, then return its result (fal's output object)."""
        delay = POLL_START
        while True:
            status = await self._call("GET", request.status_url)
            if status.get("status") == "COMPLETED":
                return await self._call("GET", request.response_url)
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    async def cancel(self, request: FalRequest) -> None:
        with contextlib.suppress(UpstreamError):  # already completed or gone: nothing left to stop
            await self._call("PUT", request.cancel_url)

    async def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            async with self.session.request(method, url, **kwargs) as response:
                body = await response.json(content_type=None)
                if response.status == 422:  # fal's validation error: the job's input is wrong
                    raise InvalidRequest(f"the model refused the input: {_detail(body)}", param="input")
                if response.status >= 400:
                    raise UpstreamError(f"fal upstream answered {response.status}: {_detail(body)}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise UpstreamError(f"fal upstream unreachable or invalid: {exc!r}") from None
        if not isinstance(body, dict):
            raise UpstreamError("fal upstream answered something that is not a JSON object")
        return body


def _detail(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("error") or body)[:500]
    return str(body)[:500]
