"""Running an ASGI app under uvicorn the way every supernode process does."""

from __future__ import annotations

from typing import Any


def serve(app: Any, host: str, port: int, **overrides: Any) -> bool:
    """Serve ``app`` until stopped (uvloop, httptools, our own logging, no access log, a
    5 s graceful stop; keep-alive longer than any peer's or health check's interval, so a
    request never lands on a connection being closed). Returns whether it started."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=30,
        **overrides,
    )
    server = uvicorn.Server(config)
    server.run()
    return bool(server.started)
