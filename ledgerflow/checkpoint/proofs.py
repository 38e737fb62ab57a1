"""Step proof documents: one step of one run, provable to anyone with the document and a chain.

A step proof document (docs/checkpoint-spec.md, section 9) is a self-contained JSON object: the
step's record fields (enough to recompute its step hash), its Merkle leaf, proof and the anchored
root (batched mode) or the ``checkpoint`` transaction (per-step mode), and where the anchor lives
(chain id, registry address, transaction, block). It never carries another step's preimages or
record; the only hashes of other steps are the Merkle siblings on the path to the root.

* :func:`build_step_proof` makes a document from the store (optionally disclosing the step's own
  input and output values);
* :func:`verify_proof_document` / :func:`verify_proof_document_async` check one offline (every
  hash recomputed) and, given a web3 connection, on chain: the chain id, ``anchoredAt(root)``,
  the anchoring receipt's ``RootAnchored`` (or ``Checkpointed``) log from the registry and the
  registry's own ``verifyStep(root, stepHash, proof)``.

It also holds the gas comparison of the two anchoring modes (:func:`measure_anchor_gas`,
:func:`gas_rows`, :func:`format_gas_table`), shared by the tests and ``ledgerflow bench``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlmodel import select
from web3 import AsyncWeb3, Web3
from web3.exceptions import (
    BadFunctionCallOutput,
    ContractLogicError,
    TransactionNotFound,
    Web3Exception,
)

from ledgerflow.chain.artifacts import load_artifact
from ledgerflow.checkpoint.anchorer import build_batch
from ledgerflow.checkpoint.bundle import TrustRoot
from ledgerflow.checkpoint.canonical import CanonicalError, canonical_bytes, keccak
from ledgerflow.checkpoint.merkle import process_proof
from ledgerflow.checkpoint.records import (
    LATEST_SPEC,
    STEP_KINDS_V1,
    STEP_KINDS_V2,
    commitment,
    leaf_hash,
    leaf_hash_v2,
    next_head,
    parse_canonical,
    run_key,
)
from ledgerflow.errors import ChainError, ConfigError, StoreError, VerificationError
from ledgerflow.runtime import Runtime
from ledgerflow.store import AnchorRow, StepRow

__all__ = [
    "PROOF_SPEC_VERSION",
    "GasRow",
    "ProofCheck",
    "SealGas",
    "build_step_proof",
    "check_proof_offline",
    "format_gas_table",
    "gas_rows",
    "measure_anchor_gas",
    "measure_seal_gas",
    "verify_proof_document",
    "verify_proof_document_async",
]

#: The ``spec_version`` this module writes for new runs; it verifies versions 1 and 2.
PROOF_SPEC_VERSION = LATEST_SPEC

_RECORD_FIELDS = ("run", "seq", "kind", "name", "input", "output", "status", "prev")
_RECORD_FIELDS_V2 = ("v", *_RECORD_FIELDS)
_HEX32 = re.compile(r"^0x[0-9a-f]{64}$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_UINT64 = 1 << 64


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


# ---- building -----------------------------------------------------------------------------------


def _load_step(runtime: Runtime, workflow_id: str, step: int, run_id: str | None) -> tuple:
    store = runtime.store
    run = store.get_run(workflow_id, run_id)
    with store.session() as s:
        row = s.exec(
            select(StepRow).where(
                StepRow.workflow_id == run.workflow_id,
                StepRow.run_id == run.run_id,
                StepRow.seq == step,
            )
        ).first()
        if row is None:
            raise StoreError(
                f"run {run.workflow_id}/{run.run_id} has no step {step} "
                f"(it has {run.steps} step(s), numbered from 0)"
            )
        anchor = s.get(AnchorRow, row.anchor_id) if row.anchor_id is not None else None
    return run, row, anchor


async def build_step_proof(
    runtime: Runtime,
    workflow_id: str,
    step: int,
    run_id: str | None = None,
    *,
    include_preimages: bool = False,
) -> dict[str, Any]:
    """The step proof document of step ``step`` (0-based seq) of a run.

    The run is the latest one of ``workflow_id`` unless ``run_id`` is given. With
    ``include_preimages`` the document discloses this step's own input and output values (member
    ``disclosed``); it never contains anything of another step except Merkle siblings. The
    document is checked offline before it is returned, so a store whose record does not hash to
    its stored step hash never yields a document.

    Raises:
        StoreError: unknown run or step, the step is not anchored (yet), or its preimages are
            missing while ``include_preimages`` is set.
        VerificationError: the stored record does not verify (tampered or corrupt store).
    """
    if isinstance(step, bool) or not isinstance(step, int):
        raise StoreError(f"a step is named by its integer seq, got {step!r}")
    run, row, anchor = await asyncio.to_thread(_load_step, runtime, workflow_id, step, run_id)
    where = f"step {step} of {run.workflow_id}/{run.run_id}"
    if anchor is None or anchor.status != "confirmed" or not anchor.tx_hash:
        raise StoreError(f"{where} is not anchored yet; try again once the anchorer has run")
    version = int(getattr(row, "spec_version", 1) or 1)
    rk = _hex(run_key(run.workflow_id, run.run_id, spec=version))
    chain_id = anchor.chain_id if anchor.chain_id is not None else runtime.chain_id
    registry = anchor.registry_address or runtime.address("CheckpointRegistry")
    doc: dict[str, Any] = {
        "spec_version": version,
        "chain_id": int(chain_id),
        "registry": registry,
        "workflow_id": run.workflow_id,
        "run_id": run.run_id,
        "run_key": rk,
        "step": {
            "run": rk,
            "seq": row.seq,
            "kind": row.kind,
            "name": row.name,
            "input": row.input_hash,
            "output": row.output_hash,
            "status": row.status,
            "prev": row.prev,
        },
        "step_hash": row.step_hash,
        "leaf": None,
        "proof": None,
        "root": None,
        "anchor": {"tx_hash": anchor.tx_hash, "block_number": int(anchor.block_number or 0)},
    }
    if version == 2:
        doc["step"] = {"v": 2, **doc["step"]}
    if anchor.mode == "batched":
        if anchor.root is None or row.proof is None:
            raise StoreError(f"{where}: its batch has no root or proof in the store")
        leaf_of = leaf_hash_v2 if version == 2 else leaf_hash
        doc["leaf"] = _hex(leaf_of(bytes.fromhex(row.step_hash[2:])))
        doc["proof"] = list(json.loads(row.proof))
        doc["root"] = anchor.root
    if include_preimages:
        if row.input_preimage is None or row.output_preimage is None:
            raise StoreError(f"{where}: its preimages are not in the store (redacted?)")
        disclosed: dict[str, Any] = {}
        for part, pre, salt, digest in (
            ("input", row.input_preimage, getattr(row, "input_salt", None), row.input_hash),
            ("output", row.output_preimage, getattr(row, "output_salt", None), row.output_hash),
        ):
            salt_b = bytes.fromhex(salt[2:]) if (version == 2 and salt) else None
            if version == 2 and salt_b is None:
                raise StoreError(f"{where}: the {part} salt is not in the store")
            if _hex(commitment(salt_b, pre.encode("utf-8"))) != digest:
                raise VerificationError(
                    f"{where}: stored {part} preimage does not commit to the record's {part}",
                    first_bad_step=row.seq,
                )
            if version == 2:
                disclosed[part] = {"salt": salt, "preimage": pre}
            else:
                try:
                    disclosed[part] = json.loads(pre)
                except ValueError as exc:
                    raise VerificationError(
                        f"{where}: stored preimage is not JSON ({exc})", first_bad_step=row.seq
                    ) from None
        doc["disclosed"] = disclosed
    problems = check_proof_offline(doc)
    if problems:
        raise VerificationError(
            f"{where} does not verify from the store: " + "; ".join(problems),
            first_bad_step=row.seq,
        )
    return doc


# ---- verifying ----------------------------------------------------------------------------------


class ProofCheck(BaseModel):
    """The outcome of verifying a step proof document.

    ``ok`` means the document proves its step: every offline check passed *and* the chain was
    checked and agreed. Without a web3 connection ``ok`` is False and ``offline_ok`` tells whether
    the document is internally consistent (which anyone could fake; only the chain makes it a
    proof).
    """

    ok: bool
    offline_ok: bool
    onchain_checked: bool = False
    onchain_ok: bool | None = None
    problems: list[str] = Field(default_factory=list)
    mode: Literal["batched", "per-step"] | None = None
    workflow_id: str | None = None
    run_id: str | None = None
    seq: int | None = None
    step_hash: str | None = None
    block_number: int | None = None
    spec_version: int | None = None
    registry: str | None = None  # the trusted registry the anchor was checked against
    chain_id: int | None = None  # the trusted chain


class _Parsed(BaseModel):
    """The values the on-chain checks need, taken from an offline-valid document."""

    mode: Literal["batched", "per-step"]
    version: int
    chain_id: int
    registry: str
    run_key: bytes
    seq: int
    prev: bytes
    step_hash: bytes
    proof: list[bytes]
    root: bytes | None
    tx_hash: str
    block_number: int


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _b32(v: str) -> bytes:
    return bytes.fromhex(v[2:])


def _as_dict(doc: Any) -> dict[str, Any]:
    if isinstance(doc, bytes | bytearray | str):
        try:
            doc = json.loads(doc)
        except ValueError as exc:
            raise VerificationError(f"the proof document is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise VerificationError("a proof document is a JSON object")
    return doc


def _offline(doc: dict[str, Any]) -> tuple[list[str], _Parsed | None]:
    """Every check that needs no chain; the parsed values when the document is well formed."""
    p: list[str] = []
    version = doc.get("spec_version")
    if not _is_int(version) or version not in (1, 2):
        return [f"unsupported spec_version {version!r} (this verifier implements 1 and 2)"], None

    def hex32(value: Any, what: str) -> bool:
        if isinstance(value, str) and _HEX32.match(value):
            return True
        p.append(f"{what} is not lower-case 0x-hex of 32 bytes")
        return False

    chain_id: Any = doc.get("chain_id")
    if not _is_int(chain_id) or chain_id <= 0:
        p.append("chain_id is not a positive integer")
    registry: Any = doc.get("registry")
    if not isinstance(registry, str) or not _ADDRESS.match(registry):
        p.append("registry is not a 20-byte 0x-hex address")
    wf, run = doc.get("workflow_id"), doc.get("run_id")
    if not isinstance(wf, str) or not isinstance(run, str):
        p.append("workflow_id and run_id must be strings")
        return p, None
    expected_rk = _hex(run_key(wf, run, spec=version))
    rk = doc.get("run_key")
    if hex32(rk, "run_key") and rk != expected_rk:
        p.append("run_key is not the run key of workflow_id/run_id")

    record = doc.get("step")
    if not isinstance(record, dict):
        p.append("step is not an object")
        return p, None
    fields = _RECORD_FIELDS_V2 if version == 2 else _RECORD_FIELDS
    if set(record) != set(fields):
        missing = sorted(set(fields) - set(record))
        extra = sorted(set(record) - set(fields))
        p.append(f"step must have exactly the record fields (missing {missing}, extra {extra})")
        return p, None
    shape_ok = all(
        [
            hex32(record["run"], "step.run"),
            hex32(record["input"], "step.input"),
            hex32(record["output"], "step.output"),
            hex32(record["prev"], "step.prev"),
        ]
    )
    if record["run"] != expected_rk:
        p.append("step.run is not the run key of workflow_id/run_id")
    seq = record["seq"]
    if not _is_int(seq) or not 0 <= seq < _UINT64:
        p.append("step.seq is not an integer in [0, 2^64)")
        shape_ok = False
    if version == 2 and (not _is_int(record["v"]) or record["v"] != 2):
        p.append("step.v is not 2")
    if record["kind"] not in (STEP_KINDS_V2 if version == 2 else STEP_KINDS_V1):
        p.append(f"step.kind {record['kind']!r} is not a version {version} kind")
    if record["status"] not in ("ok", "failed"):
        p.append(f"step.status {record['status']!r} is not ok or failed")
    if not isinstance(record["name"], str):
        p.append("step.name is not a string")
        shape_ok = False
    if not shape_ok:
        return p, None

    computed = keccak(canonical_bytes(record if version == 2 else {"v": 1, **record}))
    sh = doc.get("step_hash")
    if hex32(sh, "step_hash") and sh != _hex(computed):
        p.append("step_hash is not the hash of the step record")

    disclosed = doc.get("disclosed")
    if disclosed is not None:
        if not isinstance(disclosed, dict):
            p.append("disclosed is not an object")
        else:
            for part in ("input", "output"):
                if part in disclosed:
                    p += _check_disclosed(version, part, disclosed[part], record[part])

    leaf: Any = doc.get("leaf")
    proof: Any = doc.get("proof")
    root: Any = doc.get("root")
    mode: Literal["batched", "per-step"] = "per-step" if root is None else "batched"
    proof_b: list[bytes] = []
    if mode == "per-step":
        if leaf is not None or proof is not None:
            p.append("a per-step document has leaf, proof and root all null")
    else:
        expected_leaf = leaf_hash_v2(computed) if version == 2 else leaf_hash(computed)
        if hex32(leaf, "leaf") and leaf != _hex(expected_leaf):
            rule = (
                "keccak256(keccak256(step_hash))"
                if version == 2
                else "keccak256(0x00 || step_hash)"
            )
            p.append(f"leaf is not {rule}")
        if not isinstance(proof, list):
            p.append("proof is not a list")
        elif all(hex32(x, "proof element") for x in proof):
            proof_b = [_b32(x) for x in proof]
        if (
            hex32(root, "root")
            and isinstance(proof, list)
            and len(proof_b) == len(proof)
            and process_proof(expected_leaf, proof_b) != _b32(root)
        ):
            p.append("the Merkle proof does not lead from the leaf to root")

    anchor = doc.get("anchor")
    tx_hash: str = ""
    block: Any = 0
    if not isinstance(anchor, dict):
        p.append("anchor is not an object")
    else:
        if hex32(anchor.get("tx_hash"), "anchor.tx_hash"):
            tx_hash = anchor["tx_hash"]
        block = anchor.get("block_number")
        if not _is_int(block) or block <= 0:
            p.append("anchor.block_number is not a positive integer")
            block = 0
    if p:
        return p, None
    return p, _Parsed(
        mode=mode,
        version=version,
        chain_id=chain_id,
        registry=registry,
        run_key=_b32(expected_rk),
        seq=seq,
        prev=_b32(record["prev"]),
        step_hash=computed,
        proof=proof_b,
        root=_b32(root) if root is not None else None,
        tx_hash=tx_hash,
        block_number=block,
    )


def _check_disclosed(version: int, part: str, value: Any, digest: str) -> list[str]:
    if version == 1:
        try:
            got = _hex(keccak(canonical_bytes(value)))
        except CanonicalError as exc:
            return [f"disclosed {part} has no canonical encoding: {exc}"]
        return [] if got == digest else [f"disclosed {part} does not hash to step.{part}"]
    if not (
        isinstance(value, dict)
        and set(value) == {"salt", "preimage"}
        and isinstance(value["salt"], str)
        and _HEX32.match(value["salt"])
        and isinstance(value["preimage"], str)
    ):
        return [f"disclosed {part} is not {{salt, preimage}}"]
    try:
        pre = value["preimage"].encode("utf-8")
        parse_canonical(pre)
    except (UnicodeError, CanonicalError) as exc:
        return [f"disclosed {part} preimage is not canonical LCE-1: {exc}"]
    if _hex(commitment(_b32(value["salt"]), pre)) != digest:
        return [f"disclosed {part} does not commit to step.{part}"]
    return []


def check_proof_offline(doc: Mapping[str, Any]) -> list[str]:
    """The problems an offline check finds in a document (empty when it is consistent)."""
    return _offline(dict(doc))[0]


class _Facts(BaseModel):
    """What the chain says, fetched once (sync or async) and judged by :func:`_judge`."""

    chain_id: int
    has_code: bool
    call_error: str | None = None
    anchored_at: int | None = None
    verify_step: bool | None = None
    receipt: dict[str, Any] | None = None


def _event_topic(name: str) -> bytes:
    for item in load_artifact("CheckpointRegistry").abi:
        if item.get("type") == "event" and item.get("name") == name:
            types = ",".join(i["type"] for i in item["inputs"])
            return keccak(f"{name}({types})".encode())
    raise ConfigError(f"event {name} is not in the CheckpointRegistry ABI")


def _to_bytes(v: Any) -> bytes:
    if isinstance(v, str):
        return bytes.fromhex(v.removeprefix("0x"))
    return bytes(v)


def _judge(parsed: _Parsed, facts: _Facts) -> list[str]:
    p: list[str] = []
    if facts.chain_id != parsed.chain_id:
        p.append(f"the node serves chain {facts.chain_id}, the document names {parsed.chain_id}")
        return p
    if not facts.has_code:
        return [f"no contract at registry {parsed.registry} on chain {parsed.chain_id}"]
    if facts.call_error is not None:
        return [f"{parsed.registry} does not answer as a CheckpointRegistry: {facts.call_error}"]
    if parsed.mode == "batched":
        if not facts.anchored_at:
            p.append("the registry never anchored root")
        elif facts.anchored_at != parsed.block_number:
            p.append(
                f"anchoredAt(root) is block {facts.anchored_at}, the document says "
                f"{parsed.block_number}"
            )
        # Version 1 leaves are not the v2 registry's: verifyStep is a version 2 check only.
        if parsed.version == 2 and facts.verify_step is not True:
            p.append("the registry's verifyStep(root, step_hash, proof) is false")
    receipt = facts.receipt
    if receipt is None:
        p.append(f"no receipt for anchor transaction {parsed.tx_hash}")
        return p
    if int(receipt.get("status", 0)) != 1:
        p.append("the anchor transaction reverted")
    if int(receipt.get("blockNumber", -1)) != parsed.block_number:
        p.append(
            f"the anchor transaction is in block {receipt.get('blockNumber')}, "
            f"the document says {parsed.block_number}"
        )
    registry = parsed.registry.lower()
    matches = 0
    for log in receipt.get("logs", []):
        if str(log.get("address", "")).lower() != registry:
            continue
        topics = [_to_bytes(t) for t in log.get("topics", [])]
        data = _to_bytes(log.get("data", b""))
        if parsed.mode == "batched":
            if topics == [_event_topic("RootAnchored"), parsed.root]:
                matches += 1
        elif topics == [
            _event_topic("Checkpointed"),
            parsed.run_key,
            parsed.seq.to_bytes(32, "big"),
        ]:
            matches += 1
            if data[:64] != parsed.step_hash + next_head(parsed.prev, parsed.step_hash):
                p.append("the Checkpointed step hash or head is not the document's")
    if matches != 1:
        event = "RootAnchored for root" if parsed.mode == "batched" else "Checkpointed for the step"
        p.append(f"the anchor transaction has {matches} {event} logs from the registry, not one")
    return p


def _trust_problems(parsed: _Parsed, trust: TrustRoot) -> list[str]:
    p: list[str] = []
    if not trust.trusts(parsed.registry):
        p.append(
            f"the document names registry {parsed.registry}, the trusted registry is "
            f"{trust.registry} (pass --registry to check against another one)"
        )
    if parsed.chain_id != trust.chain_id:
        p.append(
            f"the document names chain {parsed.chain_id}, the trusted chain is {trust.chain_id}"
        )
    return p


def _registry(w3: Any, address: str) -> Any:
    abi = load_artifact("CheckpointRegistry").abi
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi)


def _facts_sync(w3: Web3, parsed: _Parsed) -> _Facts:
    try:
        chain_id = int(w3.eth.chain_id)
        facts = _Facts(chain_id=chain_id, has_code=False)
        if chain_id != parsed.chain_id:
            return facts
        address = Web3.to_checksum_address(parsed.registry)
        facts.has_code = len(w3.eth.get_code(address)) > 0
        if not facts.has_code:
            return facts
        if parsed.mode == "batched":
            reg = _registry(w3, parsed.registry)
            try:
                facts.anchored_at = int(reg.functions.anchoredAt(parsed.root).call())
                facts.verify_step = bool(
                    reg.functions.verifyStep(parsed.root, parsed.step_hash, parsed.proof).call()
                )
            except (ContractLogicError, BadFunctionCallOutput) as exc:
                facts.call_error = type(exc).__name__
                return facts
        try:
            facts.receipt = dict(w3.eth.get_transaction_receipt(parsed.tx_hash))  # type: ignore[arg-type]
        except TransactionNotFound:
            facts.receipt = None
        return facts
    except (OSError, Web3Exception) as exc:
        raise ChainError(f"chain query failed while verifying a proof: {exc}") from None


async def _facts_async(w3: AsyncWeb3, parsed: _Parsed) -> _Facts:
    try:
        chain_id = int(await w3.eth.chain_id)
        facts = _Facts(chain_id=chain_id, has_code=False)
        if chain_id != parsed.chain_id:
            return facts
        address = Web3.to_checksum_address(parsed.registry)
        facts.has_code = len(await w3.eth.get_code(address)) > 0
        if not facts.has_code:
            return facts
        if parsed.mode == "batched":
            reg = _registry(w3, parsed.registry)
            try:
                facts.anchored_at = int(await reg.functions.anchoredAt(parsed.root).call())
                facts.verify_step = bool(
                    await reg.functions.verifyStep(
                        parsed.root, parsed.step_hash, parsed.proof
                    ).call()
                )
            except (ContractLogicError, BadFunctionCallOutput) as exc:
                facts.call_error = type(exc).__name__
                return facts
        try:
            facts.receipt = dict(await w3.eth.get_transaction_receipt(parsed.tx_hash))  # type: ignore[arg-type]
        except TransactionNotFound:
            facts.receipt = None
        return facts
    except (OSError, Web3Exception) as exc:
        raise ChainError(f"chain query failed while verifying a proof: {exc}") from None


def _check(doc: Any, parsed_and_problems: tuple[list[str], _Parsed | None]) -> ProofCheck:
    problems, parsed = parsed_and_problems
    step = doc.get("step") if isinstance(doc.get("step"), dict) else {}
    return ProofCheck(
        ok=False,
        offline_ok=not problems,
        problems=list(problems),
        mode=parsed.mode if parsed else None,
        workflow_id=doc.get("workflow_id") if isinstance(doc.get("workflow_id"), str) else None,
        run_id=doc.get("run_id") if isinstance(doc.get("run_id"), str) else None,
        seq=step.get("seq") if _is_int(step.get("seq")) else None,
        step_hash=_hex(parsed.step_hash) if parsed else None,
        block_number=parsed.block_number if parsed else None,
        spec_version=parsed.version if parsed else None,
    )


def _finish(check: ProofCheck, onchain_problems: list[str]) -> ProofCheck:
    check.onchain_checked = True
    check.onchain_ok = not onchain_problems
    check.problems += onchain_problems
    check.ok = check.offline_ok and check.onchain_ok
    return check


def _with_trust(check: ProofCheck, trust: TrustRoot | None, parsed: _Parsed | None) -> list[str]:
    if trust is None:
        return []
    check.registry, check.chain_id = trust.registry, trust.chain_id
    return _trust_problems(parsed, trust) if parsed is not None else []


def verify_proof_document(
    doc: Mapping[str, Any] | str | bytes, *, w3: Any = None, trust: TrustRoot | None = None
) -> ProofCheck:
    """Verify a step proof document offline and, with ``w3`` (a ``Web3``), on chain against the
    trust root ``trust`` (docs/checkpoint-spec.md, section 11).

    Offline: the run key, the step hash from the record, the disclosed parts (if any), the leaf
    and the Merkle fold up to ``root``. Trust: the document's registry and chain must be the trust
    root's (a document anchored on another registry fails, naming both). On chain: the node's
    chain id, ``anchoredAt(root)`` equal to ``anchor.block_number``, ``verifyStep(root,
    step_hash, proof)``, and the receipt of ``anchor.tx_hash`` (successful, in that block, with
    exactly one matching ``RootAnchored`` or ``Checkpointed`` log from the registry). The chain is
    only queried when the offline and trust checks pass.

    An ``AsyncWeb3`` is accepted outside a running event loop; inside one, await
    :func:`verify_proof_document_async`.

    Raises:
        VerificationError: ``doc`` is not a JSON object.
        ChainError: the node cannot be queried.
        ConfigError: ``w3`` without ``trust``, or an ``AsyncWeb3`` from inside a running loop.
    """
    if isinstance(w3, AsyncWeb3):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(verify_proof_document_async(doc, w3=w3, trust=trust))
        raise ConfigError("with an AsyncWeb3 in async code, await verify_proof_document_async")
    if w3 is not None and trust is None:
        raise ConfigError("checking a proof on chain needs a trust root (registry and chain id)")
    d = _as_dict(doc)
    result = _offline(d)
    check = _check(d, result)
    untrusted = _with_trust(check, trust, result[1])
    if w3 is None or result[1] is None:
        return check
    if untrusted:
        return _finish(check, untrusted)
    return _finish(check, _judge(result[1], _facts_sync(w3, result[1])))


async def verify_proof_document_async(
    doc: Mapping[str, Any] | str | bytes,
    *,
    w3: AsyncWeb3 | None = None,
    trust: TrustRoot | None = None,
) -> ProofCheck:
    """:func:`verify_proof_document` with an ``AsyncWeb3`` (e.g. ``runtime.w3``)."""
    if w3 is not None and trust is None:
        raise ConfigError("checking a proof on chain needs a trust root (registry and chain id)")
    d = _as_dict(doc)
    result = _offline(d)
    check = _check(d, result)
    untrusted = _with_trust(check, trust, result[1])
    if w3 is None or result[1] is None:
        return check
    if untrusted:
        return _finish(check, untrusted)
    return _finish(check, _judge(result[1], await _facts_async(w3, result[1])))


# ---- gas: batched vs per-step -------------------------------------------------------------------


class GasRow(BaseModel):
    """Gas of one anchoring configuration, from mined receipts' ``gasUsed``."""

    mode: Literal["batched", "per-step"]
    steps_per_tx: int
    transactions: int
    gas_per_tx: float
    gas_per_step: float
    vs_per_step: float | None = None  # gas_per_step / the per-step row's gas_per_step


