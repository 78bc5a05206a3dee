"""Running an ASGI app under uvicorn the way every supernode process does, with the
connection limits no outsider can get around.

uvicorn alone keeps a connection that has sent nothing, or half a request line, open for
ever, and its ``limit_concurrency`` answers *everyone* with 503 once outsiders hold that
many sockets: a few thousand idle connections would cut a daemon off from its peers and
starve the quorum. Here every connection is held to:

- an idle timeout: no request in progress (just connected, or between keep-alive
  requests) for ``idle_timeout_s``: closed;
- a header timeout: a request's line and headers complete within ``header_timeout_s`` of
  its first byte (slowloris), and a body timeout: its body within ``body_timeout_s`` of
  its headers;
- a cap per client address (``per_address``) and one for all outsiders together
  (``outsiders``). Members' addresses (the hosts in the network file's URLs, and any the
  operator names) are counted apart and never refused: outsiders cannot take the slots
  the quorum needs. A connection over a cap is closed as soon as it is accepted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import resource
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REFUSAL_LOG_EVERY = 1000  # refused connections between two log lines about them


def normalize_ip(host: str) -> str:
    """One spelling per address (an IPv4 client of an IPv6 socket as plain IPv4)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host  # a Unix socket: no address
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def client_ip(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return normalize_ip(peer[0] if isinstance(peer, tuple) and peer else "")


@dataclass
class ConnectionLimits:
    """Who may hold how many connections, and the timeouts every connection lives by."""

    per_address: int = 64
    outsiders: int = 1024
    idle_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    trusted: frozenset[str] = frozenset()  # members' addresses: counted apart, never refused
    by_address: Counter[str] = field(default_factory=Counter)
    outsiders_open: int = 0
    refused: int = 0
    timed_out: int = 0

    def trust(self, addresses: Iterable[str]) -> None:
        self.trusted = frozenset(normalize_ip(a) for a in addresses)

    def admit(self, ip: str) -> bool | None:
        """Whether a new connection from ``ip`` counts as an outsider's (True) or a
        member's (False); None: refused."""
        if ip in self.trusted:
            self.by_address[ip] += 1
            return False
        if self.by_address[ip] >= self.per_address or self.outsiders_open >= self.outsiders:
            self.refused += 1
            if self.refused % REFUSAL_LOG_EVERY == 1:
                logger.warning(
                    "refusing connections from {} ({} open from it, {} from all outsiders; "
                    "{} refused so far)",
                    ip,
                    self.by_address[ip],
                    self.outsiders_open,
                    self.refused,
                )
            return None
        self.by_address[ip] += 1
        self.outsiders_open += 1
        return True

    def release(self, ip: str, outsider: bool) -> None:
        self.by_address[ip] -= 1
        if self.by_address[ip] <= 0:
            del self.by_address[ip]
        if outsider:
            self.outsiders_open -= 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "open": sum(self.by_address.values()),
            "outsiders_open": self.outsiders_open,
            "addresses": len(self.by_address),
            "refused": self.refused,
            "timed_out": self.timed_out,
        }


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, held to ``limits``."""

    class GuardedProtocol(HttpToolsProtocol):
        _ip: str | None = None  # set once admitted: released when the connection ends
        _outsider = True
        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            ip = client_ip(transport)
            outsider = limits.admit(ip)
            if outsider is None:
                transport.abort()
                return
            self._ip, self._outsider = ip, outsider
            super().connection_made(transport)
            self._arm(limits.idle_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._ip is None:
                return  # refused at connect: uvicorn never saw it
            self._disarm()
            limits.release(self._ip, self._outsider)
            self._ip = None
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm(limits.header_timeout_s)

        def on_headers_complete(self) -> None:
            self._arm(limits.body_timeout_s)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()  # the app answers in its own time (and has its own timeouts)
            super().on_message_complete()

        def handle_websocket_upgrade(self) -> None:
            self._disarm()
            if self._ip is not None:  # the WebSocket lives by its own pings from here
                limits.release(self._ip, self._outsider)
                self._ip = None
            super().handle_websocket_upgrade()

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expired(self) -> None:
            self._timer = None
            limits.timed_out += 1
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

    return GuardedProtocol


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to the hard limit (so that members
    can still connect while outsiders hold their share); returns the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-files limit from {}: {}", soft, exc)
    return soft


def serve(app: Any, host: str, port: int, limits: ConnectionLimits | None = None) -> bool:
    """Serve ``app`` until stopped (uvloop, httptools, our own logging, no access log, a
    5 s graceful stop), every connection held to ``limits``. Returns whether it started."""
    import uvicorn

    limits = limits or ConnectionLimits()
    open_files = raise_open_files_limit()
    if open_files < limits.outsiders + 256:
        logger.warning(
            "open-files limit {} leaves little room above {} outsider connections",
            open_files,
            limits.outsiders,
        )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=guarded_protocol(limits),
        ws="websockets-sansio",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        # after a response: keep-alive longer than any peer's or health check's interval,
        # so that a request never lands on a connection being closed
        timeout_keep_alive=int(limits.idle_timeout_s),
    )
    server = uvicorn.Server(config)
    server.run()
    return bool(server.started)
