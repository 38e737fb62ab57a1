"""``did:pkh`` identifiers (CAIP-10 account ids) of EVM keys.

An agent, an approver or an author is identified by the account of its key on one chain:
``did:pkh:eip155:<chainId>:<address>`` with the address in EIP-55 form, e.g.
``did:pkh:eip155:31337:0x70997970C51812dc3A010C7d01b50e0d17dc79C8``. Pure functions on
strings (pycryptodome's keccak through :func:`ledgerflow.types.eip55`), so workflow code can use
them in Temporal's sandbox.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, Field

from ledgerflow.types import eip55

__all__ = ["DID_PKH_PREFIX", "Did", "PkhDid", "did_pkh", "parse_did_pkh"]

#: Every ledgerflow DID starts with this (CAIP-2 namespace ``eip155``: EVM chains).
DID_PKH_PREFIX = "did:pkh:eip155:"
_DID_RE = re.compile(r"^did:pkh:eip155:([1-9][0-9]{0,31}):(0x[0-9a-fA-F]{40})$")


@dataclass(frozen=True)
class PkhDid:
    """A parsed ``did:pkh:eip155`` identifier."""

    chain_id: int
    address: str

    def __str__(self) -> str:
        return did_pkh(self.chain_id, self.address)


def did_pkh(chain_id: int, address: str) -> str:
    """The ``did:pkh`` of ``address`` on ``chain_id`` (the address checksummed).

    Raises:
        ValueError: the chain id is not positive or the address is not 20 bytes of hex.
    """
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id <= 0:
        raise ValueError(f"a chain id is a positive integer, got {chain_id!r}")
    return f"{DID_PKH_PREFIX}{chain_id}:{eip55(address)}"


def parse_did_pkh(did: str) -> PkhDid:
    """Parse ``did:pkh:eip155:<chainId>:<address>``.

    A mixed-case address must carry a valid EIP-55 checksum (a typo is refused, not resolved to
    another account); an all-lower or all-upper one is accepted.

    Raises:
        ValueError: not a ``did:pkh:eip155`` identifier, or a bad checksum.
    """
    m = _DID_RE.match(did) if isinstance(did, str) else None
    if m is None:
        raise ValueError(f"not a did:pkh:eip155 identifier: {did!r}")
    address = m.group(2)
    checksummed = eip55(address)
    hex_part = address[2:]
    if hex_part != hex_part.lower() and hex_part != hex_part.upper() and address != checksummed:
        raise ValueError(f"the address in {did!r} has a bad EIP-55 checksum")
    return PkhDid(chain_id=int(m.group(1)), address=checksummed)


def _normal_did(value: str) -> str:
    return str(parse_did_pkh(value))


#: A ``did:pkh:eip155`` identifier in a model (normalised to the checksummed address).
Did = Annotated[
    str,
    Field(max_length=120, description="did:pkh:eip155:<chainId>:<address> (CAIP-10)"),
    AfterValidator(_normal_did),
]
