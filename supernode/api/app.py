"""The FastAPI application: lifespan, body limit, error table, routers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from supernode import __version__
from supernode.errors import SupernodeError
from supernode.node import Node


class BodyLimit:
    """413 for bodies over the limit, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await _too_large(scope, receive, send, self.max_bytes)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(scope, receive, send, self.max_bytes)


class _BodyTooLarge(Exception):
    pass


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    resp = JSONResponse(
        {"error": "payload_too_large", "detail": f"body over {limit} bytes"}, status_code=413
    )
    await resp(scope, receive, send)


def _error(status: int, code: str, detail: Any, reason: str | None = None) -> JSONResponse:
    body = {"error": code, "detail": detail}
    if reason:
        body["reason"] = reason
    return JSONResponse(body, status_code=status)


def _known_error(request: Request, exc: SupernodeError) -> JSONResponse:
    if exc.status >= 500:
        logger.warning("{} {} -> {}: {}", request.method, request.url.path, exc.status, exc)
    return _error(exc.status, exc.code, exc.detail, exc.reason)


def _disconnected(request: Request) -> JSONResponse:
    logger.debug("client hung up during {} {}", request.method, request.url.path)
    return _error(400, "client_disconnected", "the client closed the connection")


def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    error_id = uuid.uuid4().hex[:12]
    logger.opt(exception=exc).error("error {} on {} {}", error_id, request.method, request.url.path)
    return JSONResponse(
        {
            "error": "internal_error",
            "error_id": error_id,
            "detail": "internal error; the operator can find it in the logs by error_id",
        },
        status_code=500,
    )


Handler = Callable[[Request], Awaitable[Response]]


class HotRoutes:
    """The busiest POST routes (peer traffic, spends) answered by their handlers directly,
    without FastAPI's routing, dependency and exception layers: the same functions the
    FastAPI routes call (those stay, for the OpenAPI docs), the same error bodies. It sits
    inside BodyLimit, so the body limit holds here too."""

    def __init__(self, app: ASGIApp, routes: dict[str, Handler]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = None
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.routes.get(scope["path"])
        if handler is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except SupernodeError as exc:
            response = _known_error(request, exc)
        except ClientDisconnect:
            response = _disconnected(request)
        except _BodyTooLarge:
            raise  # BodyLimit answers 413
        except Exception as exc:  # noqa: BLE001 - what FastAPI's catch-all handler does
            response = _internal_error(request, exc)
        await response(scope, receive, send)


def create_app(node: Node) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    app = FastAPI(
        title="Supernode",
        version=__version__,
        description="Federated peer daemon: messages, credit packs, spends, inference.",
        lifespan=lifespan,
    )
    app.state.node = node

    @app.exception_handler(SupernodeError)
    async def _known(request: Request, exc: SupernodeError) -> JSONResponse:
        return _known_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return _error(422, "invalid_request", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", exc.detail)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        return _disconnected(request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _internal_error(request, exc)

    from supernode.api import (
        credits,
        inference,
        messages,
        openai,
        ops,
        p2p,
        spends,
        supernodes,
    )

    # the hottest routes first: a request is matched against the routes in this order
    app.include_router(p2p.router)
    app.include_router(spends.p2p)
    app.include_router(spends.router)
    app.include_router(openai.router)
    app.include_router(inference.router)
    app.include_router(credits.p2p)
    app.include_router(credits.router)
    app.include_router(supernodes.router)
    app.include_router(messages.router)
    app.include_router(ops.router)
    app.add_middleware(
        HotRoutes,
        routes={
            "/p2p/envelopes": p2p.receive_envelopes,
            "/p2p/spend_votes": spends.spend_votes,
            "/spend_credits": spends.spend_credits,
        },
    )
    app.add_middleware(BodyLimit, max_bytes=node.settings.max_body_bytes)  # the outer one
    return app
