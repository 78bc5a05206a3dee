"""The fast routes are registered once, as FastAPI routes; the fast path refuses, at
start, a route that grew what it would skip (a dependency, a parameter, a model)."""

from __future__ import annotations

import pytest
from fastapi import Depends, FastAPI, Request, Response

from supernode.api.app import FAST_PATHS, fast_handlers


async def _fine(request: Request) -> Response:
    return Response(b"{}")


def app_with(**changed: object) -> FastAPI:
    app = FastAPI()
    for path in FAST_PATHS:
        app.post(path)(changed.get(path, _fine))  # type: ignore[arg-type]
    return app


def test_the_registered_endpoints_are_the_fast_ones() -> None:
    assert set(fast_handlers(app_with()).values()) == {_fine}


async def _dependency() -> int:
    return 1


async def _with_dependency(request: Request, x: int = Depends(_dependency)) -> Response:
    return Response(b"{}")


async def _with_query(request: Request, limit: int = 10) -> Response:
    return Response(b"{}")


@pytest.mark.parametrize("endpoint", [_with_dependency, _with_query])
def test_a_fast_route_that_grew_a_dependency_or_a_parameter_is_refused(endpoint: object) -> None:
    with pytest.raises(RuntimeError, match="taking the request only"):
        fast_handlers(app_with(**{FAST_PATHS[0]: endpoint}))


def test_a_missing_fast_route_is_refused() -> None:
    app = FastAPI()
    app.post(FAST_PATHS[0])(_fine)
    with pytest.raises(RuntimeError, match="not registered"):
        fast_handlers(app)


def test_routes_in_included_routers_are_found_under_their_prefix() -> None:
    from fastapi import APIRouter

    app, p2p, plain = FastAPI(), APIRouter(prefix="/p2p"), APIRouter()
    for path in FAST_PATHS:
        if path.startswith("/p2p/"):
            p2p.post(path.removeprefix("/p2p"))(_fine)
        else:
            plain.post(path)(_fine)
    app.include_router(p2p)
    app.include_router(plain)
    assert set(fast_handlers(app)) == set(FAST_PATHS)
