"""Step proof documents on the real stack: build, JSON round trip, verify offline and on chain,
self-containment (no other step's data) and tamper detection of every member."""

from __future__ import annotations

import asyncio
import copy
import json
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import HTTPProvider, Web3

from ledgerflow.chain.deploy import _Sender, role_id
from ledgerflow.checkpoint.bundle import TrustRoot
from ledgerflow.checkpoint.merkle import process_proof
from ledgerflow.checkpoint.proofs import (
    ProofCheck,
    build_step_proof,
    check_proof_offline,
    verify_proof_document,
    verify_proof_document_async,
)
from ledgerflow.checkpoint.records import leaf_hash, leaf_hash_v2
from ledgerflow.checkpoint.verify import trust_root
from ledgerflow.dev.stack import free_port
from ledgerflow.errors import ChainError, LedgerflowError, StoreError, VerificationError
from ledgerflow.runtime import Runtime
from ledgerflow.store import Store
from ledgerflow.workflows.procurement import ProcurementRequest
from tests.conftest import Stack


def _leaf(doc: dict[str, Any], step_hash: str) -> str:
    """The Merkle leaf of a step hash under the document's spec version."""
    raw = bytes.fromhex(step_hash[2:])
    return "0x" + (leaf_hash_v2(raw) if doc["spec_version"] == 2 else leaf_hash(raw)).hex()


# ---- helpers shared with tests/test_verify.py ---------------------------------------------------


async def run_procurement(stack: Stack, mode: str, *, prefix: str = "proof") -> dict[str, Any]:
    """Run one ProcurementWorkflow to completion (simulated delivery) and return its result."""
    wf_id = f"{prefix}-{mode}-{uuid.uuid4().hex[:10]}"
    request = ProcurementRequest(
        sku="WIDGET-42", quantity=10, anchor_mode=mode, simulate_delivery_after_seconds=1
    )
    handle = await stack.client.start("ProcurementWorkflow", request, workflow_id=wf_id)
    result = (await stack.client.result(handle.id)).model_dump(mode="json")
    assert result["outcome"] == "completed", result
    assert result["anchored"] is True, result
    return {"id": wf_id, **result}


def _t(stack: Stack) -> TrustRoot:
    """The stack's trust root: its deployments file."""
    return trust_root(stack.runtime)


def sqlite_path(store: Store) -> str:
    assert store.is_sqlite
    return store.url.split("///", 1)[1]


def copy_store(store: Store, dest: Path) -> Store:
    """A consistent copy of a SQLite store (the backup API copes with WAL and live writers)."""
    src = sqlite3.connect(sqlite_path(store))
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return Store(f"sqlite:///{dest}")


async def close_runtime(rt: Runtime) -> None:
    """Close the aiohttp session of a test's extra Runtime (else it is reported at GC time)."""
    if "w3" in rt.__dict__:
        await rt.w3.provider.disconnect()  # type: ignore[attr-defined]
    rt.store.engine.dispose()


def sql(store: Store, statement: str, *params: Any) -> int:
    """Run one raw statement on a SQLite store copy; returns the affected row count."""
    con = sqlite3.connect(sqlite_path(store))
    try:
        cur = con.execute(statement, params)
        con.commit()
        return cur.rowcount
    finally:
        con.close()


def fresh_key(w3: Web3) -> str:
    """A new funded account (never one of the shared dev keys, whose nonces others track)."""
    acct = Account.create()
    w3.provider.make_request("anvil_setBalance", [acct.address, hex(10**21)])  # type: ignore[arg-type]
    return "0x" + bytes(acct.key).hex()


def deploy_registry(rpc_url: str, *, writer: bool = True) -> tuple[str, str]:
    """Deploy a fresh CheckpointRegistry from a fresh key; returns (address, key).

    With ``writer`` the key also gets WRITER_ROLE, so it can anchor on its own registry.
    """
    w3 = Web3(HTTPProvider(rpc_url))
    key = fresh_key(w3)
    sender = _Sender(w3, key, "registry deployer")
    address = sender.deploy("CheckpointRegistry")
    if writer:
        reg = w3.eth.contract(address=address, abi=_registry_abi())
        sender.call(reg.functions.grantRole(role_id("WRITER_ROLE"), sender.address), "Registry")
    return address, key


