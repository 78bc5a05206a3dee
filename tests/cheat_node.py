"""A cheating Petals node for tests: a proxy in front of a real ``supernode petals-node``.

It forwards every route unchanged (``GET /health``, ``GET /api/v1/tokenizer``, ``POST
/api/v1/tokenize``, any other route the node has or lacks, and the WebSocket
``/api/v2/generate``), except that the text it hands back is cut to at most ``--truncate``
characters: the ``outputs`` of a ``/api/v1/generate`` answer, and the ``outputs`` of a v2
session step's streamed chunks taken together. The upstream's ``output_tokens`` and
``token_count`` pass through as they are, so it charges for tokens it did not deliver.

    python -m tests.cheat_node --upstream http://127.0.0.1:5000 --port 5001 --truncate 8

It listens on 127.0.0.1 only. ``LocalFederation`` starts it for a ``NodeSpec(truncate=N)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

HOST = "127.0.0.1"
CONNECT_TIMEOUT_S = 5.0  # TCP connect to the upstream node, and a WebSocket handshake
REQUEST_TIMEOUT_S = 180.0  # one whole upstream HTTP answer (the node's generation limit is 120 s)
WS_RECEIVE_TIMEOUT_S = 330.0  # the upstream's next session message (its step timeout is 300 s)
WS_CLOSE_TIMEOUT_S = 5.0  # the upstream's reply to our close frame
SHUTDOWN_TIMEOUT_S = 2.0  # open connections on SIGTERM
MAX_MESSAGE_BYTES = 4_000_000  # one WebSocket message, either way
# headers that describe one hop's connection or a body we re-encode, never forwarded
HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
    }
)

log = logging.getLogger("cheat_node")
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)
TRUNCATE = web.AppKey("truncate", int)


class Cutter:
    """Lets through at most ``limit`` characters of generated text per answer (or step)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent = 0

    def cut(self, message: dict[str, Any]) -> dict[str, Any]:
        """``message`` with its ``outputs`` cut to what is left of the limit; counts kept.
        A message with ``"stop": true`` ends the step: the next step starts afresh."""
        text = message.get("outputs")
        if message.get("ok") is True and isinstance(text, str):
            kept = text[: max(0, self.limit - self.sent)]
            self.sent += len(kept)
            if kept != text:
                log.info("cut %d characters of output to %d", len(text), len(kept))
            message = {**message, "outputs": kept}
        if message.get("stop") is True:
            self.sent = 0
        return message


def _forwarded(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_HEADERS}


def _upstream(request: web.Request) -> tuple[aiohttp.ClientSession, str]:
    return request.app[SESSION], request.app[UPSTREAM] + request.rel_url.path_qs


async def forward(request: web.Request) -> web.Response:
    """Any route: the same request upstream, its answer back unchanged."""
    session, url = _upstream(request)
    status, headers, body = await _call(session, request, url)
    return web.Response(status=status, headers=headers, body=body)


async def generate_v1(request: web.Request) -> web.Response:
    """``/api/v1/generate``: the upstream's answer with its ``outputs`` cut, counts kept."""
    session, url = _upstream(request)
    status, headers, body = await _call(session, request, url)
    if status == 200:
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            body = json.dumps(Cutter(request.app[TRUNCATE]).cut(answer)).encode()
    return web.Response(status=status, headers=headers, body=body)


async def _call(
    session: aiohttp.ClientSession, request: web.Request, url: str
) -> tuple[int, dict[str, str], bytes]:
    try:
        async with session.request(
            request.method,
            url,
            data=await request.read(),
            headers=_forwarded(request.headers),
            allow_redirects=False,
        ) as resp:
            return resp.status, _forwarded(resp.headers), await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("%s %s: upstream failed: %r", request.method, url, exc)
        body = {"ok": False, "traceback": f"upstream failed: {type(exc).__name__}"}
        return 502, {"Content-Type": "application/json"}, json.dumps(body).encode()


async def generate_v2(request: web.Request) -> web.StreamResponse:
    """The WebSocket session, relayed both ways; the text of each step cut to the limit."""
    client = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES)
    if not client.can_prepare(request).ok:  # not a WebSocket handshake: plain forwarding
        return await forward(request)
    await client.prepare(request)
    session, url = _upstream(request)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            upstream = await session.ws_connect(
                url,
                timeout=aiohttp.ClientWSTimeout(
                    ws_receive=WS_RECEIVE_TIMEOUT_S, ws_close=WS_CLOSE_TIMEOUT_S
                ),
                max_msg_size=MAX_MESSAGE_BYTES,
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("v2: upstream unreachable: %r", exc)
        await client.send_json({"ok": False, "traceback": "upstream unreachable"})
        await client.close()
        return client
    cutter = Cutter(request.app[TRUNCATE])
    async with upstream:
        up = asyncio.create_task(_client_to_upstream(client, upstream))
        down = asyncio.create_task(_upstream_to_client(upstream, client, cutter))
        done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if (exc := task.exception()) is not None:
                log.warning("v2 relay ended: %r", exc)
    if not client.closed:
        await client.close(code=upstream.close_code or aiohttp.WSCloseCode.OK)
    return client


async def _client_to_upstream(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
) -> None:
    async for msg in _messages(client):
        if msg.type is aiohttp.WSMsgType.TEXT:
            await upstream.send_str(msg.data)
        else:
            await upstream.send_bytes(msg.data)
    await upstream.close()


async def _upstream_to_client(
    upstream: aiohttp.ClientWebSocketResponse, client: web.WebSocketResponse, cutter: Cutter
) -> None:
    async for msg in _messages(upstream):
        if msg.type is aiohttp.WSMsgType.BINARY:
            await client.send_bytes(msg.data)
            continue
        try:
            event = json.loads(msg.data)
        except ValueError:
            await client.send_str(msg.data)
            continue
        await client.send_str(json.dumps(cutter.cut(event) if isinstance(event, dict) else event))


async def _messages(
    ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> AsyncIterator[aiohttp.WSMessage]:
    """Text and binary messages until the socket closes (or fails)."""
    while True:
        msg = await ws.receive()
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            yield msg
        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING):
            continue  # aiohttp answers the close; CLOSED follows
        else:  # CLOSED or ERROR
            return


def make_app(upstream: str, truncate: int) -> web.Application:
    if truncate < 0:
        raise ValueError("truncate must be 0 or more")
    app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
    app[UPSTREAM] = upstream.rstrip("/")
    app[TRUNCATE] = truncate

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=True) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(client_session)
    app.router.add_post("/api/v1/generate", generate_v1)
    app.router.add_get("/api/v2/generate", generate_v2)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cheat_node",
        description="A Petals node proxy that truncates generated text but bills in full.",
    )
    parser.add_argument("--upstream", required=True, help="the real node, http://host:port")
    parser.add_argument("--port", type=int, required=True, help=f"port to listen on ({HOST})")
    parser.add_argument("--truncate", type=int, required=True, help="most characters returned")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.info(
        "cheat node on %s:%d -> %s, text cut to %d", HOST, args.port, args.upstream, args.truncate
    )
    web.run_app(
        make_app(args.upstream, args.truncate),
        host=HOST,
        port=args.port,
        print=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        access_log=None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
