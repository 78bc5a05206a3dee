"""All logging setup: loguru to stderr, a rotating file, an in-memory ring for
/show_logs, and live subscribers for the log stream. Standard-library logging (uvicorn,
apscheduler, alembic) is routed into loguru."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections import deque
from pathlib import Path

from loguru import logger

FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {name}:{line} | {message}"


class LogRing:
    """The last N formatted lines with their times, and live subscribers."""

    def __init__(self, size: int) -> None:
        self.lines: deque[tuple[float, str]] = deque(maxlen=size)
        self._subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[str]]] = set()
        self._lock = threading.Lock()

    def write(self, message: object) -> None:  # a loguru sink
        text = str(message).rstrip("\n")
        record = getattr(message, "record", None)
        at = record["time"].timestamp() if record else time.time()
        with self._lock:
            self.lines.append((at, text))
            subs = list(self._subscribers)
        for loop, queue in subs:
            try:
                loop.call_soon_threadsafe(self._offer, queue, text)
            except RuntimeError:  # the loop closed
                self._subscribers.discard((loop, queue))

    @staticmethod
    def _offer(queue: asyncio.Queue[str], text: str) -> None:
        if queue.full():
            return  # a slow reader misses lines rather than growing memory
        queue.put_nowait(text)

    def since(self, seconds: float) -> list[str]:
        cut = time.time() - seconds
        with self._lock:
            return [t for at, t in self.lines if at >= cut]

    def subscribe(self) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)
        with self._lock:
            self._subscribers.add((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str]) -> None:
        with self._lock:
            self._subscribers = {s for s in self._subscribers if s[1] is not queue}


class _InterceptHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def setup_logging(level: str, ring_size: int, log_file: Path | None) -> LogRing:
    """Configure loguru once for the process; returns the ring behind /show_logs."""
    logger.remove()
    ring = LogRing(ring_size)
    # diagnose=False: tracebacks never print local variables (request bodies, keys)
    common = {"level": level, "format": FORMAT, "diagnose": False, "backtrace": False}
    logger.add(sys.stderr, **common)
    logger.add(ring.write, **common)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        logger.add(log_file, rotation="50 MB", retention=5, **common)
    logging.basicConfig(handlers=[_InterceptHandler()], level=0, force=True)
    for name in ("uvicorn", "uvicorn.error", "apscheduler", "alembic"):
        logging.getLogger(name).handlers = [_InterceptHandler()]
        logging.getLogger(name).propagate = False
    logging.getLogger("uvicorn.access").disabled = True  # ~30% of the request cost
    # Library loggers that speak per frame or per query: at DEBUG the log stream would
    # log its own frames (websockets) and every HTTP call (httpx) back into itself.
    # uvicorn hands its "uvicorn.error" logger to websockets, which logs frames at DEBUG.
    for name in (
        "uvicorn",
        "uvicorn.error",
        "websockets",
        "httpx",
        "httpcore",
        "asyncio",
        "web3",
        "urllib3",
        "apscheduler.executors.default",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    # "skipped: maximum number of running instances reached" is the no-overlap rule
    # working as meant (a round that runs long under load), not a warning.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    return ring
