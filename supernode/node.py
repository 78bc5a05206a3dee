"""The daemon's composition root: settings, identity and network in; every service wired."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loguru import logger

from supernode.chain.client import ChainClient, ChainError
from supernode.config import Settings
from supernode.credits.executor import Executor
from supernode.credits.handlers import CertificateHandler, QuoteHandler
from supernode.credits.purchase import Seller
from supernode.credits.revocations import RevokedHandler
from supernode.credits.voter import SpendCertificateHandler, Voter
from supernode.credits.witness import Witness
from supernode.crypto.envelope import Envelope
from supernode.crypto.keys import Identity
from supernode.errors import StartupError
from supernode.federation.challenges import ChallengeBook, challenge_key
from supernode.federation.gossip import Gossip, PushSettings
from supernode.federation.handlers import Checked, HandlerRegistry
from supernode.federation.intake import Intake
from supernode.federation.membership import Membership
from supernode.federation.messaging import SnMessageHandler, UserMessageHandler
from supernode.federation.network import Member, NetworkFile
from supernode.federation.peer_http import PeerClient
from supernode.federation.scoring import PeerScoring
from supernode.federation.signer import Signer
from supernode.inference.handlers import RefundHandler, ResultSummariesHandler
from supernode.inference.openai import OpenAIGateway
from supernode.inference.results import RESULT_SUMMARIES
from supernode.inference.service import InferenceService
from supernode.ledger import peers as peers_repo
from supernode.ledger.db import Ledger, run_migrations
from supernode.logs import LogRing
from supernode.petals.client.pool import NodeConfig, NodePool
from supernode.reputation.auditor import Auditor
from supernode.reputation.book import ReputationBook
from supernode.reputation.clock import EpochClock
from supernode.reputation.events import TYPES as REPUTATION_TYPES
from supernode.reputation.events import ReputationHandler
from supernode.serve import ConnectionLimits

RESOLVE_TIMEOUT_S = 3.0  # resolving one member's host name


class Supernode:
    def __init__(
        self,
        settings: Settings,
        identity: Identity,
        network: NetworkFile,
        ring: LogRing,
        peer_client: Callable[[Member], PeerClient] | None = None,
    ) -> None:
        """``peer_client``: how to reach each peer (default: HTTP over aiohttp)."""
        s = settings
        if s.chain_id != network.chain_id:
            raise StartupError(
                f"SUPERNODE_CHAIN_ID={s.chain_id} but the network file says {network.chain_id}"
            )
        me = network.member(identity.address)
        if me is None:
            raise StartupError(
                f"this key ({identity.address}) is not a member of network {network.network_id}"
            )
        self.settings = s
        self.identity = identity
        self.address = identity.address
        self.network = network
        self.url = s.public_url or me.url
        self.ring = ring
        self.started_at = time.time()
        self.ready = False
        self.db = Ledger(Path(s.database_file), s.sqlite_busy_timeout_ms)
        self.chain = ChainClient(
            s.chain_rpc_url, timeout_s=s.chain_timeout_s, read_retries=s.chain_read_retries
        )
        self.chain_ok: bool | None = None
        self.signer = Signer(identity, network, s.envelope_ttl_s)
        self.registry = HandlerRegistry()
        self.registry.register(SnMessageHandler(s.max_message_chars))
        self.registry.register(UserMessageHandler(network.network_id, s.max_message_chars))
        self.scoring = PeerScoring(
            self.db,
            points_invalid=s.penalty_invalid,
            window_s=s.penalty_window_s,
            threshold=s.ban_threshold,
            ban_s=s.ban_duration_s,
        )
        self.intake = Intake(
            network=network,
            me=self.address,
            db=self.db,
            scoring=self.scoring,
            registry=self.registry,
            clock_skew_s=s.clock_skew_s,
            max_ttl_s=s.max_envelope_ttl_s,
            max_envelope_bytes=s.max_envelope_bytes,
            write_batch_max=s.write_batch_max,
        )
        self.gossip = Gossip(
            identity=identity,
            network=network,
            db=self.db,
            intake=self.intake,
            push=PushSettings(
                timeout_s=s.push_timeout_s,
                retries=s.push_retries,
                backoff_s=s.push_backoff_s,
                batch_max=s.push_batch_max,
                queue_max=s.push_queue_max,
                linger_s=s.push_linger_s,
            ),
            page=s.anti_entropy_page,
            pull_timeout_s=s.anti_entropy_timeout_s,
            round_s=s.anti_entropy_round_s,
            **({"peer_client": peer_client} if peer_client else {}),
        )
        self.membership = Membership(network, self.chain, self.db, s.membership_max_age_s)
        self.challenges = ChallengeBook(
            self.db, network.network_id, s.challenge_ttl_s, challenge_key(identity.private_key)
        )
        self.registry.register(QuoteHandler(network, self.membership))
        self.registry.register(CertificateHandler(network, self.membership))
        self.witness = Witness(
            identity=identity,
            network=network,
            settings=s,
            db=self.db,
            chain=self.chain,
            membership=self.membership,
            intake=self.intake,
            gossip=self.gossip,
        )
        self.credits = Seller(
            identity=identity,
            network=network,
            settings=s,
            db=self.db,
            chain=self.chain,
            membership=self.membership,
            witness=self.witness,
            publish=self.publish,
        )
        self.voter = Voter(
            identity=identity,
            network=network,
            settings=s,
            db=self.db,
            membership=self.membership,
            intake=self.intake,
            gossip=self.gossip,
        )
        self.executor = Executor(
            identity=identity,
            network=network,
            settings=s,
            membership=self.membership,
            gossip=self.gossip,
            voter=self.voter,
            publish=self.publish_all,
        )
        self.registry.register(SpendCertificateHandler(self.voter))
        self.registry.register(RevokedHandler(self.db, network))
        self.pool = NodePool(
            parse_nodes(s.petals_nodes),
            request_timeout_s=s.node_request_timeout_s,
            connect_timeout_s=s.node_connect_timeout_s,
            max_tries=s.node_max_tries,
            breaker_failures=s.node_breaker_failures,
            breaker_reset_s=s.node_breaker_reset_s,
            stream_idle_timeout_s=s.node_stream_idle_timeout_s,
            health_timeout_s=s.node_health_timeout_s,
        )
        self.inference = InferenceService(
            identity=identity,
            network=network,
            settings=s,
            db=self.db,
            pool=self.pool,
            voter=self.voter,
            executor=self.executor,
            publish=self.publish_all,
        )
        self.openai = OpenAIGateway(self.inference)
        self.registry.register(ResultSummariesHandler())
        self.registry.register(RefundHandler())
        rep = network.reputation
        self.clock = EpochClock(self.chain, network.epoch_blocks, rep.grace_epochs)
        self.book = ReputationBook(self.db, self.clock, [m.address for m in network.members], rep)
        for type_ in REPUTATION_TYPES:
            self.registry.register(
                ReputationHandler(
                    type_,
                    db=self.db,
                    clock=self.clock,
                    network=network,
                    rate_for=self.book.rate_for,
                )
            )
        self.intake.on_stored.append(self._reputation_changed)
        self.inference.is_invalid = self.book.is_invalid
        self.auditor = Auditor(
            identity=identity,
            network=network,
            settings=s,
            db=self.db,
            clock=self.clock,
            book=self.book,
            pool=self.pool,
            intake=self.intake,
            gossip=self.gossip,
            publish=self.publish_all,
            menu=self.inference.menu,
        )
        self.scheduler: Any = None
        self.connections = ConnectionLimits(
            per_address=s.max_connections_per_address,
            outsiders=s.max_outsider_connections,
            idle_timeout_s=s.http_idle_timeout_s,
            header_timeout_s=s.http_header_timeout_s,
            body_timeout_s=s.http_body_timeout_s,
        )

    async def start(self, *, jobs: bool = True) -> None:
        """Open the ledger, load state, start the writers and links; ``jobs``: the
        background jobs too (an in-process test drives them itself)."""
        s = self.settings
        await asyncio.to_thread(run_migrations, Path(s.database_file))
        async with self.db.write(peers_repo.PEERS) as conn:
            peers_repo.sync_members(conn, [m.model_dump() for m in self.network.members])
        self.scoring.load()
        self.connections.trust(await self.member_source_addresses())
        self.membership.load()
        await self.check_chain()
        self.intake.writer.start()
        self.voter.start()
        await self.pool.start()
        self.gossip.start()
        self.inference.start()
        await self.openai.settler.start()
        if jobs:
            from supernode.jobs import start_scheduler

            self.scheduler = start_scheduler(self)
        self.ready = True
        logger.info(
            "supernode {} ready at {} (network {}, chain {}, {} members)",
            self.address,
            self.url,
            self.network.network_id,
            self.network.chain_id,
            len(self.network.members),
        )

    async def member_source_addresses(self) -> set[str]:
        """The addresses members connect from: their URLs' hosts (resolved, bounded in
        time) and the ones the operator names."""
        loop = asyncio.get_running_loop()
        found = {a.strip() for a in self.settings.member_source_addresses.split(",") if a.strip()}
        for m in self.network.members:
            host = urlsplit(m.url).hostname or ""
            try:
                infos = await asyncio.wait_for(loop.getaddrinfo(host, None), RESOLVE_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                logger.warning("member {}: cannot resolve {} ({!r})", m.address, host, exc)
                continue
            found.update(str(info[4][0]) for info in infos)
        return found

    def memory_sizes(self) -> dict[str, int]:
        """How many entries each in-memory map of the daemon holds (all bounded)."""
        return {
            **self.voter.sizes(),
            **self.executor.sizes(),
            **self.credits.sizes(),
            **self.inference.sizes(),
            **self.openai.sizes(),
            **self.intake.sizes(),
            **self.auditor.sizes(),
            "connections_by_address": len(self.connections.by_address),
        }

    def readiness(self, ledger_ok: bool) -> dict[str, Any]:
        """Whether a paid request could be served end to end now, and what stops it."""
        s = self.settings
        now = time.time()
        eligible = self.membership.eligible_members()
        q = self.membership.quorum()
        peer_window = 2 * s.peer_probe_interval_s + s.peer_probe_timeout_s
        reachable = set(self.gossip.reachable(peer_window)) & set(eligible)
        if self.address in eligible:
            reachable.add(self.address)
        chain_window = 3 * s.membership_interval_s + s.chain_timeout_s * (s.chain_read_retries + 1)
        chain_ok = now - self.membership.chain_read_at <= chain_window
        failing = [
            name
            for name, ok in (
                ("starting_or_stopping", self.ready),
                ("ledger_unavailable", ledger_ok),
                ("chain_unreachable", chain_ok),
                ("quorum_unreachable", q is not None and len(reachable) >= q),
            )
            if not ok
        ]
        return {
            "ready": not failing,
            "reasons": failing,
            "checks": {
                "started": self.ready,
                "ledger": ledger_ok,
                "chain": chain_ok,
                "chain_read_s_ago": round(now - self.membership.chain_read_at, 1)
                if self.membership.chain_read_at
                else None,
                "membership_epoch": self.membership.epoch,
                "eligible_members": len(eligible),
                "quorum": q,
                "reachable_members": sorted(reachable),
            },
        }

    async def check_chain(self) -> None:
        """The chain must be the network's; unreachable is logged and retried by a job."""
        try:
            cid = await self.chain.chain_id()
        except ChainError as exc:
            self.chain_ok = False
            logger.warning("chain at {} unreachable at start: {}", self.settings.chain_rpc_url, exc)
            return
        if cid != self.network.chain_id:
            raise StartupError(
                f"the chain at {self.settings.chain_rpc_url} has id {cid}; "
                f"the network file says {self.network.chain_id}"
            )
        self.chain_ok = True

    async def stop(self) -> None:
        self.ready = False
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        await self.inference.stop()  # first: what it records on the way out is still pushed
        await self.openai.settler.stop()  # then what was answered is settled (bounded)
        await self.auditor.stop()
        await self.executor.stop()  # its vote requests travel on the gossip links' sessions
        await self.voter.stop()
        await self.gossip.stop()
        await self.pool.stop()
        await self.intake.writer.stop()
        await self.chain.close()
        await self.db.close()
        logger.info("supernode {} stopped", self.address)

    def _reputation_changed(self, stored: list[Checked], via: str | None) -> None:
        """An event (or a summary) of an epoch whose table is computed arrived late: the
        table is computed again, and the ones after it."""
        for c in stored:
            if c.env.type in REPUTATION_TYPES:
                self.book.mark_dirty(c.env.payload["epoch"])
            elif c.env.type == RESULT_SUMMARIES:
                e = self.clock.epoch_at(c.env.created_at)
                last = self.clock.last_closed()
                if e is not None and last is not None and e <= last:
                    self.book.mark_dirty(e)

    # -- publishing --------------------------------------------------------------------
    def sign(self, type_: str, payload: dict[str, Any], recipient: str | None = None) -> Envelope:
        return self.signer.sign(type_, payload, recipient=recipient)

    async def publish(
        self, env: Envelope, *, wait_s: float = 0.0
    ) -> tuple[Checked, list[dict[str, Any]]]:
        """Store our own envelope durably, then push it; with ``wait_s`` > 0, wait up to
        that long for each peer's answer."""
        (checked,) = await self.intake.store_own(env)
        waiters = self.gossip.push([checked], wait=wait_s > 0)
        deliveries = await self.gossip.wait_delivered(waiters, wait_s) if wait_s > 0 else []
        return checked, deliveries

    async def publish_all(self, envs: list[Envelope], *, linger: bool = False) -> None:
        """Store our own envelopes in one durable write, then push them together; with
        ``linger``, they may wait up to push_linger_s to travel with the next push."""
        self.gossip.push(await self.intake.store_own(*envs), linger=linger)


def parse_nodes(spec: str) -> list[NodeConfig]:
    """SUPERNODE_PETALS_NODES: comma-separated URLs; "openai:" marks an OpenAI server."""
    nodes = []
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        kind = "petals"
        if item.startswith("openai:"):
            kind, item = "openai", item.removeprefix("openai:")
        if not item.startswith(("http://", "https://")):
            raise StartupError(f"SUPERNODE_PETALS_NODES: {item!r} is not an http(s) URL")
        nodes.append(NodeConfig(url=item.rstrip("/"), kind=kind))
    return nodes
