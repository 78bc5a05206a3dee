"""A small, bounded view of the chain: every call has a timeout; only reads retry."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from loguru import logger
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import BlockNotFound, TransactionNotFound

from supernode.errors import ChainError

T = TypeVar("T")


class ChainClient:
    def __init__(self, rpc_url: str, *, timeout_s: float, read_retries: int) -> None:
        self.rpc_url = rpc_url
        self.timeout_s = timeout_s
        self.read_retries = read_retries
        self.w3 = AsyncWeb3(
            AsyncHTTPProvider(
                rpc_url,
                request_kwargs={"timeout": timeout_s},
                exception_retry_configuration=None,  # our own bounded retries below
            )
        )
        self._session: aiohttp.ClientSession | None = None

    async def _keep_alive(self) -> None:
        """web3's own session closes each connection after one call; give it a pooled
        keep-alive session (made inside the running loop, on first use)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=16, keepalive_timeout=30)
            )
            await self.w3.provider.cache_async_session(self._session)  # type: ignore[attr-defined]

    async def _read(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run a read-only RPC call with a timeout, retrying (bounded, with back-off)."""
        await self._keep_alive()
        last: Exception | None = None
        for attempt in range(self.read_retries + 1):
            try:
                return await asyncio.wait_for(call(), timeout=self.timeout_s)
            except (TransactionNotFound, BlockNotFound):
                raise  # an answer, not a failure: never retried
            except Exception as exc:  # noqa: BLE001 - timeouts, refused, RPC errors
                last = exc
                if attempt < self.read_retries:
                    await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        logger.warning(
            "chain read {} failed after {} tries: {!r}", what, self.read_retries + 1, last
        )
        raise ChainError(f"{what}: {last!r}") from last

    async def chain_id(self) -> int:
        return await self._read("eth_chainId", lambda: self.w3.eth.chain_id)

    async def block_number(self) -> int:
        return await self._read("eth_blockNumber", lambda: self.w3.eth.block_number)

    async def block_timestamp(self, number: int) -> int | None:
        """The timestamp of block ``number``, or None while it is not mined."""
        if number < 0:
            return None
        try:
            block = await self._read("eth_getBlockByNumber", lambda: self.w3.eth.get_block(number))
        except BlockNotFound:
            return None
        return int(block["timestamp"])

    async def balance(self, address: str, block: int | None = None) -> int:
        ident = block if block is not None else "latest"
        return await self._read(
            "eth_getBalance", lambda: self.w3.eth.get_balance(address, block_identifier=ident)
        )

    async def transaction(self, tx_hash: str) -> dict[str, Any] | None:
        """The transaction, or None if the node does not know it."""
        try:
            tx = await self._read(
                "eth_getTransactionByHash", lambda: self.w3.eth.get_transaction(tx_hash)
            )  # type: ignore[arg-type]
        except TransactionNotFound:
            return None
        return dict(tx)

    async def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        """The receipt, or None while the transaction is not mined (or unknown)."""
        try:
            rec = await self._read(
                "eth_getTransactionReceipt", lambda: self.w3.eth.get_transaction_receipt(tx_hash)
            )  # type: ignore[arg-type]
        except TransactionNotFound:
            return None
        return dict(rec)

    async def close(self) -> None:
        try:
            await self.w3.provider.disconnect()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
        if self._session is not None and not self._session.closed:
            await self._session.close()
