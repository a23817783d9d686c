"""A local stand-in for a fal-compatible queue API on a real socket (aiohttp in a thread).

`POST /{model...}` queues a request and answers its request id and URLs; `GET .../status`
answers IN_QUEUE, then IN_PROGRESS, then COMPLETED (one step per poll); `GET .../requests/{id}`
answers the result; `PUT .../cancel` cancels. The result is fal's shape for the model:
`audio {url, content_type, file_name, file_size}` for text-to-audio, `images [...]` otherwise.
A prompt of "refuse" gets fal's 422; requests need `Authorization: Key <key>` when a key is set.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from aiohttp import web

from tests.support.aio_server import ThreadedAiohttpServer


class StandInFal(ThreadedAiohttpServer):
    def __init__(self, key: str | None = None) -> None:
        super().__init__()
        self.key = key
        self.submitted: list[dict[str, Any]] = []
        self.cancelled: list[str] = []
        self.polls: dict[str, int] = {}
        self.hold = threading.Event()  # while cleared, requests stay IN_PROGRESS
        self.hold.set()
        self._requests: dict[str, dict[str, Any]] = {}

    @property
    def base_url(self) -> str:
        return self.root_url  # fal's queue has no /v1

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._route)

    async def _route(self, request: web.Request) -> web.Response:
        if self.key and request.headers.get("Authorization") != f"Key {self.key}":
            return web.json_response({"detail": "Unauthorized"}, status=401)
        path = request.path.strip("/")
        if "/requests/" not in path and request.method == "POST":
            return await self._submit(path, await request.json())
        _app, _, rest = path.partition("/requests/")
        request_id, _, action = rest.partition("/")
        entry = self._requests.get(request_id)
        if entry is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        if action == "status":
            return web.json_response(self._status(request_id, entry))
        if action == "cancel" and request.method == "PUT":
            if entry["status"] == "COMPLETED":
                return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
            entry["status"] = "CANCELLED"
            self.cancelled.append(request_id)
            return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)
        if entry["status"] != "COMPLETED":
            return web.json_response({"detail": "Request is still in progress"}, status=400)
        return web.json_response(entry["result"])

    async def _submit(self, model: str, payload: dict[str, Any]) -> web.Response:
        if payload.get("prompt") == "refuse":
            return web.json_response({"detail": [{"loc": ["body", "prompt"], "msg": "refused"}]}, status=422)
        request_id = str(uuid.uuid4())
        self.submitted.append({"model": model, "input": payload, "request_id": request_id})
        app = "/".join(model.split("/")[:2])  # fal's URLs name the app, not the endpoint's subpath
        self._requests[request_id] = {"status": "IN_QUEUE", "result": self._result(model, payload)}
        base = f"{self.base_url}/{app}/requests/{request_id}"
        return web.json_response(
            {
                "request_id": request_id,
                "response_url": base,
                "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel",
                "queue_position": 0,
            }
        )

    def _status(self, request_id: str, entry: dict[str, Any]) -> dict[str, Any]:
        self.polls[request_id] = self.polls.get(request_id, 0) + 1
        if entry["status"] == "IN_QUEUE":
            entry["status"] = "IN_PROGRESS"
        elif entry["status"] == "IN_PROGRESS" and self.hold.is_set():
            entry["status"] = "COMPLETED"
        return {"status": entry["status"], "queue_position": 0}

    def _result(self, model: str, payload: dict[str, Any]) -> dict[str, Any]:
        if "audio" in model:
            seconds = float(payload.get("seconds_total", 30))
            return {
                "audio": {
                    "url": f"{self.base_url}/files/{uuid.uuid4().hex}.wav",
                    "content_type": "audio/wav",
                    "file_name": "audio.wav",
                    "file_size": int(seconds * 88_200),
                }
            }
        count = int(payload.get("num_images", 1))
        return {
            "images": [
                {
                    "url": f"{self.base_url}/files/{uuid.uuid4().hex}.png",
                    "width": 1024,
                    "height": 1024,
                    "content_type": "image/png",
                }
                for _ in range(count)
            ],
            "seed": 42,
        }