def gas_rows(
    anchor_gas: Mapping[int, int | Sequence[int]], per_step_gas: Sequence[int]
) -> list[GasRow]:
    """Rows for a table: one per batch size (``anchorRoot`` gas of batches of that many steps)
    and one for per-step mode (``checkpoint`` gas of each step), amortized per step."""

    def as_list(v: int | Sequence[int]) -> list[int]:
        return [int(v)] if isinstance(v, int) else [int(x) for x in v]

    per_step = (sum(per_step_gas) / len(per_step_gas)) if per_step_gas else None
    rows: list[GasRow] = []
    for size in sorted(anchor_gas):
        gas = as_list(anchor_gas[size])
        per_tx = sum(gas) / len(gas)
        rows.append(
            GasRow(
                mode="batched",
                steps_per_tx=size,
                transactions=len(gas),
                gas_per_tx=per_tx,
                gas_per_step=per_tx / size,
                vs_per_step=(per_tx / size) / per_step if per_step else None,
            )
        )
    if per_step is not None:
        rows.append(
            GasRow(
                mode="per-step",
                steps_per_tx=1,
                transactions=len(per_step_gas),
                gas_per_tx=per_step,
                gas_per_step=per_step,
                vs_per_step=1.0,
            )
        )
    return rows


def format_gas_table(rows: Sequence[GasRow]) -> str:
    """A plain-text table of :func:`gas_rows`."""
    head = (
        f"{'mode':<9} {'steps/tx':>8} {'txs':>4} {'gas/tx':>10} {'gas/step':>10} "
        f"{'vs per-step':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = "" if r.vs_per_step is None else f"{r.vs_per_step:.4f}"
        lines.append(
            f"{r.mode:<9} {r.steps_per_tx:>8} {r.transactions:>4} {r.gas_per_tx:>10.0f} "
            f"{r.gas_per_step:>10.1f} {ratio:>11}"
        )
    return "\n".join(lines)


async def measure_anchor_gas(
    runtime: Runtime,
    batch_sizes: Sequence[int] = (1, 16, 128, 1024),
    *,
    per_step_steps: int = 8,
    key_prefix: str = "gas",
) -> list[GasRow]:
    """Send real transactions through the runtime's orchestrator signer and tabulate their gas.

    Batched: for each size, one ``anchorRoot`` of the Merkle root of that many random step hashes.
    Per-step: ``per_step_steps`` consecutive ``checkpoint`` calls of one fresh random run (the
    first step of a run pays for new storage, later ones update it). This writes to the registry:
    run it against a dev or bench chain.
    """
    registry = runtime.contract("CheckpointRegistry")
    signer = await runtime.signer("orchestrator")
    anchor_gas: dict[int, int] = {}
    for size in batch_sizes:
        root, _ = build_batch([_hex(os.urandom(32)) for _ in range(size)])
        call = registry.functions.anchorRoot(_b32(root), size, [])
        receipt = await signer.send(
            f"{key_prefix}:anchor:{root}", call, contract="CheckpointRegistry"
        )
        anchor_gas[size] = receipt.gas_used
    run = os.urandom(32)
    head = run
    per_step: list[int] = []
    for seq in range(per_step_steps):
        sh = os.urandom(32)
        call = registry.functions.checkpoint(run, seq, head, sh)
        key = f"{key_prefix}:checkpoint:{_hex(run)}:{seq}"
        receipt = await signer.send(key, call, contract="CheckpointRegistry")
        per_step.append(receipt.gas_used)
        head = next_head(head, sh)
    return gas_rows(anchor_gas, per_step)


class SealGas(BaseModel):
    """What sealing adds, from mined receipts (spec v2: one ``RunSealed`` per ended run)."""

    anchor_root_gas: dict[int, int]  # seals in one anchorRoot -> its gasUsed (one leaf)
    batched_gas_per_seal: float  # extra gas per run of a batched seal (an event in anchorRoot)
    seal_run_gas: int  # sealRun of a per-step run
    per_step: dict[str, float]  # extra gas per step, e.g. "batched@8", "per-step@64"


async def measure_seal_gas(
    runtime: Runtime,
    seal_counts: Sequence[int] = (0, 1, 8),
    steps_per_run: Sequence[int] = (8, 64),
    *,
    key_prefix: str = "seal-gas",
) -> SealGas:
    """Send ``anchorRoot`` with 0, 1, 8 seals and one ``sealRun`` through the runtime's
    orchestrator signer and report the extra gas per run and per step. Writes to the registry:
    run it against a dev or bench chain."""
    registry = runtime.contract("CheckpointRegistry")
    signer = await runtime.signer("orchestrator")
    gas: dict[int, int] = {}
    for k in seal_counts:
        root = os.urandom(32)
        seals = [(os.urandom(32), 8, os.urandom(32)) for _ in range(k)]
        call = registry.functions.anchorRoot(root, 1, seals)
        receipt = await signer.send(
            f"{key_prefix}:anchor:{_hex(root)}", call, contract="CheckpointRegistry"
        )
        gas[k] = receipt.gas_used
    counts = sorted(k for k in gas if k > 0)
    base = gas.get(0, min(gas.values()))
    per_seal = max((gas[k] - base) / k for k in counts) if counts else 0.0
    run = os.urandom(32)
    sh = os.urandom(32)
    key = f"{key_prefix}:checkpoint:{_hex(run)}"
    await signer.send(
        key, registry.functions.checkpoint(run, 0, run, sh), contract="CheckpointRegistry"
    )
    receipt = await signer.send(
        f"{key_prefix}:seal:{_hex(run)}",
        registry.functions.sealRun(run, 1, next_head(run, sh)),
        contract="CheckpointRegistry",
    )
    per_step: dict[str, float] = {}
    for n in steps_per_run:
        per_step[f"batched@{n}"] = round(per_seal / n, 1)
        per_step[f"per-step@{n}"] = round(receipt.gas_used / n, 1)
    return SealGas(
        anchor_root_gas=gas,
        batched_gas_per_seal=round(per_seal, 1),
        seal_run_gas=receipt.gas_used,
        per_step=per_step,
    )
