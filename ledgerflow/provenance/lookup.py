"""Who registered a file, when, and how: the lookup behind ``ledgerflow provenance FILE`` and
``GET /provenance/{content_hash}``.

From the chain alone: the file's hash is the first topic of ``ContentRegistered`` logs of the
ProvenanceRegistry (one ``eth_getLogs``). Each log carries the claim's canonical JSON and the
agent's signature, so the lookup recomputes the EIP-712 claim hash from the JSON, checks it is the
logged ``claimHash``, recovers the signer and checks it is the logged agent and the claim's agent
DID, and checks the claim names the looked-up hash. The block's timestamp says when. A log that
fails any check is reported with its problems and does not count as a registration.

With the operator's store (optional), each registration also gets the step proof of the step that
recorded the signed claim (``ledgerflow proof``'s document), checked against the trusted
CheckpointRegistry, and the logged ``stepHash`` must be that step's hash.

The hashes of a file are :func:`ledgerflow.activities.provenance.file_hashes` (its canonical text
and its bytes); this module takes hashes, so it needs no file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from ledgerflow.chain.eip712 import recover_digest_signer
from ledgerflow.checkpoint.canonical import keccak, to_hex
from ledgerflow.errors import ConfigError
from ledgerflow.provenance.claims import ContentClaim, claim_digest, claim_json
from ledgerflow.provenance.identity import did_pkh

__all__ = [
    "FileHash",
    "ProvenanceReport",
    "Registration",
    "judge_credentials",
    "lookup",
    "parse_content_hash",
]

REGISTRY = "ProvenanceRegistry"
#: Largest file ``ledgerflow provenance`` reads (hashing a larger asset is a streaming job).
MAX_FILE_BYTES = 512 * 1024 * 1024


class FileHash(BaseModel):
    """One hash a file is looked up under."""

    content_hash: str
    canon_version: int = Field(description="1: canonical text (v1); 0: raw bytes; -1: given")
    method: Literal["text-v1", "bytes", "hash"]


class Registration(BaseModel):
    """One ``ContentRegistered`` log, checked."""

    ok: bool
    problems: list[str] = Field(default_factory=list)
    content_hash: str
    claim_hash: str
    agent: str = Field(description="the address the registry logged (and checked signed)")
    agent_did: str | None = None
    author_did: str | None = None
    origin: str | None = None
    generator_model: str | None = None
    generator_provider: str | None = None
    prompt_hash: str | None = None
    canon_version: int | None = None
    workflow_id: str | None = None
    run_id: str | None = None
    step_seq: int | None = None
    step_hash: str
    tx_hash: str
    block_number: int
    block_time: str | None = Field(None, description="the block's timestamp, ISO 8601 UTC")
    claim: dict[str, Any] | None = None
    signature: str
    proof: dict[str, Any] | None = Field(
        None, description="the claim step's proof document (with the store only)"
    )
    proof_ok: bool | None = Field(None, description="the proof checked against the chain")
    proof_note: str | None = None


class ProvenanceReport(BaseModel):
    """The answer for one file or hash (``ledgerflow provenance --json``)."""

    registered: bool
    file: str | None = None
    content_hash: str | None = Field(None, description="the hash that matched (else the first)")
    hashes: list[FileHash]
    chain_id: int
    registry: str
    source: Literal["chain", "chain+store"] = "chain"
    registrations: list[Registration] = Field(default_factory=list)
    credentials: dict[str, Any] | None = Field(
        None,
        description="the file's C2PA content credentials, when it carries a manifest: status "
        "(valid, untrusted, altered), the claim, and whether the chain holds that claim",
    )


def parse_content_hash(value: str) -> str:
    """``value`` as a lower-case 0x-hex 32-byte hash.

    Raises:
        ConfigError: not 32 bytes of hex.
    """
    text = value.strip().lower()
    if not text.startswith("0x"):
        text = "0x" + text
    try:
        raw = bytes.fromhex(text[2:])
    except ValueError:
        raise ConfigError(f"not a 0x-hex 32-byte content hash: {value[:80]!r}") from None
    if len(raw) != 32:
        raise ConfigError(f"a content hash is 32 bytes, got {len(raw)}")
    return text


def _topic0() -> str:
    from ledgerflow.chain.artifacts import load_artifact

    event = next(
        e
        for e in load_artifact(REGISTRY).abi
        if e.get("type") == "event" and e.get("name") == "ContentRegistered"
    )
    signature = f"ContentRegistered({','.join(i['type'] for i in event['inputs'])})"
    return to_hex(keccak(signature.encode()))


def _hexs(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return to_hex(bytes(value))
    text = str(value)
    return text if text.startswith("0x") else "0x" + text


def check_registration(
    args: dict[str, Any], *, content_hash: str, chain_id: int, registry: str
) -> tuple[ContentClaim | None, list[str]]:
    """Check one decoded ``ContentRegistered`` log: its claim JSON against its claim hash, the
    signature against the agent, the agent DID, and the content hash (see module doc)."""
    import json

    problems: list[str] = []
    try:
        claim = ContentClaim.model_validate(json.loads(args["claim"]))
    except (ValueError, ValidationError):
        return None, ["the logged claim is not a ContentClaim"]
    if claim_json(claim) != args["claim"]:
        problems.append("the logged claim is not in canonical form")
    digest = claim_digest(claim, chain_id=chain_id, registry=registry)
    if to_hex(digest) != _hexs(args["claimHash"]).lower():
        problems.append("the claim hash is not the EIP-712 digest of the logged claim")
    signer = recover_digest_signer(digest, _hexs(args["signature"]))
    agent = str(args["agent"])
    if signer is None or signer.lower() != agent.lower():
        problems.append("the signature over the claim is not the agent's")
    elif claim.agent != did_pkh(chain_id, signer):
        problems.append("the claim's agent DID is not the signer on this chain")
    if claim.content_hash.lower() != content_hash:
        problems.append("the claim names another content hash")
    return claim, problems


async def _block_time(w3: Any, number: int, cache: dict[int, str]) -> str:
    if number not in cache:
        block = await w3.eth.get_block(number)
        ts = datetime.fromtimestamp(int(block["timestamp"]), UTC)
        cache[number] = ts.isoformat(timespec="seconds").replace("+00:00", "Z")
    return cache[number]


async def lookup(
    w3: Any,
    hashes: list[FileHash],
    *,
    chain_id: int,
    registry: str,
    from_block: int = 0,
    file: str | None = None,
) -> ProvenanceReport:
    """Look ``hashes`` up in the ProvenanceRegistry at ``registry`` on ``w3`` (an AsyncWeb3 on
    chain ``chain_id``): the chain alone, no store.

    Raises:
        ChainError: the node cannot be queried or is on another chain.
    """
    from web3 import Web3

    from ledgerflow.chain.artifacts import load_artifact
    from ledgerflow.errors import ChainError

    try:
        node_chain = int(await w3.eth.chain_id)
    except Exception as exc:
        raise ChainError(f"cannot query the chain: {type(exc).__name__}") from None
    if node_chain != chain_id:
        raise ChainError(f"the node is on chain {node_chain}, the registry on chain {chain_id}")
    address = Web3.to_checksum_address(registry.lower())
    contract = w3.eth.contract(address=address, abi=load_artifact(REGISTRY).abi)
    event = contract.events.ContentRegistered()
    topic0 = _topic0()
    times: dict[int, str] = {}
    report = ProvenanceReport(
        registered=False,
        file=file,
        content_hash=hashes[0].content_hash if hashes else None,
        hashes=hashes,
        chain_id=chain_id,
        registry=address,
    )
    for h in hashes:
        try:
            logs = await w3.eth.get_logs(
                {
                    "address": address,
                    "topics": [topic0, h.content_hash],
                    "fromBlock": from_block,
                    "toBlock": "latest",
                }
            )
        except Exception as exc:
            raise ChainError(f"eth_getLogs failed: {type(exc).__name__}") from None
        for log in logs:
            decoded = event.process_log(log)
            args = dict(decoded["args"])
            claim, problems = check_registration(
                args, content_hash=h.content_hash, chain_id=chain_id, registry=address
            )
            number = int(log["blockNumber"])
            reg = Registration(
                ok=not problems,
                problems=problems,
                content_hash=h.content_hash,
                claim_hash=_hexs(args["claimHash"]),
                agent=str(args["agent"]),
                step_hash=_hexs(args["stepHash"]),
                tx_hash=_hexs(log["transactionHash"]),
                block_number=number,
                block_time=await _block_time(w3, number, times),
                signature=_hexs(args["signature"]),
            )
            if claim is not None:
                reg.claim = claim.model_dump(mode="json")
                reg.agent_did = claim.agent
                reg.author_did = claim.author or None
                reg.origin = claim.origin
                reg.generator_model = claim.generator_model
                reg.generator_provider = claim.generator_provider
                reg.prompt_hash = claim.prompt_hash
                reg.canon_version = claim.canon_version
                reg.workflow_id = claim.workflow_id
                reg.run_id = claim.run_id
                reg.step_seq = claim.step_seq
            report.registrations.append(reg)
            if reg.ok and not report.registered:
                report.registered = True
                report.content_hash = h.content_hash
    return report


async def add_store_proofs(runtime: Any, report: ProvenanceReport) -> None:
    """With the operator's store: attach to each registration the proof of the step that
    recorded its claim, checked against the trusted CheckpointRegistry; a logged ``stepHash``
    that is not that step's hash makes the registration not ok."""
    from ledgerflow.checkpoint.proofs import build_step_proof, verify_proof_document_async
    from ledgerflow.checkpoint.verify import trust_root
    from ledgerflow.errors import LedgerflowError

    report.source = "chain+store"
    for reg in report.registrations:
        if reg.workflow_id is None or reg.run_id is None or reg.step_seq is None:
            continue
        try:
            doc = await build_step_proof(runtime, reg.workflow_id, reg.step_seq, reg.run_id)
            check = await verify_proof_document_async(doc, w3=runtime.w3, trust=trust_root(runtime))
        except LedgerflowError as exc:
            reg.proof_note = str(exc)
            continue
        reg.proof = doc
        reg.proof_ok = check.ok and doc["step_hash"] == reg.step_hash.lower()
        if doc["step_hash"] != reg.step_hash.lower():
            reg.problems.append("the logged step hash is not the stored claim step's hash")
            reg.ok = False
        elif not check.ok:
            reg.proof_note = "; ".join(check.problems)
    report.registered = any(r.ok for r in report.registrations)


def judge_credentials(report: ProvenanceReport, credential: Any) -> None:
    """Attach a file's C2PA report (``credentials.read``) to its lookup; a copy counts as
    registered only when its manifest is intact and names a claim the chain holds for the
    original it names."""
    claim = credential.claim
    on_chain = claim is not None and any(
        r.ok and r.claim_hash == claim.claim_hash and r.content_hash == claim.content_hash
        for r in report.registrations
    )
    report.credentials = {
        "status": credential.status,
        "signature_valid": credential.signature_valid,
        "content_matches": credential.content_matches,
        "trusted": credential.trusted,
        "digital_source_type": credential.digital_source_type,
        "ai_generated": credential.ai_generated,
        "claim": claim.model_dump(mode="json") if claim is not None else None,
        "claim_on_chain": on_chain,
        "failures": [f.model_dump(mode="json") for f in credential.failures][:10],
    }
    file_hashes = {h.content_hash for h in report.hashes if h.method != "hash"}
    registered_itself = any(r.ok and r.content_hash in file_hashes for r in report.registrations)
    report.registered = registered_itself or (
        on_chain and credential.status in ("valid", "untrusted")
    )
