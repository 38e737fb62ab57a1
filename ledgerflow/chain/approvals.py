"""EIP-712 approvals of the AgentPolicy (rulebook v2): build, sign locally, recover, hash.

An approval is the typed message ``Approval(bytes32 orderId, address agent, address supplier,
uint256 amount, bytes32 decisionHash, uint64 expiry)`` in the domain ``{name: "ledgerflow
AgentPolicy", version: "2", chainId, verifyingContract: <the AgentPolicy>}``, signed by an
approver's own key. The policy checks the signatures on chain against the agent's registered
approvers and threshold; :class:`SignedApproval` values are what ``Escrow.open`` takes as
``approvals`` (``(signer, expiry, signature)`` tuples), and :func:`approvals_hash` is the
``approvalsHash`` that ``EscrowOpened`` and ``SpendApproved`` carry.

Signing uses eth_account's ``sign_typed_data`` (keys never leave the process); recovery uses
``recover_message``. Contract (ERC-1271) approvers such as a Safe sign with their own tooling; the
policy accepts them, :func:`recover` only covers EOAs.

:class:`ApprovalTerms` and :class:`ApprovalSignature` are the same things as pydantic models, for
workflow state, Update arguments and webhooks. :func:`signer_of` recovers the signer of an
:class:`ApprovalSignature` with no help from eth_utils or eth_account (pycryptodome's keccak and
libsecp256k1 through coincurve only), so a workflow's Update validator can check a signature in
Temporal's sandbox, deterministically, before it counts it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak
from pydantic import Field
from web3 import Web3

from ledgerflow.chain.eip712 import (
    address_word,
    domain_separator,
    keccak256,
    recover_digest_signer,
    typed_digest,
    uint_word,
)
from ledgerflow.errors import ConfigError
from ledgerflow.types import Address, Bytes32, StrictModel

__all__ = [
    "APPROVAL_TYPES",
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "Approval",
    "ApprovalSignature",
    "ApprovalTerms",
    "SignedApproval",
    "approvals_hash",
    "digest",
    "read_key_file",
    "recover",
    "sign",
    "signer_of",
    "typed_data",
    "write_key_file",
]

DOMAIN_NAME = "ledgerflow AgentPolicy"
DOMAIN_VERSION = "2"

#: The EIP-712 types of an approval (``EIP712Domain`` is implied by eth_account).
APPROVAL_TYPES: dict[str, list[dict[str, str]]] = {
    "Approval": [
        {"name": "orderId", "type": "bytes32"},
        {"name": "agent", "type": "address"},
        {"name": "supplier", "type": "address"},
        {"name": "amount", "type": "uint256"},
        {"name": "decisionHash", "type": "bytes32"},
        {"name": "expiry", "type": "uint64"},
    ]
}

_UINT64_MAX = 2**64 - 1


def _b32(value: bytes | str, what: str) -> bytes:
    raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)
    if len(raw) != 32:
        raise ValueError(f"{what} must be 32 bytes, got {len(raw)}")
    return raw


def _address(value: str, what: str) -> str:
    if not Web3.is_address(value):
        raise ValueError(f"{what} is not an address: {value!r}")
    return Web3.to_checksum_address(value)


@dataclass(frozen=True)
class Approval:
    """The terms an approver signs: this order, agent, supplier, amount and decision, until
    ``expiry`` (unix seconds)."""

    order_id: bytes
    agent: str
    supplier: str
    amount: int
    decision_hash: bytes
    expiry: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "order_id", _b32(self.order_id, "order_id"))
        object.__setattr__(self, "decision_hash", _b32(self.decision_hash, "decision_hash"))
        object.__setattr__(self, "agent", _address(self.agent, "agent"))
        object.__setattr__(self, "supplier", _address(self.supplier, "supplier"))
        if not 0 <= self.amount < 2**256:
            raise ValueError("amount must be a uint256")
        if not 0 <= self.expiry <= _UINT64_MAX:
            raise ValueError("expiry must be a uint64")

    def message(self) -> dict[str, Any]:
        return {
            "orderId": self.order_id,
            "agent": self.agent,
            "supplier": self.supplier,
            "amount": self.amount,
            "decisionHash": self.decision_hash,
            "expiry": self.expiry,
        }


@dataclass(frozen=True)
class SignedApproval:
    """One approver's signature over an :class:`Approval` (``Escrow.open``'s tuple)."""

    signer: str
    expiry: int
    signature: bytes

    def as_abi(self) -> tuple[str, int, bytes]:
        """The ``(address signer, uint64 expiry, bytes signature)`` tuple for web3."""
        return (self.signer, self.expiry, self.signature)

    def to_json(self) -> dict[str, Any]:
        return {
            "signer": self.signer,
            "expiry": self.expiry,
            "signature": "0x" + self.signature.hex(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SignedApproval:
        """Parse :meth:`to_json` output (the signer checksummed, the signature 0x-hex).

        Raises:
            ValueError: a field is missing or malformed.
        """
        try:
            signer = _address(str(data["signer"]), "signer")
            expiry = int(data["expiry"])
            signature = bytes.fromhex(str(data["signature"]).removeprefix("0x"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a signed approval: {exc}") from None
        if not 0 <= expiry <= _UINT64_MAX:
            raise ValueError("expiry must be a uint64")
        return cls(signer=signer, expiry=expiry, signature=signature)


def typed_data(approval: Approval, *, chain_id: int, policy: str) -> dict[str, Any]:
    """The full EIP-712 document (``domain``, ``types``, ``primaryType``, ``message``), as a
    wallet's ``eth_signTypedData_v4`` takes it."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            **APPROVAL_TYPES,
        },
        "primaryType": "Approval",
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": chain_id,
            "verifyingContract": _address(policy, "policy"),
        },
        "message": approval.message(),
    }


