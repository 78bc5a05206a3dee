"""The FastAPI application: lifespan, body guard, error table, routers."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from supernode import __version__
from supernode.api.docs_page import mount_docs
from supernode.api.guard import BodyGuard, reply
from supernode.api.limits import RateLimiter, ReadLimit
from supernode.api.openai import as_openai, error_response
from supernode.errors import SupernodeError, TooManyRequests
from supernode.inference.openai_fields import OpenAIError
from supernode.node import Supernode


def _openai_route(request: Request) -> bool:
    """Under /v1/ errors take OpenAI's shape, which OpenAI's SDKs read."""
    return request.url.path.startswith("/v1/")


def _known_error(request: Request, exc: SupernodeError) -> JSONResponse:
    if exc.status >= 500:
        logger.warning("{} {} -> {}: {}", request.method, request.url.path, exc.status, exc)
    if _openai_route(request):
        return error_response(as_openai(exc))
    resp = reply(exc.status, exc.code, exc.detail, exc.reason)
    if isinstance(exc, TooManyRequests):
        resp.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return resp


def _disconnected(request: Request) -> JSONResponse:
    logger.debug("client hung up during {} {}", request.method, request.url.path)
    return reply(400, "client_disconnected", "the client closed the connection")


def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    error_id = uuid.uuid4().hex[:12]
    logger.opt(exception=exc).error("error {} on {} {}", error_id, request.method, request.url.path)
    if _openai_route(request):
        message = f"internal error {error_id}; the operator can find it in the logs"
        return error_response(OpenAIError(500, message, code="internal_error"))
    return JSONResponse(
        {
            "error": "internal_error",
            "error_id": error_id,
            "detail": "internal error; the operator can find it in the logs by error_id",
        },
        status_code=500,
    )


Handler = Callable[[Request], Awaitable[Response]]
# The busiest POST routes (peer traffic, spends): registered once, as FastAPI routes (so
# the OpenAPI document describes them), and answered by FastPath without FastAPI's
# routing, dependency and exception layers.
FAST_PATHS = ("/p2p/envelopes", "/p2p/spend_votes", "/spend_credits")


def fast_handlers(app: FastAPI) -> dict[str, Handler]:
    """The endpoints of the FAST_PATHS routes as registered. A fast route takes the
    request alone and answers a Response: one that grew a dependency or a response model
    would lose it on the fast path, so that is refused at start, not ignored."""
    found: dict[str, Handler] = {}
    for ctx in iter_route_contexts(app.routes):  # routers included, prefixes applied
        route = ctx.original_route
        if isinstance(route, APIRoute) and ctx.path in FAST_PATHS:
            d = route.dependant
            params = d.path_params + d.query_params + d.header_params + d.cookie_params
            params += d.body_params
            if route.methods != {"POST"} or d.dependencies or params:
                raise RuntimeError(f"fast route {ctx.path} must be a POST taking the request only")
            if route.response_model is not None or d.request_param_name is None:
                raise RuntimeError(
                    f"fast route {ctx.path} must take the Request, answer a Response"
                )
            found[ctx.path] = route.endpoint
    missing = set(FAST_PATHS) - set(found)
    if missing:
        raise RuntimeError(f"fast routes not registered: {sorted(missing)}")
    return found


class FastPath:
    """Answers the FAST_PATHS routes with their registered endpoints directly: the same
    handlers, the same error bodies, inside BodyGuard (the body limit and JSON bounds hold
    here too)."""

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
        except Exception as exc:  # noqa: BLE001 - what FastAPI's catch-all handler does
            response = _internal_error(request, exc)
        await response(scope, receive, send)


def create_app(node: Supernode) -> FastAPI:
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
    burst_s = node.settings.anonymous_burst_s
    app.state.rate_limits = {
        "challenges": RateLimiter(node.settings.challenge_requests_per_minute, burst_s),
        "writes": RateLimiter(node.settings.anonymous_writes_per_minute, burst_s),
        "reads": RateLimiter(node.settings.anonymous_reads_per_minute, burst_s),
    }

    @app.exception_handler(SupernodeError)
    async def _known(request: Request, exc: SupernodeError) -> JSONResponse:
        return _known_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        if _openai_route(request):
            return error_response(OpenAIError(400, str(errors)[:500], code="invalid_request"))
        return reply(422, "invalid_request", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if _openai_route(request):
            code = "unknown_url" if exc.status_code == 404 else "http_error"
            message = f"{exc.detail}: {request.method} {request.url.path}"
            return error_response(OpenAIError(exc.status_code, message, code=code))
        return reply(exc.status_code, "http_error", exc.detail)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        return _disconnected(request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _internal_error(request, exc)

    from supernode.api import (
        credits,
        inference,
        keys,
        messages,
        openai,
        ops,
        p2p,
        reputation,
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
    app.include_router(reputation.router)
    app.include_router(keys.router)
    app.add_middleware(FastPath, routes=fast_handlers(app))
    app.add_middleware(ReadLimit, limiter=app.state.rate_limits["reads"], node=node)
    app.add_middleware(  # the outer one: nothing runs before the body is bounded
        BodyGuard, max_bytes=node.settings.max_body_bytes, max_depth=node.settings.max_json_depth
    )
    mount_docs(app)  # /docs and /redoc from local assets, not a CDN
    return app
