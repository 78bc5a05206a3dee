"""The federation's members as this daemon sees them (the Pastel layer's paths)."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from supernode import __version__
from supernode.api.deps import get_node
from supernode.api.validation import checksum
from supernode.errors import BadRequest, NotFound
from supernode.federation.membership import max_faulty
from supernode.ledger import peers as peers_repo
from supernode.node import Supernode

router = APIRouter(tags=["supernodes"])

CSV_FIELDS = [
    "address",
    "url",
    "public_key",
    "eligible",
    "collateral_wei",
    "collateral_block",
    "last_seen_at",
    "banned_until",
    "penalty_points",
    "last_error",
    "is_local",
    "reputation_score",
    "reputation_invalid",
]


async def _rows(node: Supernode) -> list[dict[str, Any]]:
    with node.db.read() as conn:
        rows = peers_repo.all_peers(conn)
    now = time.time()
    latest = node.book.latest()
    scores = {row["address"]: row for row in (latest or {}).get("rows", [])}
    out = []
    for r in rows:
        link = node.gossip.links.get(r["address"])
        rep = scores.get(r["address"], {})
        out.append(
            {
                "address": r["address"],
                "url": r["url"],
                "public_key": r["public_key"],
                "eligible": bool(r["eligible"]),
                "collateral_wei": int(r["collateral_wei"]) if r["collateral_wei"] else None,
                "collateral_block": r["collateral_block"],
                "collateral_checked_at": r["collateral_checked_at"],
                "last_seen_at": r["last_seen_at"],
                "last_error": r["last_error"],
                "sync_cursor": r["sync_cursor"],
                "penalty_points": r["penalty_points"],
                "banned_until": r["banned_until"] if (r["banned_until"] or 0) > now else None,
                "push_queue": len(link.queue) if link else 0,
                "is_local": r["address"] == node.address,
                "reputation_score": rep.get("score"),
                "reputation_invalid": rep.get("invalid", False),
                "reputation_epoch": latest["epoch"] if latest else None,
            }
        )
    return out


@router.get("/supernode_list_json")
async def supernode_list_json(node: Supernode = Depends(get_node)) -> dict[str, Any]:
    """Every member, with eligibility (collateral), liveness, penalties and bans."""
    rows = await _rows(node)
    n = sum(1 for r in rows if r["eligible"])
    return {
        "network_id": node.network.network_id,
        "chain_id": node.network.chain_id,
        "min_collateral_wei": node.network.min_collateral_wei,
        "members": len(rows),
        "eligible": n,
        "quorum": node.membership.quorum(),
        "max_faulty": max_faulty(n) if n else 0,
        "epoch": node.membership.epoch,
        "supernodes": rows,
    }


@router.get("/supernode_list_csv", response_class=Response)
async def supernode_list_csv(node: Supernode = Depends(get_node)) -> Response:
    """The same list as CSV (one row per member)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in await _rows(node):
        writer.writerow(r)
    return Response(
        buf.getvalue(),
        media_type="text/csv",
        headers={"content-disposition": 'attachment; filename="supernodes.csv"'},
    )


@router.get("/get_local_machine_sn_info")
async def local_info(node: Supernode = Depends(get_node)) -> dict[str, Any]:
    """This daemon: its address (its id), key, URL, network and standing."""
    return {
        "address": node.address,
        "public_key": node.identity.public_key_hex,
        "url": node.url,
        "network_id": node.network.network_id,
        "chain_id": node.network.chain_id,
        "eligible": node.membership.eligible.get(node.address, False),
        "quorum": node.membership.quorum(),
        "members": len(node.network.members),
        "version": __version__,
        "uptime_s": round(time.time() - node.started_at, 1),
    }


async def _one(node: Supernode, address: str) -> dict[str, Any]:
    for r in await _rows(node):
        if r["address"] == address:
            return r
    raise NotFound(f"{address} is not a member of network {node.network.network_id}")


@router.get("/get_sn_data_from_pastelid/{address}")
async def sn_by_address(address: str, node: Supernode = Depends(get_node)) -> dict[str, Any]:
    """A member by its address (the Pastel layer's PastelID)."""
    return await _one(node, checksum(address))


@router.get("/get_sn_data_from_sn_pubkey/{pubkey}")
async def sn_by_pubkey(pubkey: str, node: Supernode = Depends(get_node)) -> dict[str, Any]:
    """A member by its secp256k1 public key (0x04 + 128 hex, uncompressed)."""
    key = pubkey.lower()
    if not key.startswith("0x"):
        key = "0x" + key
    if len(key) != 132 or not key.startswith("0x04"):
        raise BadRequest("public key must be 0x04 followed by 128 hex digits (uncompressed)")
    for m in node.network.members:
        if m.public_key == key:
            return await _one(node, m.address)
    raise NotFound("no member has that public key")


@router.get("/peer_penalties")
async def peer_penalties(
    address: str | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
    node: Supernode = Depends(get_node),
) -> dict[str, Any]:
    """Penalties this daemon gave its peers, newest first, with reasons."""
    addr = checksum(address) if address else None
    with node.db.read() as conn:
        rows = peers_repo.recent_penalties(conn, addr, limit)
    return {"penalties": rows}