def digest(approval: Approval, *, chain_id: int, policy: str) -> bytes:
    """The 32-byte EIP-712 hash the approver signs (``AgentPolicy.approvalDigest``)."""
    document = typed_data(approval, chain_id=chain_id, policy=policy)
    signable = encode_typed_data(full_message=document)
    return bytes(keccak(b"\x19" + signable.version + signable.header + signable.body))


def sign(approval: Approval, key: str | bytes, *, chain_id: int, policy: str) -> SignedApproval:
    """Sign ``approval`` with a private key, locally.

    Raises:
        ConfigError: the key is not a valid secp256k1 private key.
    """
    try:
        account = Account.from_key(key)
    except (ValueError, TypeError):
        raise ConfigError("the approver key is not a valid secp256k1 private key") from None
    signed = account.sign_typed_data(
        full_message=typed_data(approval, chain_id=chain_id, policy=policy)
    )
    return SignedApproval(
        signer=account.address, expiry=approval.expiry, signature=bytes(signed.signature)
    )


def recover(approval: Approval, signature: bytes, *, chain_id: int, policy: str) -> str:
    """The EOA whose key made ``signature`` over ``approval`` in this domain (checksummed).

    A signature over other terms, another chain or another policy recovers another address.
    """
    document = typed_data(approval, chain_id=chain_id, policy=policy)
    signable = encode_typed_data(full_message=document)
    return str(Account.recover_message(signable, signature=signature))


def approvals_hash(approvals: Sequence[SignedApproval]) -> bytes:
    """``keccak256(abi.encode(approvals))`` as the policy computes it; 32 zero bytes for none."""
    if not approvals:
        return b"\x00" * 32
    encoded = abi_encode(["(address,uint64,bytes)[]"], [[a.as_abi() for a in approvals]])
    return bytes(keccak(encoded))


def write_key_file(path: Path | str, key: str) -> None:
    """Write a 0x-hex private key to ``path``, readable by the owner only (mode 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    os.chmod(path, 0o600)


def read_key_file(path: Path | str) -> str:
    """Read a 0x-hex private key from ``path`` (one line).

    Raises:
        ConfigError: the file is missing, readable by group or others, or holds no valid key.
            The message never quotes the file's content.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"key file {path} is accessible by others; chmod 600 it")
    try:
        Account.from_key(text)
    except (ValueError, TypeError):
        raise ConfigError(f"key file {path} does not hold a 0x-hex private key") from None
    return text


# --- as models, and checked without eth_utils (workflow sandbox) --------------------------------

_MAX_SIGNATURE_HEX = 2 * 2048  # an ERC-1271 signature may be longer than 65 bytes; bounded


