"""Provenance claims: what an agent asserts about a piece of content, signed as EIP-712 data.

A claim is the typed message (docs/checkpoint-spec.md, "Provenance claims")::

    ContentClaim(bytes32 contentHash, bytes32 documentHash, uint32 canonVersion,
                 string origin, string generatorModel, string generatorProvider,
                 bytes32 promptHash, string author, string agent, string workflowId,
                 string runId, uint64 stepSeq)

in the domain ``{name: "ledgerflow Provenance", version: "1", chainId, verifyingContract: <the
ProvenanceRegistry>}``. ``contentHash`` is what a third party recomputes from a file (the
canonical text's keccak-256 for ``canonVersion`` 1, the raw bytes' for ``canonVersion`` 0);
``documentHash`` is ContentProvenanceWorkflow's ``content_hash`` (title, body, source and author);
``author`` and ``agent`` are ``did:pkh`` identifiers; ``stepSeq`` is the step of the run that
recorded the signed claim. The claim hash is the EIP-712 digest, the 32 bytes the agent signs.

:func:`claim_digest` and :func:`claim_signer` need neither eth_utils nor eth_account
(pycryptodome's keccak and coincurve only): the workflow checks the signature it gets back from
the signing activity in Temporal's sandbox. :func:`sign_claim` (eth_account) runs in activities
and in the CLI; it is tested to agree with the hand-written digest and with the registry.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ledgerflow.chain.eip712 import domain_separator, recover_digest_signer, typed_digest
from ledgerflow.chain.eip712 import keccak256 as _k
from ledgerflow.chain.eip712 import uint_word as _word
from ledgerflow.checkpoint.canonical import canonical_bytes
from ledgerflow.types import Address, Bytes32, StrictModel, eip55

__all__ = [
    "CLAIM_TYPES",
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "ZERO32",
    "ContentClaim",
    "Origin",
    "SignedClaim",
    "claim_digest",
    "claim_json",
    "claim_signer",
    "sign_claim",
    "typed_data",
]

DOMAIN_NAME = "ledgerflow Provenance"
DOMAIN_VERSION = "1"
ZERO32 = "0x" + "00" * 32

Origin = Literal["human", "synthetic"]

#: The EIP-712 types of a claim (``EIP712Domain`` is implied by eth_account).
CLAIM_TYPES: dict[str, list[dict[str, str]]] = {
    "ContentClaim": [
        {"name": "contentHash", "type": "bytes32"},
        {"name": "documentHash", "type": "bytes32"},
        {"name": "canonVersion", "type": "uint32"},
        {"name": "origin", "type": "string"},
        {"name": "generatorModel", "type": "string"},
        {"name": "generatorProvider", "type": "string"},
        {"name": "promptHash", "type": "bytes32"},
        {"name": "author", "type": "string"},
        {"name": "agent", "type": "string"},
        {"name": "workflowId", "type": "string"},
        {"name": "runId", "type": "string"},
        {"name": "stepSeq", "type": "uint64"},
    ]
}

_DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]


class ContentClaim(StrictModel):
    """The claim an agent signs about one piece of content (snake_case of the EIP-712 fields)."""

    content_hash: Bytes32 = Field(description="keccak-256 of the canonical text or of the bytes")
    document_hash: Bytes32 = Field(description="ContentProvenanceWorkflow's content_hash")
    canon_version: int = Field(
        ge=0, lt=2**32, description="1: content canonicalization v1 of text; 0: raw bytes"
    )
    origin: Origin = Field(description="human-authored or synthetic (AI-generated)")
    generator_model: str = Field("", max_length=200)
    generator_provider: str = Field("", max_length=200)
    prompt_hash: Bytes32 = Field(ZERO32, description="keccak-256 of the prompt; zero if none")
    author: str = Field("", max_length=120, description="the author's did:pkh, or empty")
    agent: str = Field(max_length=120, description="the signing agent's did:pkh")
    workflow_id: str = Field(max_length=255)
    run_id: str = Field(max_length=64)
    step_seq: int = Field(ge=0, lt=2**64, description="the step that recorded the signed claim")

    def message(self) -> dict[str, Any]:
        """The EIP-712 message (camelCase, bytes32 as bytes)."""
        return {
            "contentHash": bytes.fromhex(self.content_hash[2:]),
            "documentHash": bytes.fromhex(self.document_hash[2:]),
            "canonVersion": self.canon_version,
            "origin": self.origin,
            "generatorModel": self.generator_model,
            "generatorProvider": self.generator_provider,
            "promptHash": bytes.fromhex(self.prompt_hash[2:]),
            "author": self.author,
            "agent": self.agent,
            "workflowId": self.workflow_id,
            "runId": self.run_id,
            "stepSeq": self.step_seq,
        }


class SignedClaim(StrictModel):
    """A claim with the agent's signature, the domain it was signed in, and its digest."""

    claim: ContentClaim
    claim_hash: Bytes32 = Field(description="the EIP-712 digest the agent signed")
    signature: str = Field(pattern=r"^0x[0-9a-fA-F]{130}$", description="65 bytes r || s || v")
    signer: Address = Field(description="the agent's address")
    chain_id: int = Field(gt=0)
    registry: Address = Field(description="the ProvenanceRegistry (EIP-712 verifying contract)")


