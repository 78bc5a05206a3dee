"""A federation in one process, for fast protocol tests: real daemons (Supernode and its
FastAPI app, real SQLite ledgers in a temporary folder), their peer calls going straight
to each other's app through httpx.ASGITransport instead of over sockets (the PeerClient
seam). No chain: eligibility is set as if read from one. What only processes show
(SIGKILL, fsync, anvil) stays in the integration tests."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from supernode.api.app import create_app
from supernode.config import Settings
from supernode.crypto.envelope import sign_envelope
from supernode.crypto.keys import Identity
from supernode.errors import PeerUnreachable
from supernode.federation.network import Member, NetworkFile
from supernode.federation.peer_http import PeerClient, PeerResponse
from supernode.ledger import credits as credits_repo
from supernode.logs import LogRing
from supernode.node import Supernode

NETWORK_ID, CHAIN_ID = "in-process", 31337


@dataclass
class LocalPeers:
    """Member URL -> its app; URLs in ``down`` do not answer (a stopped peer)."""

    apps: dict[str, Any] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)

    def client(self, member: Member) -> PeerClient:
        return _LocalClient(self, member.url)


class _LocalClient:
    def __init__(self, peers: LocalPeers, url: str) -> None:
        self.peers, self.url = peers, url
        self._http: httpx.AsyncClient | None = None

    async def _request(self, method: str, url: str, timeout_s: float, **kw: Any) -> PeerResponse:
        if self.url in self.peers.down:
            raise PeerUnreachable("the peer is down (in-process test)")
        if self._http is None:
            transport = httpx.ASGITransport(app=self.peers.apps[self.url])
            self._http = httpx.AsyncClient(transport=transport, base_url=self.url)
        try:
            resp = await asyncio.wait_for(self._http.request(method, url, **kw), timeout_s)
        except TimeoutError as exc:
            raise PeerUnreachable(f"no answer in {timeout_s} s") from exc
        return PeerResponse(resp.status_code, resp.content)

    async def post(self, url: str, body: bytes, *, timeout_s: float) -> PeerResponse:
        headers = {"content-type": "application/json"}
        return await self._request("POST", url, timeout_s, content=body, headers=headers)

    async def get(self, url: str, params: dict[str, Any], *, timeout_s: float) -> PeerResponse:
        return await self._request("GET", url, timeout_s, params=params)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()


@dataclass
class Federation:
    keys: list[Identity]
    network: NetworkFile
    nodes: list[Supernode]
    peers: LocalPeers

    def order(
        self, owner: Identity, pack_id: str, seq: int, amount: int, executor: int = 0
    ) -> dict[str, Any]:
        return sign_envelope(
            owner,
            type_="spend_order",
            network_id=NETWORK_ID,
            chain_id=CHAIN_ID,
            payload={
                "pack_id": pack_id,
                "sequence": seq,
                "amount": amount,
                "request_id": "0x" + secrets.token_hex(32),
                "executor": self.keys[executor].address,
            },
        ).to_wire()

    async def add_pack(self, owner: Identity, credits: int) -> str:
        """A certified pack, as if bought and gossiped (the purchase flow has its own tests)."""
        pack_id = "0x" + secrets.token_hex(32)
        for node in self.nodes:
            async with node.db.write(credits_repo.PACKS) as conn:
                credits_repo.add_pack(
                    conn,
                    {
                        "pack_id": pack_id,
                        "buyer": owner.address,
                        "credits": credits,
                        "remaining_credits": credits,
                        "amount_wei": str(credits),
                        "chain_id": CHAIN_ID,
                        "tx_hash": "0x" + secrets.token_hex(32),
                        "block_number": 1,
                        "certificate": b"{}",
                        "certified_at": 0.0,
                    },
                )
        return pack_id

    def state(self, i: int, pack_id: str) -> tuple[int, int]:
        """(next_sequence, remaining_credits) of the pack at node ``i``."""
        with self.nodes[i].db.read() as conn:
            pack = credits_repo.get_pack(conn, pack_id)
        assert pack is not None
        return pack["next_sequence"], pack["remaining_credits"]


@asynccontextmanager
async def federation(root: Path, n: int = 4, **settings: Any) -> AsyncIterator[Federation]:
    keys = [Identity.generate() for _ in range(n)]
    members = [
        Member(address=k.address, url=f"http://127.0.0.1:{20_000 + i}", public_key=k.public_key_hex)
        for i, k in enumerate(keys)
    ]
    network = NetworkFile(
        network_id=NETWORK_ID,
        chain_id=CHAIN_ID,
        payment_address=keys[0].address,
        credit_price_wei=1,
        min_collateral_wei=0,
        confirmations_required=1,
        epoch_blocks=10,
        members=members,
    )
    peers = LocalPeers()
    nodes: list[Supernode] = []
    try:
        for i, k in enumerate(keys):
            s = Settings(
                _env_file=None,  # type: ignore[call-arg]
                chain_id=CHAIN_ID,
                chain_rpc_url="http://127.0.0.1:9",  # no chain: nothing listens there
                chain_timeout_s=0.5,
                chain_read_retries=0,
                database_file=root / f"node-{i}.sqlite",
                data_dir=root,
                push_linger_s=0,
                quorum_timeout_s=2,
                **settings,
            )
            node = Supernode(s, k, network, LogRing(100), peer_client=peers.client)
            peers.apps[members[i].url] = create_app(node)
            await node.start(jobs=False)
            node.membership.eligible = {m.address: True for m in members}  # as the chain says
            nodes.append(node)
        yield Federation(keys, network, nodes, peers)
    finally:
        for node in nodes:
            await node.stop()
