"""Operations: health, readiness, metrics, logs (operator only), and the web page."""

from __future__ import annotations

import asyncio
import hmac
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, WebSocket, WebSocketDisconnect
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from supernode import __version__
from supernode.api.deps import Caller, get_node, operator_auth
from supernode.metrics import build_registry
from supernode.node import Supernode

router = APIRouter(tags=["operations"])
PAGE = Path(__file__).with_name("page.html")
WS_IDLE_PING_S = 20.0


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Liveness: the process answers."""
    node: Supernode = request.app.state.node
    return {
        "status": "ok",
        "address": node.address,
        "version": __version__,
        "uptime_s": round(time.time() - node.started_at, 1),
    }


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 only when a paid request could be served end to end — started, the
    ledger answering, the chain answering lately, and a quorum of eligible members
    (this one included) reachable lately; else 503 naming what fails."""
    node: Supernode = request.app.state.node
    ledger_ok = True
    try:
        with node.db.read() as conn:
            conn.execute("SELECT 1").fetchone()
    except Exception as exc:  # noqa: BLE001 - report, do not raise
        logger.warning("readiness: the ledger does not answer: {!r}", exc)
        ledger_ok = False
    report = node.readiness(ledger_ok)
    return JSONResponse(report, status_code=200 if report["ready"] else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    app = request.app
    if not hasattr(app.state, "metrics_registry"):
        app.state.metrics_registry = build_registry(app.state.node)
    return Response(generate_latest(app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/show_logs/{minutes}")
async def show_logs(
    minutes: float = PathParam(gt=0, le=7 * 24 * 60),
    node: Supernode = Depends(get_node),
    _op: Caller = Depends(operator_auth("/show_logs")),
) -> dict[str, Any]:
    """This daemon's log lines of the last ``minutes`` (operator only)."""
    lines = node.ring.since(minutes * 60)
    return {"minutes": minutes, "count": len(lines), "lines": lines}


@router.websocket("/logs/stream")
async def log_stream(websocket: WebSocket) -> None:
    """Live log lines (operator only): `Authorization: Bearer <token>` or `?token=`."""
    node: Supernode = websocket.app.state.node
    token = node.settings.operator_token
    offered = websocket.query_params.get("token") or ""
    auth = websocket.headers.get("authorization", "")
    if auth.startswith("Bearer "):
        offered = auth[7:]
    if not token or not hmac.compare_digest(offered.encode(), token.encode()):
        await websocket.close(code=1008, reason="operator token required")
        return
    await websocket.accept()
    queue = node.ring.subscribe()

    async def client_gone() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass  # we ignore what the client sends; we only watch for its close

    gone = asyncio.create_task(client_gone())
    try:
        while not gone.done():
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait(
                {getter, gone}, timeout=WS_IDLE_PING_S, return_when=asyncio.FIRST_COMPLETED
            )
            if getter in done:
                await websocket.send_text(getter.result())
            else:
                getter.cancel()
                if not done:
                    await websocket.send_text("")  # keep-alive through idle proxies
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        gone.cancel()
        node.ring.unsubscribe(queue)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    """A small page: peers, messages, metadata, and live logs with the operator token."""
    return HTMLResponse(PAGE.read_text())
