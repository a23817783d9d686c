"""A local stand-in for the Hugging Face hub's file API (what `huggingface_hub` calls to list and
download a repository), on a real socket: point `HF_ENDPOINT` at `base_url`.

Serves `GET /api/models/{repo}/tree/{revision}` (the file listing), `GET /api/models/{repo}`
(+ `/revision/{revision}`) and `HEAD`/`GET /{repo}/resolve/{revision}/{path}` with the headers the
client needs (`X-Repo-Commit`, `ETag`, `Content-Length`). A repo may require a token.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class StandInHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.tokens: dict[str, str] = {}  # repo -> the token it requires
        self.downloads: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    def add_repo(self, repo_id: str, files: dict[str, bytes], token: str | None = None) -> None:
        self.repos[repo_id] = files
        if token:
            self.tokens[repo_id] = token

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StandInHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    # -- routing ------------------------------------------------------------------------------
    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(h.path).path)
        if path.startswith("/api/models/"):
            rest = path[len("/api/models/") :]
            if "/tree/" in rest:
                repo, _, _ = rest.partition("/tree/")
                return self._json(h, repo, lambda files: self._tree(files), body)
            repo = rest.split("/revision/")[0]
            return self._json(h, repo, lambda files: self._info(repo, files), body)
        if "/resolve/" in path:
            repo, _, tail = path.lstrip("/").partition("/resolve/")
            _revision, _, name = tail.partition("/")
            return self._file(h, repo, name, body)
        self._send(h, 404, b'{"error": "not found"}', body)

    def _authorized(self, h: BaseHTTPRequestHandler, repo: str) -> bool:
        token = self.tokens.get(repo)
        return token is None or h.headers.get("authorization") == f"Bearer {token}"

    def _json(self, h: BaseHTTPRequestHandler, repo: str, make: Any, body: bool) -> None:
        files = self.repos.get(repo)
        if files is None or not self._authorized(h, repo):
            h.send_response(404 if files is None else 401)
            h.send_header("X-Error-Code", "RepoNotFound")
            h.send_header("Content-Length", "2")
            h.end_headers()
            if body:
                h.wfile.write(b"{}")
            return
        self._send(h, 200, json.dumps(make(files)).encode(), body)

    def _tree(self, files: dict[str, bytes]) -> list[dict[str, Any]]:
        return [
            {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            for name, data in sorted(files.items())
        ]

    def _info(self, repo: str, files: dict[str, bytes]) -> dict[str, Any]:
        return {"id": repo, "modelId": repo, "sha": COMMIT, "siblings": [{"rfilename": n} for n in files]}

    def _file(self, h: BaseHTTPRequestHandler, repo: str, name: str, body: bool) -> None:
        files = self.repos.get(repo)
        if files is None or name not in files or not self._authorized(h, repo):
            h.send_response(404 if files is None or name not in files else 401)
            h.send_header("X-Error-Code", "EntryNotFound" if files is not None else "RepoNotFound")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        data = files[name]
        if body:
            self.downloads.append(f"{repo}/{name}")
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _send(self, h: BaseHTTPRequestHandler, status: int, data: bytes, body: bool) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)
