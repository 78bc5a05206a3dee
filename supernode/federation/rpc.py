"""Ask peers to sign: send a request to every peer at once, keep the answers that come
back in time, and stop as soon as enough have signed.

Two ways to ask. ``ask_peers`` sends one signed request per peer (quotes, pack
certificates: a few per second at most). ``BatchedCall`` is for the hot path (spend votes):
requests to one peer that are waiting while earlier ones are in flight go together in one
signed HTTP request, so under load a peer gets one request for many orders (one
signature check, one durable commit) and an idle federation pays no added latency.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from supernode.crypto.attest import is_attestation
from supernode.crypto.keys import Identity
from supernode.federation.gossip import PeerLink
from supernode.federation.network import NetworkFile
from supernode.federation.peer_http import PeerError, PeerResponse
from supernode.federation.transport import sign_transport

# (answer, None) when the peer answered yes; (None, why) otherwise
Outcome = tuple[Any, str | None]


@dataclass
class PeerAnswers:
    """Answers by peer address: ``ok`` holds the 200 answers, ``refused`` the reasons."""

    ok: dict[str, Any] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return "; ".join(f"{addr[:10]}…: {why}" for addr, why in self.refused.items())

    def all_refused(self, members: Collection[str], reason: str) -> bool:
        """Every one of ``members`` answered with a 422 refusal for ``reason``."""
        prefix = refusal(422, {"reason": reason, "detail": ""})[:-1]
        return all(self.refused.get(a, "").startswith(prefix) for a in members)

    def attestations(
        self,
        kind: str,
        terms: dict[str, Any],
        network: NetworkFile,
        eligible: Collection[str],
        pick: Callable[[Any], Any] = lambda data: data,
    ) -> list[Any]:
        """The answers that are a valid attestation of ``terms`` (``pick`` finds it in an
        answer) by an eligible member; any other answer moves to ``refused``."""
        valid = []
        for addr, data in list(self.ok.items()):
            item = pick(data)
            if is_attestation(
                kind,
                terms,
                item,
                chain_id=network.chain_id,
                network_id=network.network_id,
                eligible=eligible,
            ):
                valid.append(item)
            else:
                self.refused[addr] = f"answered with an invalid {kind}"
        return valid


def refusal(status: int, data: Any) -> str:
    """One line for a peer's non-200 answer: ``HTTP 422: reason: detail``."""
    detail = data.get("detail") if isinstance(data, dict) else data
    reason = data.get("reason") if isinstance(data, dict) else None
    why = f"{reason}: {detail}" if reason else detail
    return f"HTTP {status}: {why}"


def _judge(resp: PeerResponse) -> Outcome:
    try:
        data = resp.json()
    except ValueError:
        return None, f"HTTP {resp.status}, not JSON"
    if resp.status != 200:
        return None, refusal(resp.status, data)
    return data, None


async def gather_answers(
    calls: dict[str, Awaitable[Outcome]], *, need: int, timeout_s: float
) -> PeerAnswers:
    """Run one call per peer address; return once ``need`` said yes, all answered, or
    ``timeout_s`` passed. Calls still running are left to finish (each is bounded): a
    cancelled request would drop its keep-alive connection."""
    answers = PeerAnswers()

    async def one(addr: str, call: Awaitable[Outcome]) -> tuple[str, Outcome]:
        return addr, await call

    tasks = [asyncio.ensure_future(one(addr, call)) for addr, call in calls.items()]
    try:
        for next_done in asyncio.as_completed(tasks, timeout=timeout_s):
            try:
                addr, (data, error) = await next_done
            except TimeoutError:
                break
            if error is None:
                answers.ok[addr] = data
                if len(answers.ok) >= need:
                    break
            else:
                answers.refused[addr] = error
    finally:
        for t in tasks:
            if not t.done():
                t.add_done_callback(_discard)
    for addr in calls:
        if addr not in answers.ok and addr not in answers.refused:
            answers.refused[addr] = "no answer in time" if len(answers.ok) < need else "not needed"
    return answers


async def ask_peers(
    links: list[PeerLink],
    path: str,
    body_for: Callable[[PeerLink], bytes],
    *,
    need: int,
    timeout_s: float,
) -> PeerAnswers:
    """POST ``body_for(link)`` to ``path`` at each peer in parallel (see gather_answers)."""

    async def call(link: PeerLink) -> Outcome:
        try:
            resp = await link.client.post(
                link.member.url + path, body_for(link), timeout_s=timeout_s
            )
        except PeerError as exc:
            return None, f"unreachable: {exc}"
        return _judge(resp)

    return await gather_answers(
        {link.member.address: call(link) for link in links}, need=need, timeout_s=timeout_s
    )