def _registry_abi() -> list[dict[str, Any]]:
    from ledgerflow.chain.artifacts import load_artifact

    return load_artifact("CheckpointRegistry").abi


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def runs(stack: Stack) -> dict[str, dict[str, Any]]:
    batched, per_step = await asyncio.gather(
        run_procurement(stack, "batched"), run_procurement(stack, "per-step")
    )
    return {"batched": batched, "per-step": per_step}


def _other_rows(stack: Stack, wf_id: str, seq: int) -> list[Any]:
    run = stack.runtime.store.get_run(wf_id)
    return [r for r in stack.runtime.store.get_steps(wf_id, run.run_id) if r.seq != seq]


# ---- round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["batched", "per-step"])
async def test_round_trip_every_step(stack: Stack, runs: dict, mode: str) -> None:
    wf = runs[mode]
    assert wf["steps"] >= 4
    w3 = stack.runtime.w3
    for seq in range(wf["steps"]):
        doc = await build_step_proof(stack.runtime, wf["id"], seq, include_preimages=True)
        text = json.dumps(doc)
        back = json.loads(text)
        assert back == doc
        offline = verify_proof_document(text)
        assert offline.offline_ok, offline.problems
        assert not offline.ok and not offline.onchain_checked  # offline alone proves nothing
        check = await verify_proof_document_async(back, w3=w3, trust=_t(stack))
        assert check.ok, (seq, check.problems)
        assert check.onchain_checked and check.onchain_ok
        assert check.mode == mode and check.seq == seq
        assert check.step_hash == doc["step_hash"]
        if mode == "per-step":
            assert doc["root"] is None and doc["proof"] is None and doc["leaf"] is None
        else:
            assert doc["leaf"] == _leaf(doc, doc["step_hash"])


async def test_document_shape_and_sync_verifier(stack: Stack, runs: dict) -> None:
    wf = runs["batched"]
    run = stack.runtime.store.get_run(wf["id"])
    doc = await build_step_proof(stack.runtime, wf["id"], 1, run_id=run.run_id)
    assert set(doc) == {
        "spec_version",
        "chain_id",
        "registry",
        "workflow_id",
        "run_id",
        "run_key",
        "step",
        "step_hash",
        "leaf",
        "proof",
        "root",
        "anchor",
    }
    assert doc["spec_version"] == 2  # new runs are spec v2
    assert doc["chain_id"] == stack.runtime.chain_id
    assert doc["registry"].lower() == stack.runtime.address("CheckpointRegistry").lower()
    assert doc["run_id"] == run.run_id and doc["run_key"] == run.run_key
    assert set(doc["step"]) == {
        "v",
        "run",
        "seq",
        "kind",
        "name",
        "input",
        "output",
        "status",
        "prev",
    }
    assert set(doc["anchor"]) == {"tx_hash", "block_number"}
    assert all(isinstance(p, str) and len(p) == 66 for p in doc["proof"])
    # the synchronous verifier with a plain Web3, as an auditor's script would use it
    w3 = Web3(HTTPProvider(stack.settings.rpc_url))
    check = await asyncio.to_thread(verify_proof_document, doc, w3=w3, trust=_t(stack))
    assert check.ok, check.problems
    assert isinstance(check, ProofCheck)
    # the last step of a run is in the run's last batch; its proof leads to that root
    last = await build_step_proof(stack.runtime, wf["id"], wf["steps"] - 1)
    assert last["anchor"]["block_number"] >= doc["anchor"]["block_number"]


