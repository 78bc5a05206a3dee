"""The network file: a federation's genesis, and `network init`."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from supernode.crypto.keys import Identity, address_from_public_key, write_keystore
from supernode.reputation.rules import ReputationRules

Address = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{40}$")]


class Member(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: Address
    url: Annotated[str, StringConstraints(pattern=r"^https?://")]
    public_key: Annotated[str, StringConstraints(pattern=r"^0x04[0-9a-f]{128}$")]

    @field_validator("url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")


class NetworkFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    network_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    chain_id: int = Field(ge=1)
    payment_address: Address
    credit_price_wei: int = Field(ge=1)
    min_collateral_wei: int = Field(ge=0)
    confirmations_required: int = Field(ge=1)
    epoch_blocks: int = Field(ge=1)
    members: list[Member] = Field(min_length=1)
    # audit rates and score constants: every member must use the same
    reputation: ReputationRules = Field(default_factory=ReputationRules)

    @field_validator("members")
    @classmethod
    def _members_consistent(cls, members: list[Member]) -> list[Member]:
        seen: set[str] = set()
        for m in members:
            if address_from_public_key(bytes.fromhex(m.public_key[2:])) != m.address:
                raise ValueError(f"member {m.address}: public key does not match the address")
            if m.address in seen:
                raise ValueError(f"member {m.address} listed twice")
            seen.add(m.address)
        return members

    def member(self, address: str) -> Member | None:
        return next((m for m in self.members if m.address == address), None)

    @classmethod
    def load(cls, path: Path) -> NetworkFile:
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"no network file at {path}: get your federation's, or make a local one with "
                "`supernode network init`"
            ) from exc

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(), indent=2) + "\n")


def init_network(
    out_dir: Path,
    *,
    urls: list[str],
    chain_id: int,
    passphrase: str,
    credit_price_wei: int,
    min_collateral_wei: int,
    confirmations_required: int,
    epoch_blocks: int,
    light_kdf: bool,
    network_id: str | None = None,
    reputation: ReputationRules | None = None,
) -> tuple[NetworkFile, list[Path]]:
    """Make a keystore per member URL and one for the payment address, and the network
    file listing the members. Returns the file and the members' keystore paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keystores: list[Path] = []
    listed: list[Member] = []
    for i, url in enumerate(urls):
        ident = Identity.generate()
        path = out_dir / f"member-{i}.keystore.json"
        write_keystore(path, ident, passphrase, light=light_kdf)
        keystores.append(path)
        listed.append(
            Member(
                address=ident.address,
                url=url,
                public_key=ident.public_key_hex,
            )
        )
    treasury = Identity.generate()
    write_keystore(out_dir / "payment.keystore.json", treasury, passphrase, light=light_kdf)
    net = NetworkFile(
        network_id=network_id or f"supernode-local-{secrets.token_hex(4)}",
        chain_id=chain_id,
        payment_address=treasury.address,
        credit_price_wei=credit_price_wei,
        min_collateral_wei=min_collateral_wei,
        confirmations_required=confirmations_required,
        epoch_blocks=epoch_blocks,
        members=listed,
        reputation=reputation or ReputationRules(),
    )
    net.save(out_dir / "network.json")
    return net, keystores