class BatchedCall:
    """Requests of one kind to one peer, sent in batches.

    ``call(item)`` queues ``item`` (a JSON-able dict) and returns the peer's answer for
    it. A sender sends what is queued (up to ``batch_max`` items) as one transport
    envelope of type ``type_`` with payload ``{"items": [...]}`` to ``path``; the peer
    answers ``{"results": [...]}``, one per item: ``{"ok": answer}`` or ``{"error":
    {"status", "reason", "detail"}}``. Up to ``in_flight`` batches travel at once.
    """

    def __init__(
        self,
        link: PeerLink,
        identity: Identity,
        network: NetworkFile,
        *,
        path: str,
        type_: str,
        batch_max: int,
        in_flight: int,
        timeout_s: float,
    ) -> None:
        self.link = link
        self.identity = identity
        self.network = network
        self.path = path
        self.type = type_
        self.batch_max = batch_max
        self.timeout_s = timeout_s
        # (item, its waiter, whether its caller would not wait: see call)
        self._queue: deque[tuple[dict[str, Any], asyncio.Future[Outcome], bool]] = deque()
        self._slots = in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.items = 0
        self._stopped = False
        self._flush: asyncio.TimerHandle | None = None  # ends a linger (see call)
        self._urgent = 0  # queued items whose callers would not wait

    def call(self, item: dict[str, Any], linger_s: float = 0.0) -> asyncio.Future[Outcome]:
        """Queue ``item``; it goes with the next batch. With ``linger_s`` > 0 (the caller
        can wait) it may wait that long for others to join it, unless a batch leaves
        sooner (a caller that cannot wait, a full batch)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Outcome] = loop.create_future()
        if self._stopped:
            fut.set_result((None, "the daemon is stopping"))
            return fut
        urgent = linger_s <= 0
        self._queue.append((item, fut, urgent))
        self._urgent += urgent
        if urgent or len(self._queue) >= self.batch_max:
            self._pump(now=True)
        elif self._flush is None:
            self._flush = loop.call_later(linger_s, self._linger_over)
        return fut

    def _linger_over(self) -> None:
        self._flush = None
        self._pump()

    def _pump(self, now: bool = False) -> None:
        """Send what is queued, as far as slots allow; while a linger runs, only ``now``
        (a caller that cannot wait, a full batch) sends before it ends."""
        if self._flush is not None:
            if not (now or self._urgent):
                return
            self._flush.cancel()  # the lingering items leave with this batch
            self._flush = None
        while self._queue and self._slots > 0 and not self._stopped:
            n = min(len(self._queue), self.batch_max)
            batch = [self._queue.popleft() for _ in range(n)]
            self._urgent -= sum(urgent for _, _, urgent in batch)
            self._slots -= 1
            task = asyncio.create_task(self._send([(item, fut) for item, fut, _ in batch]))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots += 1
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "batched {} to {} crashed: {!r}",
                self.type,
                self.link.member.address,
                task.exception(),
            )
        self._pump()

    async def _send(self, batch: list[tuple[dict[str, Any], asyncio.Future[Outcome]]]) -> None:
        outcomes: list[Outcome] = [(None, "the request was not sent")] * len(batch)
        try:
            body = sign_transport(
                self.identity,
                self.network,
                self.type,
                self.link.member.address,
                {"items": [item for item, _ in batch]},
            )
            resp = await self.link.client.post(
                self.link.member.url + self.path, body, timeout_s=self.timeout_s
            )
            data, error = _judge(resp)
            results = data.get("results") if isinstance(data, dict) else None
            if error is not None:
                outcomes = [(None, error)] * len(batch)
            elif not isinstance(results, list) or len(results) != len(batch):
                outcomes = [(None, "answered with a malformed batch")] * len(batch)
            else:
                outcomes = [self._outcome(r) for r in results]
        except PeerError as exc:
            outcomes = [(None, f"unreachable: {exc}")] * len(batch)
        except asyncio.CancelledError:
            outcomes = [(None, "the daemon is stopping")] * len(batch)
            raise
        except Exception as exc:  # noqa: BLE001 - every waiter gets an answer
            outcomes = [(None, f"request failed: {exc!r}")] * len(batch)
            raise
        finally:
            self.batches += 1
            self.items += len(batch)
            for (_, fut), outcome in zip(batch, outcomes, strict=True):
                if not fut.done():
                    fut.set_result(outcome)

    @staticmethod
    def _outcome(result: Any) -> Outcome:
        if isinstance(result, dict) and "ok" in result:
            return result["ok"], None
        err = result.get("error") if isinstance(result, dict) else None
        if isinstance(err, dict):
            status = err.get("status")
            return None, refusal(status if isinstance(status, int) else 0, err)
        return None, "answered with a malformed result"

    async def stop(self) -> None:
        self._stopped = True  # nothing new is sent: queued requests are answered below
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._queue:
            _, fut, _ = self._queue.popleft()
            if not fut.done():
                fut.set_result((None, "the daemon is stopping"))


def _discard(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" warning
