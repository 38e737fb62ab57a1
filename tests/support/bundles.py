"""Build real version 2 runs and their audit bundles directly from the spec's functions.

Runs are anchored on a real CheckpointRegistry (v2) on anvil, batched (``anchorRoot`` with seals)
or per step (``checkpoint`` then ``sealRun``), and their chain steps point at real transactions.
Used by the tamper battery (tests/test_tamper.py) and the bundle tests: nothing here needs
Temporal or the workflows, so the battery does not wait for the producer side.

:func:`write_case` writes a bundle with its expected verdict into a directory (one JSON file per
case plus ``manifest.json``), so another verifier (the TypeScript one) can be run over the same
cases and compared.
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from web3 import HTTPProvider, Web3

from ledgerflow.chain.artifacts import load_artifact
from ledgerflow.chain.deploy import role_id
from ledgerflow.checkpoint.bundle import BUNDLE_FORMAT
from ledgerflow.checkpoint.canonical import canonical_bytes, keccak, to_hex
from ledgerflow.checkpoint.merkle import build_standard_tree
from ledgerflow.checkpoint.records import StepRecord, commitment, next_head, run_key


@dataclass
class Step:
    kind: str
    name: str
    input: Any
    output: Any
    status: str = "ok"
    salt_in: bytes = field(default_factory=lambda: os.urandom(32))
    salt_out: bytes = field(default_factory=lambda: os.urandom(32))


class Run:
    """A version 2 run being recorded: records, heads and, once anchored, anchors and proofs."""

    def __init__(self, mode: str = "batched", workflow_id: str | None = None) -> None:
        self.workflow_id = workflow_id or f"battery-{uuid.uuid4().hex[:10]}"
        self.run_id = str(uuid.uuid4())
        self.mode = mode
        self.rk = run_key(self.workflow_id, self.run_id, spec=2)
        self.steps: list[Step] = []
        self.records: list[dict[str, Any]] = []
        self.hashes: list[bytes] = []
        self.heads: list[bytes] = [self.rk]
        self.anchor_of: list[dict[str, Any] | None] = []
        self.proofs: list[list[str] | None] = []
        self.seal: dict[str, Any] | None = None

    @property
    def head(self) -> bytes:
        return self.heads[-1]

    def add(self, step: Step) -> int:
        seq = len(self.steps)
        rec = StepRecord(
            v=2,
            run=to_hex(self.rk),
            seq=seq,
            kind=step.kind,  # type: ignore[arg-type]
            name=step.name,
            input=to_hex(commitment(step.salt_in, canonical_bytes(step.input))),
            output=to_hex(commitment(step.salt_out, canonical_bytes(step.output))),
            status=step.status,  # type: ignore[arg-type]
            prev=to_hex(self.head),
        )
        sh = rec.hash()
        self.steps.append(step)
        self.records.append(rec.model_dump())
        self.hashes.append(sh)
        self.heads.append(next_head(self.head, sh))
        self.anchor_of.append(None)
        self.proofs.append(None)
        return seq

    def outcome(self, status: str = "completed", outcome: str = "completed") -> int:
        return self.add(
            Step(
                "outcome",
                "run.outcome",
                {"workflow_type": "BatteryWorkflow", "status": status},
                {"outcome": outcome, "reason": ""},
            )
        )


class Chain:
    """Sync web3 access to one anvil with a writer key (anvil's first dev key by default)."""

    def __init__(self, rpc_url: str, key: str) -> None:
        self.rpc_url = rpc_url
        self.w3 = Web3(HTTPProvider(rpc_url))
        self.key = key
        self.account = self.w3.eth.account.from_key(key)
        self.chain_id = int(self.w3.eth.chain_id)

    def send(self, fn: Any) -> Any:
        tx = fn.build_transaction(
            {
                "from": self.account.address,
                "nonce": self.w3.eth.get_transaction_count(self.account.address, "pending"),
                "chainId": self.chain_id,
            }
        )
        raw = self.account.sign_transaction(tx).raw_transaction
        receipt = self.w3.eth.wait_for_transaction_receipt(self.w3.eth.send_raw_transaction(raw))
        assert receipt["status"] == 1, receipt
        return receipt

    def deploy(self, name: str) -> Any:
        art = load_artifact(name)
        factory = self.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        tx = factory.constructor().build_transaction(
            {
                "from": self.account.address,
                "nonce": self.w3.eth.get_transaction_count(self.account.address, "pending"),
                "chainId": self.chain_id,
            }
        )
        raw = self.account.sign_transaction(tx).raw_transaction
        receipt = self.w3.eth.wait_for_transaction_receipt(self.w3.eth.send_raw_transaction(raw))
        return self.w3.eth.contract(address=receipt["contractAddress"], abi=art.abi), receipt

    def registry(self) -> tuple[Any, int]:
        """A fresh CheckpointRegistry this key writes to; (contract, deployment block)."""
        reg, receipt = self.deploy("CheckpointRegistry")
        self.send(reg.functions.grantRole(role_id("WRITER_ROLE"), self.account.address))
        return reg, int(receipt["blockNumber"])

    def token(self) -> Any:
        tok, _ = self.deploy("TestUSD")
        self.send(tok.functions.grantRole(role_id("MINTER_ROLE"), self.account.address))
        return tok

    def tx_result(self, token: Any, amount: int) -> dict[str, Any]:
        """A real state-changing call (a mint, which emits Transfer) as a TxResult v2."""
        receipt = self.send(token.functions.mint(self.account.address, amount))
        log = receipt["logs"][0]
        return {
            "tx_hash": to_hex(bytes(receipt["transactionHash"])),
            "block_number": int(receipt["blockNumber"]),
            "block_hash": to_hex(bytes(receipt["blockHash"])),
            "to": receipt["to"],
            "gas_used": int(receipt["gasUsed"]),
            "already_done": False,
            "event": {
                "address": log["address"],
                "topics": [to_hex(bytes(t)) for t in log["topics"]],
                "log_index": int(log["logIndex"]),
            },
        }


def _seal_tuple(run: Run, steps: int | None = None, head: bytes | None = None) -> tuple:
    n = len(run.steps) if steps is None else steps
    return (run.rk, n, head if head is not None else run.heads[n])


def anchor_batched(
    chain: Chain,
    registry: Any,
    runs: list[tuple[Run, range]],
    seals: list[tuple[Run, int | None]] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """One ``anchorRoot`` over the given steps of the given runs, with seals; records the anchor
    and proofs in the runs (the seal of ``(run, None)`` is its full length)."""
    values: list[bytes] = []
    where: list[tuple[Run, int]] = []
    for run, seqs in runs:
        for s in seqs:
            values.append(run.hashes[s])
            where.append((run, s))
    seal_args = [_seal_tuple(r, n) for r, n in seals]
    if values:
        tree = build_standard_tree(values)
        root, count = tree.root, len(values)
    else:
        root, count = keccak(os.urandom(32)), 0
    receipt = chain.send(registry.functions.anchorRoot(root, count, seal_args))
    anchor = {
        "type": "root",
        "chain_id": chain.chain_id,
        "registry": registry.address,
        "tx_hash": to_hex(bytes(receipt["transactionHash"])),
        "block_number": int(receipt["blockNumber"]),
        "root": to_hex(root),
        "leaf_count": count,
    }
    for pos, (run, s) in enumerate(where):
        run.anchor_of[s] = anchor
        run.proofs[s] = [to_hex(p) for p in tree.proof(pos)]
    for (run, _n), args in zip(seals, seal_args, strict=True):
        if run.seal is None:
            run.seal = {
                "steps": args[1],
                "head": to_hex(args[2]),
                "chain_id": chain.chain_id,
                "registry": registry.address,
                "tx_hash": anchor["tx_hash"],
                "block_number": anchor["block_number"],
            }
    return anchor


def anchor_per_step(chain: Chain, registry: Any, run: Run, *, seal: bool = True) -> None:
    for s in range(len(run.steps)):
        if run.anchor_of[s] is not None:
            continue
        receipt = chain.send(registry.functions.checkpoint(run.rk, s, run.heads[s], run.hashes[s]))
        run.anchor_of[s] = {
            "type": "step",
            "chain_id": chain.chain_id,
            "registry": registry.address,
            "tx_hash": to_hex(bytes(receipt["transactionHash"])),
            "block_number": int(receipt["blockNumber"]),
            "seq": s,
        }
    if seal:
        receipt = chain.send(registry.functions.sealRun(run.rk, len(run.steps), run.head))
        run.seal = {
            "steps": len(run.steps),
            "head": to_hex(run.head),
            "chain_id": chain.chain_id,
            "registry": registry.address,
            "tx_hash": to_hex(bytes(receipt["transactionHash"])),
            "block_number": int(receipt["blockNumber"]),
        }


def to_bundle(
    run: Run, *, registry: str, chain_id: int, deployment_block: int, contracts: dict[str, str]
) -> dict[str, Any]:
    anchors: list[dict[str, Any]] = []
    ids: dict[int, int] = {}
    steps: list[dict[str, Any]] = []
    for s, (st, rec) in enumerate(zip(run.steps, run.records, strict=True)):
        a = run.anchor_of[s]
        ref = None
        if a is not None:
            if id(a) not in ids:
                ids[id(a)] = len(anchors)
                anchors.append(copy.deepcopy(a))
            ref = ids[id(a)]
        steps.append(
            {
                "record": dict(rec),
                "input": {
                    "salt": to_hex(st.salt_in),
                    "preimage": canonical_bytes(st.input).decode(),
                },
                "output": {
                    "salt": to_hex(st.salt_out),
                    "preimage": canonical_bytes(st.output).decode(),
                },
                "anchor": ref,
                "proof": list(run.proofs[s]) if run.proofs[s] is not None else None,
            }
        )
    return {
        "format": BUNDLE_FORMAT,
        "spec_version": 2,
        "workflow_id": run.workflow_id,
        "run_id": run.run_id,
        "run_key": to_hex(run.rk),
        "workflow_type": "BatteryWorkflow",
        "anchor_mode": run.mode,
        "chain_id": chain_id,
        "registry": registry,
        "registry_deployment_block": deployment_block,
        "contracts": dict(contracts),
        "steps": steps,
        "anchors": anchors,
        "seal": copy.deepcopy(run.seal),
    }


def write_case(
    directory: Path,
    name: str,
    bundle: dict[str, Any],
    expected: dict[str, Any],
    trust: dict[str, Any],
    rpc_url: str,
) -> None:
    """Write ``<name>.json`` and add the case to ``manifest.json`` (name, file, trust root, RPC
    URL and expected verdict ``{ok, sealed, first_bad_step}``)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(bundle, indent=1) + "\n")
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"cases": []}
    manifest["cases"] = [c for c in manifest["cases"] if c["name"] != name]
    manifest["cases"].append(
        {
            "name": name,
            "file": f"{name}.json",
            "rpc_url": rpc_url,
            "trust": trust,
            "expected": expected,
        }
    )
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
