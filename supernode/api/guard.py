"""The edge of every HTTP request: the body is read, bounded and parsed here, before any
route, dependency or authentication sees it.

- over ``max_bytes``: 413, whether the length was announced (Content-Length) or the body
  came chunked;
- a request with a body (POST, PUT, PATCH, DELETE) must carry one JSON document within
  the bounds of ``crypto.wire_json`` (depth, Unicode, integer range): else 400 with the
  reason; what the routes read is that parsed value (``read_json``), so a
  body is parsed once and never by an unbounded decoder.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from supernode.crypto.wire_json import JSONBoundsError, loads
from supernode.errors import BadRequest

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
STATE_KEY = "json_body"


def reply(status: int, code: str, detail: Any, reason: str | None = None) -> JSONResponse:
    body = {"error": code, "detail": detail}
    if reason:
        body["reason"] = reason
    return JSONResponse(body, status_code=status)


def _refusal(scope: Scope, status: int, code: str, detail: str) -> JSONResponse:
    """The error in the shape the route's clients read: OpenAI's under /v1/."""
    if scope["path"].startswith("/v1/"):
        kind = "invalid_request_error"
        body = {"error": {"message": detail, "type": kind, "code": code, "param": None}}
        return JSONResponse(body, status_code=status)
    return reply(status, code, detail, "bad_json" if status == 400 else None)


class BodyGuard:
    def __init__(self, app: ASGIApp, *, max_bytes: int, max_depth: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    refusal = _refusal(scope, 400, "bad_request", "Content-Length is not a number")
                    await refusal(scope, receive, send)
                    return
                if int(value) > self.max_bytes:
                    await self._too_large(scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before its body was complete: no answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and scope["method"] in BODY_METHODS:
            try:
                scope.setdefault("state", {})[STATE_KEY] = loads(body, self.max_depth)
            except JSONBoundsError as exc:
                msg = f"body: {exc.detail}"
                await _refusal(scope, 400, "bad_request", msg)(scope, receive, send)
                return
        await self.app(scope, _replay(body, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"body over {self.max_bytes} bytes"
        await _refusal(scope, 413, "payload_too_large", detail)(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body, already read, as one message; then whatever the client sends next (its
    disconnect)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


async def read_json(request: Request) -> Any:
    """The request's JSON body, as BodyGuard parsed it (parsed here with the same bounds
    when the app runs without it, as in some unit tests)."""
    state = request.scope.get("state") or {}
    if STATE_KEY in state:
        return state[STATE_KEY]
    try:
        return loads(await request.body())
    except JSONBoundsError as exc:
        raise BadRequest(f"body: {exc.detail}", reason="bad_json") from exc
