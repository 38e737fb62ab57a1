"""Content provenance: did:pkh identities, signed EIP-712 claims, the ProvenanceRegistry, the
lookup from a file (chain alone, and with the store's step proof), and redaction.

The stack tests run ContentProvenanceWorkflow for real (Temporal, anvil, the store) and look the
content up the way a third party would.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak as eth_keccak

from ledgerflow.activities.content import canonical_text
from ledgerflow.activities.provenance import file_hashes
from ledgerflow.chain.deploy import DEV_KEYS, connect, contract
from ledgerflow.checkpoint.canonical import keccak, to_hex
from ledgerflow.checkpoint.verify import verify_run
from ledgerflow.errors import RecordNotFound, StoreError
from ledgerflow.provenance.claims import (
    ContentClaim,
    SignedClaim,
    claim_digest,
    claim_json,
    claim_signer,
    sign_claim,
    typed_data,
)
from ledgerflow.provenance.identity import did_pkh, parse_did_pkh
from ledgerflow.provenance.lookup import (
    FileHash,
    add_store_proofs,
    check_registration,
    lookup,
)
from ledgerflow.workflows.content import ContentRequest
from tests.conftest import Stack
from tests.test_cli import _cli
from tests.test_content import run_content
from tests.test_invoice import step_names

AGENT_KEY = DEV_KEYS[1]
AGENT = Account.from_key(AGENT_KEY).address
REGISTRY = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def _claim(**update: Any) -> ContentClaim:
    base = {
        "content_hash": "0x" + "11" * 32,
        "document_hash": "0x" + "22" * 32,
        "canon_version": 1,
        "origin": "synthetic",
        "generator_model": "gpt-test",
        "generator_provider": "openai",
        "author": did_pkh(1, "0x976EA74026E726554dB657fA54763abd0C3a0aa9"),
        "agent": did_pkh(31337, AGENT),
        "workflow_id": "wf-1",
        "run_id": "run-1",
        "step_seq": 1,
    }
    return ContentClaim.model_validate({**base, **update})


# ---- identity and claims (pure) -----------------------------------------------------------------


def test_did_pkh_round_trips_and_refuses_a_bad_checksum() -> None:
    did = did_pkh(31337, AGENT.lower())
    assert did == f"did:pkh:eip155:31337:{AGENT}"
    parsed = parse_did_pkh(did)
    assert (parsed.chain_id, parsed.address, str(parsed)) == (31337, AGENT, did)
    assert str(parse_did_pkh(did.lower().replace("did:pkh:eip155", "did:pkh:eip155"))) == did
    bad = did[:-1] + ("a" if did[-1] != "a" else "b")
    mixed = "did:pkh:eip155:1:0x" + AGENT[2:].swapcase()
    for wrong in ("did:pkh:eip155:0:" + AGENT, "did:ethr:" + AGENT, "did:pkh:eip155:1:0x12", mixed):
        with pytest.raises(ValueError):
            parse_did_pkh(wrong)
    parse_did_pkh(bad.lower())  # all lower case carries no checksum
    with pytest.raises(ValueError):
        did_pkh(0, AGENT)


def test_hand_written_claim_digest_matches_eth_account_and_recovers() -> None:
    claim = _claim()
    signable = encode_typed_data(full_message=typed_data(claim, chain_id=31337, registry=REGISTRY))
    expected = eth_keccak(b"\x19" + signable.version + signable.header + signable.body)
    assert claim_digest(claim, chain_id=31337, registry=REGISTRY) == expected
    signed = sign_claim(claim, AGENT_KEY, chain_id=31337, registry=REGISTRY)
    assert signed.claim_hash == "0x" + expected.hex()
    assert claim_signer(signed) == AGENT
    # Another chain, another registry or an altered claim: not the agent's claim.
    for other in (
        signed.model_copy(update={"chain_id": 1}),
        signed.model_copy(update={"registry": "0x" + "ab" * 20}),
        signed.model_copy(update={"claim": _claim(origin="human")}),
    ):
        assert claim_signer(SignedClaim.model_validate(other.model_dump())) is None


def test_check_registration_catches_a_forged_log() -> None:
    claim = _claim()
    signed = sign_claim(claim, AGENT_KEY, chain_id=31337, registry=REGISTRY)
    args = {
        "claim": claim_json(claim),
        "claimHash": bytes.fromhex(signed.claim_hash[2:]),
        "agent": AGENT,
        "signature": bytes.fromhex(signed.signature[2:]),
    }
    ok = {"content_hash": claim.content_hash, "chain_id": 31337, "registry": REGISTRY}
    assert check_registration(args, **ok)[1] == []  # type: ignore[arg-type]
    tampered = claim_json(claim).replace('"synthetic"', '"human"')
    problems = check_registration({**args, "claim": tampered}, **ok)[1]  # type: ignore[arg-type]
    assert "not the EIP-712 digest" in " ".join(problems)
    other_agent = Account.from_key(DEV_KEYS[2]).address
    problems = check_registration({**args, "agent": other_agent}, **ok)[1]  # type: ignore[arg-type]
    assert problems == ["the signature over the claim is not the agent's"]
    wrong_hash = {**ok, "content_hash": "0x" + "33" * 32}
    assert check_registration(args, **wrong_hash)[1] == [  # type: ignore[arg-type]
        "the claim names another content hash"
    ]


def test_file_hashes_text_canonical_and_binary_as_bytes() -> None:
    text = "Quarterly notes\r\n\r\n\r\nAll fine.  \n"
    hashes = file_hashes(text.encode())
    assert [h.method for h in hashes] == ["text-v1", "bytes"]
    assert hashes[0].content_hash == to_hex(keccak(canonical_text(text).encode()))
    assert hashes[1].content_hash == to_hex(keccak(text.encode()))
    # Encoding noise does not change the canonical hash; an edit does.
    same = file_hashes(b"Quarterly notes\n\nAll fine.")[0]
    assert same.content_hash == hashes[0].content_hash
    edited = file_hashes(b"Quarterly notes\n\nAll fine!")[0]
    assert edited.content_hash != hashes[0].content_hash
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    assert [h.method for h in file_hashes(png)] == ["bytes"]
    assert [h.method for h in file_hashes(b"\xff\xfe not utf-8")] == ["bytes"]


# ---- the registry contract ----------------------------------------------------------------------


def test_registry_refuses_strangers_replays_and_bad_signatures(stack: Stack) -> None:
    w3 = connect(stack.settings.rpc_url)
    registry = contract(w3, "ProvenanceRegistry", stack.deployment.address("ProvenanceRegistry"))
    orchestrator = Account.from_key(DEV_KEYS[0]).address
    claim = _claim(content_hash="0x" + uuid.uuid4().hex * 2)
    signed = sign_claim(
        claim, AGENT_KEY, chain_id=stack.deployment.chain_id, registry=registry.address
    )
    key = "0x" + uuid.uuid4().hex * 2
    args = [
        claim.content_hash,
        signed.claim_hash,
        "0x" + "44" * 32,
        key,
        AGENT,
        claim_json(claim),
        signed.signature,
    ]

    def reverts(sender: str, call_args: list[Any]) -> str:
        from web3.exceptions import ContractCustomError, ContractLogicError

        try:
            registry.functions.register(*call_args).call({"from": sender})
        except (ContractCustomError, ContractLogicError) as exc:
            return str(exc)
        return ""

    stranger = Account.from_key(DEV_KEYS[5]).address
    assert reverts(stranger, args)  # AccessControlUnauthorizedAccount
    bad = [*args[:4], Account.from_key(DEV_KEYS[2]).address, *args[5:]]
    assert reverts(orchestrator, bad)  # ProvenanceBadSignature
    assert reverts(orchestrator, ["0x" + "00" * 32, *args[1:]])  # ProvenanceEmptyContent
    tx = registry.functions.register(*args).transact({"from": orchestrator})
    assert w3.eth.wait_for_transaction_receipt(tx)["status"] == 1
    assert reverts(orchestrator, args)  # ProvenanceAlreadyRegistered
    assert registry.functions.isUsed(key).call() is True
    assert registry.functions.registrations(claim.content_hash).call() == 1


# ---- the workflow, the lookup, the CLI and the API ----------------------------------------------

ARTICLE = "Our release notes for 2.5.\n\nFaster anchoring, fewer fees.\n"


async def _registered_run(stack: Stack, body: str, **fields: Any) -> dict[str, Any]:
    request = ContentRequest(title="Release notes", body=body, **fields)
    res = await run_content(stack, request)
    assert res["outcome"] == "approved" and res["registered"] is True, res
    return res


async def _lookup(stack: Stack, data: bytes) -> Any:
    d = stack.deployment
    return await lookup(
        stack.runtime.w3,
        file_hashes(data),
        chain_id=d.chain_id,
        registry=d.address("ProvenanceRegistry"),
        from_block=d.block_number,
    )


async def test_a_registered_file_is_found_from_the_chain_alone(stack: Stack) -> None:
    body = ARTICLE + f"Build {uuid.uuid4().hex}.\n"
    author = did_pkh(1, "0x976EA74026E726554dB657fA54763abd0C3a0aa9")
    res = await _registered_run(
        stack,
        body,
        generator_model="gpt-test",
        generator_provider="openai",
        prompt_hash="0x" + "ab" * 32,
        author_did=author,
    )
    names = step_names(stack, res["id"])
    assert names == [
        "content.canonicalize",
        "content.sign_claim",
        "llm.classify_content",
        "content.outcome",
        "provenance.register",
    ]
    assert res["origin"] == "synthetic" and res["claim_step"] == 1
    agent_did = did_pkh(stack.deployment.chain_id, stack.deployment.agent)
    assert res["agent_did"] == agent_did

    # Encoding noise (CRLF, trailing blanks) is the same content.
    report = await _lookup(stack, body.replace("\n", "  \r\n").encode())
    assert report.registered and report.source == "chain"
    (reg,) = report.registrations
    assert reg.ok and reg.agent_did == agent_did and reg.author_did == author
    assert reg.origin == "synthetic" and reg.generator_model == "gpt-test"
    assert reg.generator_provider == "openai" and reg.prompt_hash == "0x" + "ab" * 32
    assert reg.workflow_id == res["id"] and reg.step_seq == 1 and reg.block_time
    assert reg.claim_hash == res["claim_hash"] and reg.tx_hash == res["registration_tx"]
    stored = stack.runtime.store.get_steps(res["id"], reg.run_id or "")[1]
    assert stored.name == "content.sign_claim" and stored.step_hash == reg.step_hash

    # With the store: the claim step's proof, checked against the CheckpointRegistry.
    await add_store_proofs(stack.runtime, report)
    assert report.source == "chain+store" and reg.proof_ok is True, reg.proof_note
    assert reg.proof is not None and reg.proof["step_hash"] == reg.step_hash

    altered = await _lookup(stack, body.replace("fewer", "lower").encode())
    assert not altered.registered and altered.registrations == []


async def test_human_content_and_a_binary_asset(stack: Stack) -> None:
    asset = b"\x89PNG\r\n\x1a\n" + uuid.uuid4().bytes + b"\x00pixels"
    res = await _registered_run(
        stack, "Cover image caption.", asset_hash=to_hex(keccak(asset)), origin="human"
    )
    report = await _lookup(stack, asset)
    assert report.registered and report.hashes[0].method == "bytes"
    (reg,) = report.registrations
    assert reg.origin == "human" and reg.canon_version == 0 and reg.workflow_id == res["id"]
    assert not (await _lookup(stack, asset[:-1] + b"!")).registered


async def test_rejected_or_unpublished_content_is_not_registered(stack: Stack) -> None:
    body = f"Internal only: {uuid.uuid4().hex}"
    res = await run_content(stack, ContentRequest(body=body, review_timeout_seconds=1))
    assert res["outcome"] == "rejected" and res["registered"] is False
    assert res["claim_hash"]  # signed and recorded, but not published
    assert "provenance.register" not in step_names(stack, res["id"])
    assert not (await _lookup(stack, body.encode())).registered
    quiet = f"Plain note {uuid.uuid4().hex}"
    res = await run_content(stack, ContentRequest(body=quiet, publish=False))
    assert res["outcome"] == "approved" and res["registered"] is False
    assert not (await _lookup(stack, quiet.encode())).registered


async def test_cli_provenance_answers_registered_and_not(stack: Stack, tmp_path: Path) -> None:
    body = ARTICLE + f"CLI {uuid.uuid4().hex}\n"
    res = await _registered_run(stack, body, generator_model="gpt-test")
    good = tmp_path / "article.md"
    good.write_text(body)
    code, out, err = await _cli(stack, "provenance", str(good), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["registered"] is True and doc["source"] == "chain+store"
    assert doc["registrations"][0]["workflow_id"] == res["id"]
    assert doc["registrations"][0]["proof_ok"] is True
    # From the chain alone: no store, no deployments file, only the registry and chain id.
    d = stack.deployment
    chain_only = [
        "--registry",
        d.address("ProvenanceRegistry"),
        "--chain-id",
        str(d.chain_id),
        "--no-store",
    ]
    code, out, err = await _cli(
        stack,
        "provenance",
        str(good),
        *chain_only,
        env={"LEDGERFLOW_DATABASE_URL": f"sqlite:///{tmp_path}/absent.db"},
    )
    assert code == 0, err
    assert "registered" in out and "synthetic" in out and res["agent_did"] in out
    bad = tmp_path / "article-altered.md"
    bad.write_text(body.replace("Faster", "Slower"))
    code, out, _ = await _cli(stack, "provenance", str(bad), *chain_only)
    assert code == 1 and "not registered" in out
    code, _, err = await _cli(stack, "provenance", str(tmp_path / "missing.md"))
    assert code == 2 and "cannot read" in err


async def test_api_provenance_route_is_public_and_read_only(stack: Stack) -> None:
    from ledgerflow.api import create_app

    body = f"API note {uuid.uuid4().hex}"
    res = await _registered_run(stack, body)
    digest = file_hashes(body.encode())[0].content_hash
    app = create_app(stack.settings, client=stack.client)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ledgerflow") as http:
        resp = await http.get(f"/provenance/{digest}")
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        assert doc["registered"] is True and doc["registrations"][0]["workflow_id"] == res["id"]
        missing = await http.get("/provenance/0x" + "00" * 32)
        assert missing.status_code == 200 and missing.json()["registered"] is False
        assert (await http.get("/provenance/0x1234")).status_code == 422
        assert (await http.post(f"/provenance/{digest}")).status_code == 405


async def test_the_hash_alone_is_enough(stack: Stack) -> None:
    body = f"Hash only {uuid.uuid4().hex}"
    await _registered_run(stack, body)
    digest = to_hex(keccak(canonical_text(body).encode()))
    d = stack.deployment
    report = await lookup(
        stack.runtime.w3,
        [FileHash(content_hash=digest, canon_version=-1, method="hash")],
        chain_id=d.chain_id,
        registry=d.address("ProvenanceRegistry"),
    )
    assert report.registered


# ---- redaction ----------------------------------------------------------------------------------


async def test_a_redacted_step_verifies_as_redacted(stack: Stack) -> None:
    body = f"To be redacted {uuid.uuid4().hex}"
    res = await _registered_run(stack, body)
    store = stack.runtime.store
    before = await verify_run(stack.runtime, res["id"])
    assert before.ok and before.redacted == []
    row = store.redact_step(res["id"], 1)
    assert row.redacted_at is not None and row.input_preimage is None and row.input_salt is None
    again = store.redact_step(res["id"], 1, row.run_id)  # idempotent
    assert again.redacted_at == row.redacted_at
    report = await stack.client.verify(res["id"])
    assert report.ok, report.problems
    assert report.first_bad_step is None and report.steps == before.steps
    assert report.redacted == [{"step": 1, "parts": ["input", "output"]}]
    assert report.head == before.head
    # The public registration still stands (its proof needs only the record's hashes).
    found = await _lookup(stack, body.encode())
    await add_store_proofs(stack.runtime, found)
    assert found.registered and found.registrations[0].proof_ok is True


async def test_redaction_of_an_unknown_run_or_step_is_refused(stack: Stack) -> None:
    res = await run_content(stack, ContentRequest(body=f"Short {uuid.uuid4().hex}"))
    store = stack.runtime.store
    with pytest.raises(RecordNotFound, match="no checkpointed run"):
        store.redact_step(f"nope-{uuid.uuid4().hex}", 0)
    with pytest.raises(RecordNotFound, match="no run 'other-run'"):
        store.redact_step(res["id"], 0, "other-run")
    with pytest.raises(RecordNotFound, match="has no step 999"):
        store.redact_step(res["id"], 999)
    with pytest.raises(RecordNotFound):
        store.redact_step(res["id"], -1)
    assert issubclass(RecordNotFound, StoreError)
    report = await stack.client.verify(res["id"])
    assert report.ok and report.redacted == []


async def test_cli_redact(stack: Stack) -> None:
    res = await run_content(stack, ContentRequest(body=f"CLI redact {uuid.uuid4().hex}"))
    code, out, err = await _cli(stack, "redact", res["id"], "--step", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["step"] == 2 and json.loads(out)["name"] == "llm.classify_content"
    code, out, err = await _cli(stack, "verify", res["id"])
    assert code == 0, out + err
    assert "step 2: input and output redacted" in out
    code, _, err = await _cli(stack, "redact", res["id"], "--step", "99")
    assert code == 2 and "has no step 99" in err
    code, _, err = await _cli(stack, "redact", f"missing-{uuid.uuid4().hex}", "--step", "0")
    assert code == 2 and "no checkpointed run" in err


def test_the_spec_vector() -> None:
    """docs/checkpoint-spec.md, section 15.4."""
    from ledgerflow.provenance.claims import _CLAIM_TYPEHASH
    from ledgerflow.provenance.lookup import _topic0

    claim = _claim()
    spec = (Path(__file__).parents[1] / "docs" / "checkpoint-spec.md").read_text()
    assert claim_json(claim) in spec
    digest = to_hex(claim_digest(claim, chain_id=31337, registry=REGISTRY))
    for value in (digest, to_hex(_CLAIM_TYPEHASH), _topic0(), REGISTRY):
        assert value in spec


async def test_content_credentials_round_trip_with_their_anchor(
    stack: Stack, tmp_path: Path
) -> None:
    """A registered PNG gets C2PA content credentials naming its registration; `ledgerflow
    provenance` reads them back against the chain, and tells an altered copy from the original."""
    from ledgerflow.provenance.credentials import read
    from tests.test_credentials import PKI, make_png, repaint

    pki = PKI()
    (tmp_path / "chain.pem").write_bytes(pki.chain_pem)
    (tmp_path / "key.pem").write_bytes(pki.key_pem)
    (tmp_path / "key.pem").chmod(0o600)
    (tmp_path / "roots.pem").write_bytes(pki.ca_pem)
    env = {
        "LEDGERFLOW_C2PA_CERT_CHAIN": str(tmp_path / "chain.pem"),
        "LEDGERFLOW_C2PA_PRIVATE_KEY": str(tmp_path / "key.pem"),
        "LEDGERFLOW_C2PA_TRUST_ANCHORS": str(tmp_path / "roots.pem"),
    }
    png = make_png(shade=int(uuid.uuid4().int % 200))
    res = await _registered_run(
        stack,
        "Generated cover image.",
        asset_hash=to_hex(keccak(png)),
        origin="synthetic",
        generator_model="image-test",
    )
    original = tmp_path / "cover.png"
    original.write_bytes(png)
    signed = tmp_path / "cover-credentials.png"
    code, out, err = await _cli(stack, "credentials", str(original), "--out", str(signed), env=env)
    assert code == 0, err
    report = read(signed.read_bytes(), "image/png", trust_anchors=pki.ca_pem)
    assert report.status == "valid" and report.ai_generated is True
    assert report.claim is not None and report.claim.claim_hash == res["claim_hash"]
    assert report.claim.anchor.tx_hash == res["registration_tx"]
    assert report.claim.workflow_id == res["id"]

    code, out, err = await _cli(stack, "provenance", str(signed), "--json", env=env)
    assert code == 0, (out, err)
    doc = json.loads(out)
    assert doc["registered"] is True
    assert doc["credentials"]["status"] == "valid" and doc["credentials"]["claim_on_chain"]
    # An altered copy keeps the manifest but not the pixels it signed: not registered.
    altered = tmp_path / "cover-altered.png"
    altered.write_bytes(repaint(signed.read_bytes(), 250))
    code, out, _ = await _cli(stack, "provenance", str(altered), "--json", env=env)
    doc = json.loads(out)
    assert code == 1 and doc["registered"] is False, doc
    assert doc["credentials"]["status"] == "altered"
    # The original, without credentials, is registered as itself.
    code, out, _ = await _cli(stack, "provenance", str(original), "--json", env=env)
    assert code == 0 and json.loads(out)["credentials"] is None
    # An unregistered image cannot get credentials that name a registration.
    stranger = tmp_path / "stranger.png"
    stranger.write_bytes(make_png(shade=7, width=8))
    code, _, err = await _cli(
        stack, "credentials", str(stranger), "--out", str(tmp_path / "x.png"), env=env
    )
    assert code == 2 and "is not registered" in err