class ApprovalSignature(StrictModel):
    """One approver's EIP-712 signature over a payment's :class:`ApprovalTerms` (what the
    ``approve`` Update, ``ledgerflow approve --key-file`` and the SDK send)."""

    signer: Address = Field(description="the approver's address (it must be registered)")
    expiry: int = Field(ge=0, le=_UINT64_MAX, description="unix seconds the approval is good to")
    signature: str = Field(
        pattern=rf"^0x([0-9a-fA-F]{{2}}){{65,{_MAX_SIGNATURE_HEX // 2}}}$",
        description="0x-hex signature (65 bytes r || s || v for an EOA)",
    )

    def signed(self) -> SignedApproval:
        return SignedApproval(
            signer=self.signer, expiry=self.expiry, signature=bytes.fromhex(self.signature[2:])
        )

    @classmethod
    def of(cls, signed: SignedApproval) -> ApprovalSignature:
        hex_signature = "0x" + signed.signature.hex()
        return cls(signer=signed.signer, expiry=signed.expiry, signature=hex_signature)


class ApprovalTerms(StrictModel):
    """What approvers of one payment sign, and who may: a run's state shows this while it waits
    for approval; :meth:`approval` is the message to sign."""

    order_id: Bytes32
    agent: Address
    supplier: Address
    amount: int = Field(ge=0, description="token units")
    decision_hash: Bytes32 = Field(description="step hash of the decision that chose the payment")
    chain_id: int = Field(gt=0)
    policy: Address = Field(description="the AgentPolicy (EIP-712 verifying contract)")
    required: int = Field(ge=0, description="signatures needed (0: an unsigned approval will do)")
    approvers: list[Address] = Field(default_factory=list, max_length=255)
    unsigned_limit: int = Field(ge=0, description="above this only signatures approve")
    signed_by: list[Address] = Field(default_factory=list, description="signatures counted so far")

    def approval(self, expiry: int) -> Approval:
        return Approval(
            order_id=bytes.fromhex(self.order_id[2:]),
            agent=self.agent,
            supplier=self.supplier,
            amount=self.amount,
            decision_hash=bytes.fromhex(self.decision_hash[2:]),
            expiry=expiry,
        )

    def typed_data(self, expiry: int) -> dict[str, Any]:
        """The EIP-712 document to sign (a wallet's ``eth_signTypedData_v4``)."""
        return typed_data(self.approval(expiry), chain_id=self.chain_id, policy=self.policy)

    def sign(self, key: str | bytes, expiry: int) -> ApprovalSignature:
        """Sign these terms with a private key, locally."""
        signed = sign(self.approval(expiry), key, chain_id=self.chain_id, policy=self.policy)
        return ApprovalSignature.of(signed)


_APPROVAL_TYPEHASH = keccak256(
    b"Approval(bytes32 orderId,address agent,address supplier,uint256 amount,"
    b"bytes32 decisionHash,uint64 expiry)"
)


def terms_digest(terms: ApprovalTerms, expiry: int) -> bytes:
    """The EIP-712 digest of ``terms`` with ``expiry``, computed by hand (the same 32 bytes as
    :func:`digest` and ``AgentPolicy.approvalDigest``; tested against both)."""
    struct = keccak256(
        _APPROVAL_TYPEHASH
        + bytes.fromhex(terms.order_id[2:])
        + address_word(terms.agent)
        + address_word(terms.supplier)
        + uint_word(terms.amount)
        + bytes.fromhex(terms.decision_hash[2:])
        + uint_word(expiry)
    )
    domain = domain_separator(DOMAIN_NAME, DOMAIN_VERSION, terms.chain_id, terms.policy)
    return typed_digest(domain, struct)


def signer_of(terms: ApprovalTerms, signature: ApprovalSignature) -> str | None:
    """The EOA whose key made ``signature`` over ``terms`` (checksummed), or None when the bytes
    are no valid 65-byte secp256k1 signature (high-s and bad ``v`` refused, as OpenZeppelin's
    ECDSA does). Needs neither eth_utils nor eth_account: safe in Temporal's sandbox."""
    return recover_digest_signer(terms_digest(terms, signature.expiry), signature.signature)
