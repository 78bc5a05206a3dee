"""Edge checks shared by routers: addresses are checksummed here."""

from __future__ import annotations

import re

from eth_utils import is_checksum_address, to_checksum_address

from supernode.errors import BadRequest

_ADDR = re.compile(r"^0x[0-9a-fA-F]{40}$")


def checksum(address: str, what: str = "address") -> str:
    """Checksum an address; all-lower or all-upper hex is accepted, a wrong checksum not."""
    if not _ADDR.match(address):
        raise BadRequest(f"{what} must be 0x followed by 40 hex digits")
    body = address[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(address):
        raise BadRequest(f"{what} has a wrong EIP-55 checksum")
    return to_checksum_address(address)
