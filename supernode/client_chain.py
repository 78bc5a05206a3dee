"""The buyer's side of a purchase: one payment on the chain, over its JSON-RPC."""

from __future__ import annotations

import atexit
import time
from typing import Any

import httpx

from supernode.crypto.keys import Identity


class ChainRPCError(Exception):
    """The chain's JSON-RPC answered with an error."""


_RPC_CLIENTS: dict[str, httpx.Client] = {}


@atexit.register
def _close_rpc_clients() -> None:
    for client in _RPC_CLIENTS.values():
        client.close()
    _RPC_CLIENTS.clear()


def _rpc_client(rpc_url: str) -> httpx.Client:
    """One keep-alive client per chain URL (a new client per call costs ~35 ms here)."""
    client = _RPC_CLIENTS.get(rpc_url)
    if client is None or client.is_closed:
        client = _RPC_CLIENTS[rpc_url] = httpx.Client()
    return client


def rpc_call(rpc_url: str, method: str, params: list[Any], timeout_s: float = 10.0) -> Any:
    resp = _rpc_client(rpc_url).post(
        rpc_url,
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
        timeout=timeout_s,
    )
    data = resp.json()
    if "error" in data:
        raise ChainRPCError(f"{method}: {data['error']}")
    return data["result"]


def send_payment(
    rpc_url: str,
    payer: Identity,
    *,
    to: str | None,
    value_wei: int,
    data: str = "0x",
    gas: int | None = None,
    wait_s: float = 60.0,
) -> str:
    """Sign a transaction with eth-account, send it, wait until it is mined; returns the
    transaction hash (0x…). ``to`` None creates a contract."""
    from eth_account import Account
    from eth_utils import to_checksum_address

    chain_id = int(rpc_call(rpc_url, "eth_chainId", []), 16)
    nonce = int(rpc_call(rpc_url, "eth_getTransactionCount", [payer.address, "pending"]), 16)
    gas_price = int(rpc_call(rpc_url, "eth_gasPrice", []), 16)
    tx: dict[str, Any] = {
        "nonce": nonce,
        "gasPrice": gas_price,
        "value": value_wei,
        "data": data,
        "chainId": chain_id,
    }
    call: dict[str, Any] = {"from": payer.address, "value": hex(value_wei), "data": data}
    if to is not None:
        tx["to"] = call["to"] = to_checksum_address(to)
    if gas is None:
        estimate = int(rpc_call(rpc_url, "eth_estimateGas", [call]), 16)
        gas = estimate + estimate // 5
    tx["gas"] = gas
    signed = Account.sign_transaction(tx, payer.private_key)
    tx_hash = rpc_call(rpc_url, "eth_sendRawTransaction", [signed.raw_transaction.to_0x_hex()])
    deadline = time.time() + wait_s
    while time.time() < deadline:
        if rpc_call(rpc_url, "eth_getTransactionReceipt", [tx_hash]) is not None:
            return tx_hash
        time.sleep(0.2)
    raise TimeoutError(f"{tx_hash} not mined within {wait_s:.0f} s")
