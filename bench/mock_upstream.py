#!/usr/bin/env python3
"""A minimal, fast OpenAI-compatible upstream for gateway benchmarks (HTTP/1.1 keep-alive).

POST .../chat/completions answers a fixed chat.completion (or a short SSE stream when the body
asks for "stream": true); GET .../models lists one model; GET .../health answers {"status":"ok"}.
Request bodies may be sent with content-length or chunked transfer-encoding.
Usage: mock_upstream.py PORT [--no-usage]   (uvloop when importable; ~40-55k req/s on one core)
--no-usage: answers carry no "usage" (the gateway must count the tokens itself; health_under_load.py).
"""

import asyncio
import json
import sys

MODEL = "mock-model"
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the mock."},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
    }
).encode()
MODELS = json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1700000000, "owned_by": "bench"}]}
).encode()


def sse() -> bytes:
    def chunk(delta, finish=None, usage=None):
        c = {
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": MODEL,
            "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage:
            c["usage"] = usage
        return b"data: " + json.dumps(c).encode() + b"\n\n"

    parts = [chunk({"role": "assistant", "content": ""})]
    parts += [chunk({"content": w}) for w in ("Hello", " from", " the", " mock", ".")]
    usage = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
    parts += [chunk({}, "stop"), chunk(None, usage=usage), b"data: [DONE]\n\n"]
    return b"".join(parts)


def response(body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: "
        + ctype
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: keep-alive\r\n\r\n"
        + body
    )


R_COMPLETION, R_MODELS = response(COMPLETION), response(MODELS)
R_STREAM = response(sse(), b"text/event-stream")
if "--no-usage" in sys.argv[2:]:
    R_COMPLETION = response(
        json.dumps({k: v for k, v in json.loads(COMPLETION).items() if k != "usage"}).encode()
    )
    R_STREAM = response(
        b"".join(p + b"\n\n" for p in sse().split(b"\n\n") if p and b'"usage"' not in p), b"text/event-stream"
    )
R_HEALTH = response(b'{"status":"ok"}')


def header_value(head: bytes, name: bytes) -> bytes | None:
    """Value of a header in a lower-cased request head, or None."""
    i = head.find(b"\r\n" + name + b":")
    if i < 0:
        return None
    start = i + len(name) + 3
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else None].strip()


def dechunk(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at buf[pos]; (body, end offset) or None when incomplete."""
    body = b""
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos:eol].split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)  # no trailers expected: "0\r\n\r\n"
            return (body, end + 4) if end >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        body += buf[pos : pos + size]
        pos += size + 2


class Upstream(asyncio.Protocol):
    def connection_made(self, transport):
        self.t, self.buf = transport, b""

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            if header_value(head, b"transfer-encoding") == b"chunked":
                decoded = dechunk(self.buf, end + 4)
                if decoded is None:
                    return
                body, stop = decoded
            else:
                length = int(header_value(head, b"content-length") or 0)
                if len(self.buf) < end + 4 + length:
                    return
                body, stop = self.buf[end + 4 : end + 4 + length], end + 4 + length
            self.buf = self.buf[stop:]
            if head.startswith(b"get"):
                path = head.split(b" ", 2)[1] if b" " in head else b""
                self.t.write(R_HEALTH if path.endswith(b"/health") else R_MODELS)
            elif b'"stream":true' in body.replace(b" ", b""):
                self.t.write(R_STREAM)
            else:
                self.t.write(R_COMPLETION)


async def main(port: int):
    server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 9999))