def claim_json(claim: ContentClaim) -> str:
    """The claim's canonical JSON (LCE-1 of its snake_case fields): what the registry's event
    carries, so the digest can be recomputed from the chain alone."""
    return canonical_bytes(claim.model_dump(mode="json")).decode("utf-8")


def typed_data(claim: ContentClaim, *, chain_id: int, registry: str) -> dict[str, Any]:
    """The full EIP-712 document (a wallet's ``eth_signTypedData_v4`` input)."""
    return {
        "types": {"EIP712Domain": _DOMAIN_FIELDS, **CLAIM_TYPES},
        "primaryType": "ContentClaim",
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": chain_id,
            "verifyingContract": eip55(registry),
        },
        "message": claim.message(),
    }


_CLAIM_TYPEHASH = _k(
    (
        "ContentClaim("
        + ",".join(f"{f['type']} {f['name']}" for f in CLAIM_TYPES["ContentClaim"])
        + ")"
    ).encode()
)


def claim_digest(claim: ContentClaim, *, chain_id: int, registry: str) -> bytes:
    """The EIP-712 digest of ``claim`` (the claim hash), computed by hand: sandbox-safe, and
    the same 32 bytes as eth_account's ``encode_typed_data`` (tested)."""
    domain = domain_separator(DOMAIN_NAME, DOMAIN_VERSION, chain_id, registry)
    struct = _k(
        _CLAIM_TYPEHASH
        + bytes.fromhex(claim.content_hash[2:])
        + bytes.fromhex(claim.document_hash[2:])
        + _word(claim.canon_version)
        + _k(claim.origin.encode())
        + _k(claim.generator_model.encode())
        + _k(claim.generator_provider.encode())
        + bytes.fromhex(claim.prompt_hash[2:])
        + _k(claim.author.encode())
        + _k(claim.agent.encode())
        + _k(claim.workflow_id.encode())
        + _k(claim.run_id.encode())
        + _word(claim.step_seq)
    )
    return typed_digest(domain, struct)


def claim_signer(signed: SignedClaim) -> str | None:
    """The EOA whose key signed ``signed.claim`` in its domain, or None (bad signature). The
    digest is recomputed from the claim, so a claim altered after signing recovers another
    address (or its stored ``claim_hash`` no longer matches)."""
    digest = claim_digest(signed.claim, chain_id=signed.chain_id, registry=signed.registry)
    if "0x" + digest.hex() != signed.claim_hash.lower():
        return None
    return recover_digest_signer(digest, signed.signature)


def sign_claim(claim: ContentClaim, key: str, *, chain_id: int, registry: str) -> SignedClaim:
    """Sign ``claim`` with a private key, locally (eth_account; not for workflow code).

    Raises:
        ConfigError: the key is not a valid secp256k1 private key.
    """
    from eth_account import Account

    from ledgerflow.errors import ConfigError

    try:
        account = Account.from_key(key)
    except (ValueError, TypeError):
        raise ConfigError("the agent key is not a valid secp256k1 private key") from None
    document = typed_data(claim, chain_id=chain_id, registry=registry)
    signed = account.sign_typed_data(full_message=document)
    sig = bytes(signed.signature)
    return SignedClaim(
        claim=claim,
        claim_hash="0x" + bytes(signed.message_hash).hex(),
        signature="0x" + sig.hex(),
        signer=account.address,
        chain_id=chain_id,
        registry=eip55(registry),
    )
