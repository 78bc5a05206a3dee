"""Ask peers to sign: send one signed request to every peer at once, keep the answers
that come back in time, and stop as soon as enough have signed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from supernode.federation.gossip import PeerLink


@dataclass
class PeerAnswers:
    """Answers by peer address: ``ok`` holds the 200 answers, ``refused`` the reasons."""

    ok: dict[str, Any] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return "; ".join(f"{addr[:10]}…: {why}" for addr, why in self.refused.items())


async def ask_peers(
    links: list[PeerLink],
    path: str,
    body_for: Callable[[PeerLink], bytes],
    *,
    need: int,
    timeout_s: float,
) -> PeerAnswers:
    """POST ``body_for(link)`` to ``path`` at each peer in parallel. Returns once ``need``
    peers answered 200, every peer answered, or ``timeout_s`` passed."""
    answers = PeerAnswers()

    async def one(link: PeerLink) -> tuple[PeerLink, Any, str | None]:
        try:
            resp = await link.client.post(
                link.member.url + path,
                content=body_for(link),
                headers={"content-type": "application/json"},
                timeout=timeout_s,
            )
        except httpx.HTTPError as exc:
            return link, None, f"unreachable: {type(exc).__name__}"
        try:
            data = json.loads(resp.content)
        except ValueError:
            return link, None, f"HTTP {resp.status_code}, not JSON"
        if resp.status_code != 200:
            detail = data.get("detail") if isinstance(data, dict) else data
            reason = data.get("reason") if isinstance(data, dict) else None
            why = f"{reason}: {detail}" if reason else detail
            return link, None, f"HTTP {resp.status_code}: {why}"
        return link, data, None

    tasks = [asyncio.create_task(one(link)) for link in links]
    try:
        for next_done in asyncio.as_completed(tasks, timeout=timeout_s):
            try:
                link, data, error = await next_done
            except TimeoutError:
                break
            if error is None:
                answers.ok[link.member.address] = data
                if len(answers.ok) >= need:
                    break
            else:
                answers.refused[link.member.address] = error
    finally:
        # Answers not needed are left to finish (each is bounded by timeout_s): a
        # cancelled request would drop its keep-alive connection.
        for t in tasks:
            if not t.done():
                t.add_done_callback(_discard)
    for link in links:
        addr = link.member.address
        if addr not in answers.ok and addr not in answers.refused:
            answers.refused[addr] = "no answer in time" if len(answers.ok) < need else "not needed"
    return answers


def _discard(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" warning