async def test_verifies_without_the_other_steps(stack: Stack, runs: dict, tmp_path: Path) -> None:
    wf = runs["batched"]
    seq = 2
    original = await build_step_proof(stack.runtime, wf["id"], seq, include_preimages=True)
    store = copy_store(stack.runtime.store, tmp_path / "copy.db")
    rt = Runtime(stack.settings, store=store)
    wiped = sql(
        store,
        "UPDATE steps SET input_preimage = NULL, output_preimage = NULL "
        "WHERE workflow_id = ? AND seq != ?",
        wf["id"],
        seq,
    )
    assert wiped == wf["steps"] - 1
    doc = await build_step_proof(rt, wf["id"], seq, include_preimages=True)
    assert doc == original
    assert (await verify_proof_document_async(doc, w3=stack.runtime.w3, trust=_t(stack))).ok
    # the other steps cannot be disclosed any more ...
    with pytest.raises(StoreError):
        await build_step_proof(rt, wf["id"], seq + 1, include_preimages=True)
    # ... and after deleting their rows altogether, this step still proves itself
    deleted = sql(store, "DELETE FROM steps WHERE workflow_id = ? AND seq != ?", wf["id"], seq)
    assert deleted == wf["steps"] - 1
    doc = await build_step_proof(rt, wf["id"], seq, include_preimages=True)
    assert doc == original
    check = await verify_proof_document_async(json.dumps(doc), w3=stack.runtime.w3, trust=_t(stack))
    assert check.ok, check.problems
    await close_runtime(rt)


