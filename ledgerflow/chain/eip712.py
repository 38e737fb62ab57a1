"""EIP-712 digests and signer recovery by hand, without eth_utils or eth_account.

Workflow code checks signatures (approvals, provenance claims) inside Temporal's sandbox, where
the web3 stack is heavy to import; pycryptodome's keccak and coincurve are enough. Each digest
built from these pieces is tested against eth_account's ``encode_typed_data`` and the contracts.
"""

from __future__ import annotations

import coincurve
from Crypto.Hash import keccak as _keccak

from ledgerflow.types import eip55

__all__ = [
    "DOMAIN_TYPEHASH",
    "address_word",
    "domain_separator",
    "keccak256",
    "recover_digest_signer",
    "typed_digest",
    "uint_word",
]

#: secp256k1's group order; signatures with s above half of it are refused (EIP-2).
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def keccak256(data: bytes) -> bytes:
    return _keccak.new(data=data, digest_bits=256).digest()


DOMAIN_TYPEHASH = keccak256(
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)


def uint_word(value: int) -> bytes:
    """A uint256 as its 32-byte ABI word."""
    return value.to_bytes(32, "big")


def address_word(address: str) -> bytes:
    """An address as its 32-byte ABI word (checksum checked)."""
    return bytes(12) + bytes.fromhex(eip55(address)[2:])


def domain_separator(name: str, version: str, chain_id: int, contract: str) -> bytes:
    """hashStruct(EIP712Domain) of ``{name, version, chainId, verifyingContract}``."""
    return keccak256(
        DOMAIN_TYPEHASH
        + keccak256(name.encode())
        + keccak256(version.encode())
        + uint_word(chain_id)
        + address_word(contract)
    )


def typed_digest(domain: bytes, struct_hash: bytes) -> bytes:
    """keccak256(0x1901 || domainSeparator || hashStruct(message))."""
    return keccak256(b"\x19\x01" + domain + struct_hash)


def recover_digest_signer(digest: bytes, signature: str) -> str | None:
    """The EOA that signed the 32-byte ``digest`` (checksummed), or None when ``signature`` is no
    valid 65-byte secp256k1 signature (high-s and bad ``v`` refused, as OpenZeppelin's ECDSA
    does)."""
    try:
        raw = bytes.fromhex(signature.removeprefix("0x"))
    except ValueError:
        return None
    if len(raw) != 65:
        return None
    r, s, v = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64]
    if v in (27, 28):
        v -= 27
    if v not in (0, 1) or not (0 < r < SECP256K1_N) or not (0 < s <= SECP256K1_N // 2):
        return None
    try:
        key = coincurve.PublicKey.from_signature_and_message(
            raw[:64] + bytes([v]), digest, hasher=None
        )
    except (ValueError, TypeError):
        return None
    return eip55("0x" + keccak256(key.format(compressed=False)[1:])[-20:].hex())
