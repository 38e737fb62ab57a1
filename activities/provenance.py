"""Activities of content provenance: the agent signs a provenance claim (EIP-712).

``content.sign_claim`` takes the claim the workflow built (everything but the agent), fills in
the agent's ``did:pkh`` from the worker's agent key and signs the claim in the domain of the
deployment's ProvenanceRegistry. The key never leaves the worker; the workflow checks the
signature it gets back (:func:`ledgerflow.provenance.claims.claim_signer`) before it records and
registers the claim. The registration itself is a generic ``contract.call`` step
(``ProvenanceRegistry.register`` through the orchestrator's outbox).

:func:`file_hashes` is how a file is hashed for a lookup (docs/workflows.md): UTF-8 text without
NUL bytes as its canonical body (content canonicalization v1, ``canonVersion`` 1) and also as raw
bytes (``canonVersion`` 0, how binary assets are registered); anything else only as bytes. An
altered copy hashes differently and comes back not registered; what the canonicalization removes
(line endings, trailing spaces, Unicode normal form) does not alter the canonical hash.
"""

from __future__ import annotations

from pydantic import Field

from ledgerflow.activities.content import CONTENT_CANON_VERSION, canonical_text
from ledgerflow.checkpoint.canonical import keccak, to_hex
from ledgerflow.flow import policies
from ledgerflow.flow.activity import step_activity
from ledgerflow.flow.registry import Activities
from ledgerflow.provenance.claims import ZERO32, ContentClaim, Origin, SignedClaim, sign_claim
from ledgerflow.provenance.identity import did_pkh
from ledgerflow.provenance.lookup import FileHash
from ledgerflow.types import Bytes32, StrictModel

__all__ = ["ClaimDraft", "ProvenanceActivities", "file_hashes"]

#: The name of the ProvenanceRegistry in a deployment.
REGISTRY = "ProvenanceRegistry"


class ClaimDraft(StrictModel):
    """Argument of ``content.sign_claim``: the claim without its agent (the worker's key)."""

    content_hash: Bytes32
    document_hash: Bytes32
    canon_version: int = Field(ge=0, lt=2**32)
    origin: Origin
    generator_model: str = Field("", max_length=200)
    generator_provider: str = Field("", max_length=200)
    prompt_hash: Bytes32 = ZERO32
    author: str = Field("", max_length=120)
    workflow_id: str = Field(max_length=255)
    run_id: str = Field(max_length=64)
    step_seq: int = Field(ge=0, lt=2**64)


class ProvenanceActivities(Activities):
    """``content.sign_claim``, bound to the worker's runtime (agent key, deployment)."""

    @step_activity(
        "content.sign_claim",
        kind="activity",
        policy=policies.ACTIVITY,
        summary="sign the provenance claim with the agent key (EIP-712)",
    )
    async def sign_claim(self, draft: ClaimDraft) -> SignedClaim:
        """Sign ``draft`` as the agent.

        Raises:
            ConfigError: no agent key (a remote signer cannot sign claims) or no
                ProvenanceRegistry in the deployment (run ``ledgerflow deploy``).
        """
        rt = self.rt
        registry = rt.address(REGISTRY)
        chain_id = rt.chain_id
        key = rt.key_for("agent")
        from eth_account import Account

        agent = str(Account.from_key(key).address)
        claim = ContentClaim(**draft.model_dump(), agent=did_pkh(chain_id, agent))
        return sign_claim(claim, key, chain_id=chain_id, registry=registry)


def file_hashes(data: bytes) -> list[FileHash]:
    """The hashes ``data`` is registered under, the canonical text's first (see module doc)."""
    raw = FileHash(content_hash=to_hex(keccak(data)), canon_version=0, method="bytes")
    if b"\x00" in data:
        return [raw]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [raw]
    body = canonical_text(text.removeprefix("\ufeff"))
    canon = FileHash(
        content_hash=to_hex(keccak(body.encode("utf-8"))),
        canon_version=CONTENT_CANON_VERSION,
        method="text-v1",
    )
    return [canon] if canon.content_hash == raw.content_hash else [canon, raw]