async def test_reveals_nothing_of_other_steps(stack: Stack, runs: dict) -> None:
    for mode in ("batched", "per-step"):
        wf = runs[mode]
        seq = 2
        doc = await build_step_proof(stack.runtime, wf["id"], seq, include_preimages=True)
        own = next(
            r for r in stack.runtime.store.get_steps(wf["id"], doc["run_id"]) if r.seq == seq
        )
        siblings = set(doc["proof"] or [])
        strings: set[str] = set()

        def walk(v: Any, out: set[str] = strings) -> None:
            if isinstance(v, dict):
                for x in v.values():
                    walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)
            elif isinstance(v, str):
                out.add(v)

        walk({k: v for k, v in doc.items() if k != "disclosed"})
        canonical = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        own_values = {own.input_hash, own.output_hash, own.prev, own.step_hash}
        for other in _other_rows(stack, wf["id"], seq):
            other_leaf = _leaf(doc, other.step_hash)
            hashes = {other.step_hash, other.head, other.input_hash, other.output_hash, other_leaf}
            if other.seq == seq - 1:
                hashes.discard(other.head)  # = this step's own `prev` field
            leaked = (hashes - own_values) & (strings - siblings)
            assert not leaked, (mode, other.seq, leaked)
            for pre in (other.input_preimage, other.output_preimage):
                if pre not in (own.input_preimage, own.output_preimage) and len(pre) > 4:
                    assert pre not in canonical, (mode, other.seq, pre)
        # the disclosed values are this step's, byte for byte (v2: the preimage with its salt)
        disclosed = doc["disclosed"]["input"]
        if doc["spec_version"] == 2:
            assert disclosed == {"salt": own.input_salt, "preimage": own.input_preimage}
        else:
            text = json.dumps(disclosed, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            assert text == own.input_preimage
        # only the documented members (plus the requested disclosure)
        assert set(doc) - {"disclosed"} <= {
            "spec_version",
            "chain_id",
            "registry",
            "workflow_id",
            "run_id",
            "run_key",
            "step",
            "step_hash",
            "leaf",
            "proof",
            "root",
            "anchor",
        }


# ---- tampering ----------------------------------------------------------------------------------


def _flip(h: str) -> str:
    """The same 0x-hex with its last digit changed (still well formed)."""
    return h[:-1] + ("0" if h[-1] != "0" else "1")


def _mutations(doc: dict[str, Any], extra: dict[str, Any]) -> dict[str, Callable[[dict], None]]:
    def setter(path: tuple[Any, ...], value: Any) -> Callable[[dict], None]:
        def apply(d: dict) -> None:
            target = d
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value

        return apply

    step = doc["step"]
    m: dict[str, Callable[[dict], None]] = {
        "step.run": setter(("step", "run"), _flip(step["run"])),
        "step.seq": setter(("step", "seq"), step["seq"] + 1),
        "step.kind": setter(("step", "kind"), "chain" if step["kind"] != "chain" else "llm"),
        "step.name": setter(("step", "name"), step["name"] + "x"),
        "step.input": setter(("step", "input"), _flip(step["input"])),
        "step.output": setter(("step", "output"), _flip(step["output"])),
        "step.status": setter(("step", "status"), "failed" if step["status"] == "ok" else "ok"),
        "step.prev": setter(("step", "prev"), _flip(step["prev"])),
        "step.extra": setter(("step", "note"), "x"),
        "step_hash": setter(("step_hash",), _flip(doc["step_hash"])),
        "step_hash.upper": setter(("step_hash",), "0x" + doc["step_hash"][2:].upper()),
        "workflow_id": setter(("workflow_id",), doc["workflow_id"] + "x"),
        "run_id": setter(("run_id",), doc["run_id"] + "x"),
        "run_key": setter(("run_key",), _flip(doc["run_key"])),
        "spec_version": setter(("spec_version",), 3 - doc["spec_version"]),
        "chain_id": setter(("chain_id",), doc["chain_id"] + 1),
        "chain_id.str": setter(("chain_id",), str(doc["chain_id"])),
        "registry.random": setter(("registry",), "0x" + "11" * 20),
        "registry.other": setter(("registry",), extra["other_registry"]),
        "registry.not_a_registry": setter(("registry",), extra["not_a_registry"]),
        "anchor.tx_hash": setter(("anchor", "tx_hash"), extra["other_tx"]),
        "anchor.tx_hash.unknown": setter(("anchor", "tx_hash"), "0x" + "22" * 32),
        "anchor.block_number": setter(("anchor", "block_number"), extra["other_block"]),
        "anchor.block_number+1": setter(
            ("anchor", "block_number"), doc["anchor"]["block_number"] + 1
        ),
        "disclosed.input": setter(("disclosed", "input"), {"forged": True}),
        "disclosed.output": setter(("disclosed", "output"), {"forged": True}),
    }
    if doc["root"] is not None:
        m["leaf"] = setter(("leaf",), _flip(doc["leaf"]))
        m["root"] = setter(("root",), _flip(doc["root"]))
        m["root.other_anchored"] = setter(("root",), extra["other_root"])
        m["proof.dropped"] = setter(("proof",), doc["proof"][:-1])
        m["proof.extra"] = setter(("proof",), [*doc["proof"], "0x" + "33" * 32])
        for i, p in enumerate(doc["proof"]):
            m[f"proof[{i}]"] = setter(("proof", i), _flip(p))
        m["per-step.disguise"] = lambda d: d.update(leaf=None, proof=None, root=None)
    else:
        m["batched.disguise"] = lambda d: d.update(
            leaf=extra["leaf_of"](d["step_hash"]), proof=[], root=extra["other_root"]
        )
    return m


@pytest.mark.parametrize("mode", ["batched", "per-step"])
async def test_tampering_any_member_fails(stack: Stack, runs: dict, mode: str) -> None:
    wf = runs[mode]
    other_registry, _ = await asyncio.to_thread(deploy_registry, stack.settings.rpc_url)
    doc = await build_step_proof(stack.runtime, wf["id"], 1, include_preimages=True)
    # real values from elsewhere: another anchor of a batched run, a real second registry
    batched = runs["batched"]
    first = await build_step_proof(stack.runtime, batched["id"], 0)
    last = await build_step_proof(stack.runtime, batched["id"], batched["steps"] - 1)
    other = last if last["anchor"]["tx_hash"] != doc["anchor"]["tx_hash"] else first
    if other["anchor"]["tx_hash"] == doc["anchor"]["tx_hash"]:
        pytest.fail("the batched run was anchored in a single transaction; need two anchors")
    extra = {
        "other_registry": other_registry,
        "not_a_registry": stack.deployment.contracts["TestUSD"],
        "other_tx": other["anchor"]["tx_hash"],
        "other_block": other["anchor"]["block_number"],
        "other_root": other["root"],
        "leaf_of": lambda h: _leaf(doc, h),
    }
    assert (await verify_proof_document_async(doc, w3=stack.runtime.w3, trust=_t(stack))).ok
    mutations = _mutations(doc, extra)
    assert len(mutations) >= 24
    for name, mutate in mutations.items():
        bad = copy.deepcopy(doc)
        mutate(bad)
        assert bad != doc, name
        check = await verify_proof_document_async(
            json.dumps(bad), w3=stack.runtime.w3, trust=_t(stack)
        )
        assert not check.ok, f"{mode}: tampered {name} still verifies"
        assert check.problems, name


async def test_consistent_forgery_passes_offline_but_not_on_chain(stack: Stack, runs: dict) -> None:
    """A forger who recomputes every hash (record → step hash → leaf → root) makes a document
    that is internally consistent; only the chain exposes it."""
    from ledgerflow.checkpoint.canonical import canonical_bytes, keccak

    doc = await build_step_proof(stack.runtime, runs["batched"]["id"], 1)
    forged = copy.deepcopy(doc)
    forged["step"]["name"] = "pay_attacker"
    v2 = forged["spec_version"] == 2
    sh = keccak(canonical_bytes(forged["step"] if v2 else {"v": 1, **forged["step"]}))
    leaf = leaf_hash_v2(sh) if v2 else leaf_hash(sh)
    root = process_proof(leaf, [bytes.fromhex(p[2:]) for p in forged["proof"]])
    forged.update(step_hash="0x" + sh.hex(), leaf="0x" + leaf.hex(), root="0x" + root.hex())
    assert check_proof_offline(forged) == []
    check = await verify_proof_document_async(forged, w3=stack.runtime.w3, trust=_t(stack))
    assert check.offline_ok and check.onchain_checked and not check.onchain_ok and not check.ok
    assert any("never anchored" in p for p in check.problems), check.problems


async def test_other_chain_id_on_the_node_fails(stack: Stack, runs: dict) -> None:
    doc = await build_step_proof(stack.runtime, runs["per-step"]["id"], 0)
    doc["chain_id"] = 1  # a document claiming mainnet, checked against the dev chain
    check = await verify_proof_document_async(doc, w3=stack.runtime.w3, trust=_t(stack))
    assert check.offline_ok and not check.ok
    assert any("names chain 1, the trusted chain is 31337" in p for p in check.problems)
    # trusting chain 1 explicitly, the node (chain 31337) is the problem
    trust = TrustRoot.explicit(doc["registry"], 1)
    check = await verify_proof_document_async(doc, w3=stack.runtime.w3, trust=trust)
    assert not check.ok and any("serves chain" in p for p in check.problems)


async def test_a_proof_anchored_on_another_registry_is_refused(stack: Stack, runs: dict) -> None:
    """Issue 10's attack: falsify a step, anchor its root on a second registry deployed from the
    published artifact, name that registry in the document. Refused, naming both registries,
    unless the caller trusts that registry explicitly."""
    doc = await build_step_proof(stack.runtime, runs["batched"]["id"], 1)
    forged = json.loads(json.dumps(doc))
    from ledgerflow.checkpoint.canonical import canonical_bytes, keccak

    forged["step"]["name"] = "pay_attacker"
    v2 = forged["spec_version"] == 2
    sh = keccak(canonical_bytes(forged["step"] if v2 else {"v": 1, **forged["step"]}))
    leaf = leaf_hash_v2(sh) if v2 else leaf_hash(sh)
    forged.update(step_hash="0x" + sh.hex(), leaf="0x" + leaf.hex(), root="0x" + leaf.hex())
    forged["proof"] = []
    address, key = await asyncio.to_thread(deploy_registry, stack.settings.rpc_url)

    def anchor() -> Any:
        w3 = Web3(HTTPProvider(stack.settings.rpc_url))
        sender = _Sender(w3, key, "other registry")
        reg = w3.eth.contract(address=address, abi=stack.runtime.contract("CheckpointRegistry").abi)
        return sender.call(reg.functions.anchorRoot(leaf, 1, []), "CheckpointRegistry")

    receipt = await asyncio.to_thread(anchor)
    forged["registry"] = address
    forged["anchor"] = {
        "tx_hash": "0x" + bytes(receipt["transactionHash"]).hex(),
        "block_number": int(receipt["blockNumber"]),
    }
    check = await verify_proof_document_async(forged, w3=stack.runtime.w3, trust=_t(stack))
    assert not check.ok and check.registry == stack.deployment.contracts["CheckpointRegistry"]
    message = " ".join(check.problems)
    assert address in message and check.registry in message
    # the caller names the other registry explicitly: then it is the one trusted (and it holds it)
    explicit = TrustRoot.explicit(address.lower(), stack.runtime.chain_id)
    check = await verify_proof_document_async(forged, w3=stack.runtime.w3, trust=explicit)
    assert check.ok, check.problems


# ---- errors -------------------------------------------------------------------------------------


async def test_clear_errors(stack: Stack, runs: dict, tmp_path: Path) -> None:
    wf = runs["batched"]
    with pytest.raises(StoreError, match="no checkpointed run"):
        await build_step_proof(stack.runtime, "no-such-workflow", 0)
    with pytest.raises(StoreError, match="has no step 999"):
        await build_step_proof(stack.runtime, wf["id"], 999)
    with pytest.raises(StoreError):
        await build_step_proof(stack.runtime, wf["id"], -1)
    with pytest.raises(StoreError):
        await build_step_proof(stack.runtime, wf["id"], "1")  # type: ignore[arg-type]
    run = stack.runtime.store.get_run(wf["id"])
    with pytest.raises(StoreError):
        await build_step_proof(stack.runtime, wf["id"], 0, run_id="not-a-run")

    store = copy_store(stack.runtime.store, tmp_path / "copy.db")
    rt = Runtime(stack.settings, store=store)
    # a step whose batch is not anchored yet
    sql(store, "UPDATE steps SET anchor_id = NULL WHERE workflow_id = ? AND seq = 0", wf["id"])
    with pytest.raises(StoreError, match="not anchored yet"):
        await build_step_proof(rt, wf["id"], 0)
    # a tampered record or preimage never yields a document
    sql(store, "UPDATE steps SET name = name || 'x' WHERE workflow_id = ? AND seq = 1", wf["id"])
    with pytest.raises(VerificationError) as info:
        await build_step_proof(rt, wf["id"], 1)
    assert info.value.first_bad_step == 1
    # one byte more in a stored preimage: the same JSON value, but not the hashed bytes
    sql(
        store,
        "UPDATE steps SET output_preimage = output_preimage || ' ' "
        "WHERE workflow_id = ? AND seq = 2",
        wf["id"],
    )
    await build_step_proof(rt, wf["id"], 2)  # the record itself is intact ...
    with pytest.raises(VerificationError, match="output preimage"):
        await build_step_proof(rt, wf["id"], 2, include_preimages=True)  # ... its preimage not
    assert run.run_id
    with pytest.raises(ChainError):  # an unreachable node is an error, not a verdict
        good = await build_step_proof(stack.runtime, wf["id"], 0)
        dead = Web3(HTTPProvider(f"http://127.0.0.1:{free_port()}", request_kwargs={"timeout": 2}))
        await asyncio.to_thread(verify_proof_document, good, w3=dead, trust=_t(stack))
    with pytest.raises(VerificationError):
        verify_proof_document("[1, 2]")
    with pytest.raises(VerificationError):
        verify_proof_document(b"{not json")
    assert issubclass(StoreError, LedgerflowError)
    await close_runtime(rt)
