"""Two ASGI wrappers in front of the API: a request-body size cap and HEAD on GET routes.

Both work below FastAPI, so they hold for every route (static files included) and an
oversized body is refused before any of it is parsed or tokenized: without a cap a 5 MB
prompt was read, tokenized (2.6 M tokens, seconds of CPU) and only then refused.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .protocol import ErrorBody, ErrorDetail

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_REQUEST_BYTES = 2 * 1024 * 1024
"""2 MiB: ~500k tokens of text, far more than any member's context window holds."""

DRAIN_BYTES = 64 * 1024 * 1024
"""How much of a refused body is read (and dropped) so that the client, still sending,
gets the 413 instead of a connection reset; past this the connection is just closed."""


async def _drain(receive: Receive, seen: int = 0) -> bool:
    """Read and drop the rest of a request body; False if it is longer than :data:`DRAIN_BYTES`."""
    while seen <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return False
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return False


async def _send_error(send: Send, status: int, message: str, code: str, *, close: bool = False) -> None:
    body = json.dumps(
        ErrorBody(error=ErrorDetail(message=message, type="invalid_request_error", param=None, code=code)).model_dump()
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Answer 413 in OpenAI's error schema to a body over ``max_bytes``.

    A declared ``Content-Length`` over the cap is refused without parsing a byte; a body
    sent without one (chunked) is refused as soon as it passes the cap.  Either way the
    rest of the body is read and dropped first (up to :data:`DRAIN_BYTES`), because a
    client still sending would otherwise see a connection reset instead of the answer.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: str) -> str:
        return f"the request body is {size} bytes; this server accepts at most {self.max_bytes:,} (--max-request-bytes)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _send_error(send, 400, f"invalid Content-Length header {declared[:40]!r}", "invalid_request", close=True)
                return
            if length > self.max_bytes:
                drained = length <= DRAIN_BYTES and await _drain(receive)
                await _send_error(send, 413, self._too_large(f"{length:,}"), "request_too_large", close=not drained)
                return
            await self.app(scope, receive, send)
            return
        # No declared length: read the body here, up to the cap, and hand it on in one piece.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                drained = not message.get("more_body", False) or await _drain(receive, size)
                await _send_error(
                    send, 413, self._too_large(f"more than {self.max_bytes:,}"), "request_too_large", close=not drained
                )
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class HeadAsGet:
    """Serve ``HEAD`` as the ``GET`` of the same path, without the body (RFC 9110 9.3.2).

    FastAPI registers GET routes for GET only, so ``HEAD /health`` (what uptime checkers
    and load balancers send) got 405; this answers HEAD on every GET route at once.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
