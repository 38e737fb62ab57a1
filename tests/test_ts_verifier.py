"""The independent TypeScript verifier (verifiers/ts) against ledgerflow's own.

verifiers/ts is written from docs/checkpoint-spec.md alone. Here it must

- recompute the spec's test vectors (its own node tests, section 14);
- exit as section 10.8 says (0 verified, 1 not verified, 2 malformed bundle or error);
- agree with ledgerflow's verifier, case by case, on a differential corpus: clean version 2 runs
  in both anchor modes, version 1 runs, unsealed runs, and well over a hundred mutations of their
  bundles, trust roots and texts (anchors, seals, proofs, outcome and failed-step shapes,
  TxResults, non-canonical preimages, malformed shapes). Agreement means the same verdict, head,
  seal, anchors, redactions and set of (step, code) findings, or both calling the bundle malformed.

The tamper battery's cases (tests/test_tamper.py) go through both verifiers as well; this corpus
reaches the corners the battery does not, so a disagreement names a spec ambiguity or a bug.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from web3 import AsyncHTTPProvider, AsyncWeb3

from ledgerflow.checkpoint.bundle import BundleError, TrustRoot, Web3Chain, verify_bundle
from ledgerflow.checkpoint.canonical import canonical_bytes, keccak, to_hex
from ledgerflow.checkpoint.records import commitment
from ledgerflow.dev.stack import free_port, start_anvil
from ledgerflow.settings import ANVIL_DEFAULT_KEYS
from tests.support.bundles import Chain, Run, Step, anchor_batched, anchor_per_step, to_bundle
from tests.support.crosscheck import (
    TS_DIR,
    BundleCase,
    Outcome,
    build_ts_verifier,
    disagreements,
    forgive_known_differences,
    ts_outcomes,
)

Bundle = dict[str, Any]
Mutation = Callable[[Bundle], Any]


@pytest.fixture(scope="module")
def ts_cli() -> Path:
    return build_ts_verifier()


@pytest.fixture(scope="module")
def rpc_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = start_anvil(port, log_path=tmp_path_factory.mktemp("ts-verifier") / "anvil.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


# ---- version 1 runs, built from section 12 -------------------------------------------------------


def _node(a: bytes, b: bytes) -> bytes:
    return keccak(min(a, b) + max(a, b))


def _v1_tree(leaves: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """Section 12's tree: neighbours paired left to right, an odd last node promoted."""
    proofs: list[list[bytes]] = [[] for _ in leaves]
    level, members = list(leaves), [[i] for i in range(len(leaves))]
    while len(level) > 1:
        nxt, nxt_members = [], []
        for k in range(0, len(level), 2):
            if k + 1 == len(level):
                nxt.append(level[k])
                nxt_members.append(members[k])
                continue
            for i in members[k]:
                proofs[i].append(level[k + 1])
            for i in members[k + 1]:
                proofs[i].append(level[k])
            nxt.append(_node(level[k], level[k + 1]))
            nxt_members.append(members[k] + members[k + 1])
        level, members = nxt, nxt_members
    return level[0], proofs


def _v1_bundle(world: World, mode: str) -> Bundle:
    """A three-step version 1 run anchored on the registry (one root, or one tx per step)."""
    wid, rid = f"v1-{os.urandom(4).hex()}", "00000000-0000-4000-8000-" + os.urandom(6).hex()
    rk = keccak(canonical_bytes({"spec": 1, "workflow_id": wid, "run_id": rid}))
    values = [
        ("llm", "decide", {"sku": "A"}, {"supplier": "acme"}, "ok"),
        ("chain", "escrow.deposit", {"amount": 5}, {"tx": "0x" + "ab" * 32}, "ok"),
        ("timer", "resolve.timeout", {"seconds": 5}, {"expired": True}, "failed"),  # v1 shape
    ]
    head, steps, hashes, heads = rk, [], [], [rk]
    for seq, (kind, name, inp, out, status) in enumerate(values):
        pin, pout = canonical_bytes(inp), canonical_bytes(out)
        record = {
            "v": 1,
            "run": to_hex(rk),
            "seq": seq,
            "kind": kind,
            "name": name,
            "input": to_hex(keccak(pin)),
            "output": to_hex(keccak(pout)),
            "status": status,
            "prev": to_hex(head),
        }
        sh = keccak(canonical_bytes(record))
        head = keccak(head + sh)
        hashes.append(sh)
        heads.append(head)
        steps.append(
            {
                "record": record,
                "input": {"salt": None, "preimage": pin.decode()},
                "output": {"salt": None, "preimage": pout.decode()},
                "anchor": None,
                "proof": None,
            }
        )
    chain, reg = world.chain, world.registry
    anchors: list[Bundle] = []
    if mode == "batched":
        root, proofs = _v1_tree([keccak(b"\x00" + h) for h in hashes])
        receipt = chain.send(reg.functions.anchorRoot(root, len(hashes), []))
        anchors.append(
            {
                "type": "root",
                "chain_id": chain.chain_id,
                "registry": reg.address,
                "tx_hash": to_hex(bytes(receipt["transactionHash"])),
                "block_number": int(receipt["blockNumber"]),
                "root": to_hex(root),
                "leaf_count": len(hashes),
            }
        )
        for st, proof in zip(steps, proofs, strict=True):
            st["anchor"], st["proof"] = 0, [to_hex(p) for p in proof]
    else:
        for seq, st in enumerate(steps):
            receipt = chain.send(reg.functions.checkpoint(rk, seq, heads[seq], hashes[seq]))
            anchors.append(
                {
                    "type": "step",
                    "chain_id": chain.chain_id,
                    "registry": reg.address,
                    "tx_hash": to_hex(bytes(receipt["transactionHash"])),
                    "block_number": int(receipt["blockNumber"]),
                    "seq": seq,
                }
            )
            st["anchor"] = seq
    return {
        "format": "ledgerflow-audit-bundle",
        "spec_version": 1,
        "workflow_id": wid,
        "run_id": rid,
        "run_key": to_hex(rk),
        "workflow_type": "ProcurementWorkflow",
        "anchor_mode": mode,
        "chain_id": chain.chain_id,
        "registry": reg.address,
        "registry_deployment_block": world.block,
        "contracts": dict(world.contracts),
        "steps": steps,
        "anchors": anchors,
        "seal": None,
    }


# ---- the chain and the clean runs ----------------------------------------------------------------


class World:
    def __init__(self, rpc_url: str) -> None:
        self.rpc_url = rpc_url
        self.chain = Chain(rpc_url, ANVIL_DEFAULT_KEYS[0])
        self.registry, self.block = self.chain.registry()
        self.other, _ = self.chain.registry()
        self.token = self.chain.token()
        self.contracts = {
            "CheckpointRegistry": self.registry.address,
            "TestUSD": self.token.address,
        }
        self.trust: dict[str, Any] = {
            "chain_id": self.chain.chain_id,
            "registry": self.registry.address,
            "from_block": self.block,
            "contracts": list(self.contracts.values()),
            "source": "deployments",
        }

    def steps(self, run: Run) -> None:
        run.add(Step("llm", "decide_supplier", {"sku": "A-100", "qty": 3}, {"supplier": "acme"}))
        run.add(
            Step("chain", "escrow.open", {"order": "PO-7"}, self.chain.tx_result(self.token, 75))
        )
        run.add(Step("activity", "notify_supplier", {"to": "acme"}, {"sent": True}))
        run.add(
            Step(
                "timer",
                "delivery.deadline",
                {"seconds": 60},
                {"error": {"type": "TimeoutError", "message": "no delivery in 60 s"}},
                status="failed",
            )
        )
        run.add(Step("activity", "settle", {"n": 2**70, "s": "é☃𝄞"}, {"ok": [1, -1, 0]}))
        run.add(Step("chain", "balance_of", {"who": "acme"}, {"balance": 75}))  # a read

    def bundle(self, run: Run) -> Bundle:
        return to_bundle(
            run,
            registry=self.registry.address,
            chain_id=self.chain.chain_id,
            deployment_block=self.block,
            contracts=self.contracts,
        )


@pytest.fixture(scope="module")
def world(rpc_url: str) -> World:
    return World(rpc_url)


@pytest.fixture(scope="module")
def clean(world: World) -> dict[str, Bundle]:
    batched = Run("batched")
    world.steps(batched)
    batched.outcome()
    anchor_batched(world.chain, world.registry, [(batched, range(4))])
    anchor_batched(world.chain, world.registry, [(batched, range(4, 7))], seals=[(batched, None)])
    per_step = Run("per-step")
    world.steps(per_step)
    per_step.outcome(status="compensated", outcome="refunded")
    anchor_per_step(world.chain, world.registry, per_step)
    running = Run("per-step")
    world.steps(running)
    anchor_per_step(world.chain, world.registry, running, seal=False)
    return {
        "batched": world.bundle(batched),
        "per-step": world.bundle(per_step),
        "running": world.bundle(running),
        "v1-batched": _v1_bundle(world, "batched"),
        "v1-per-step": _v1_bundle(world, "per-step"),
    }


# ---- mutations -----------------------------------------------------------------------------------


def _recommit(b: Bundle, i: int, part: str, text: str) -> None:
    """Step i's part gets preimage ``text`` (any text) and a consistent commitment."""
    p = b["steps"][i][part]
    p["preimage"] = text
    salt = bytes.fromhex(p["salt"][2:]) if p["salt"] else None
    raw = text.encode("utf-8", "surrogatepass")
    digest = commitment(salt, raw) if salt is not None else keccak(raw)
    b["steps"][i]["record"][part] = to_hex(digest)


def _value(b: Bundle, i: int, part: str) -> Any:
    return json.loads(b["steps"][i][part]["preimage"])


def _revalue(b: Bundle, i: int, part: str, value: Any) -> None:
    _recommit(b, i, part, canonical_bytes(value).decode())


def _tx(b: Bundle, **changes: Any) -> None:
    v = _value(b, 1, "output")
    for k, new in changes.items():
        if k.startswith("event_"):
            v["event"][k[len("event_") :]] = new
        elif new is KeyError:
            v.pop(k)
        else:
            v[k] = new
    _revalue(b, 1, "output", v)


def _set(path: str, value: Any) -> Mutation:
    """Set a member by a dotted path ("steps.2.record.kind")."""

    def mutate(b: Bundle) -> None:
        *parents, last = path.split(".")
        node: Any = b
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        elif value is KeyError:
            del node[last]
        else:
            node[last] = value

    return mutate


def _do(*fs: Mutation) -> Mutation:
    def mutate(b: Bundle) -> None:
        for f in fs:
            f(b)

    return mutate


H = "0x" + "11" * 32
OUT = "output"

BATCHED: dict[str, Mutation] = {
    "clean": lambda b: None,
    "unanchored-middle": _do(_set("steps.2.anchor", None), _set("steps.2.proof", None)),
    "unanchored-last": _do(_set("steps.6.anchor", None), _set("steps.6.proof", None)),
    "anchor-block-off": lambda b: b["anchors"][0].update(
        block_number=b["anchors"][0]["block_number"] + 1
    ),
    "anchor-tx-unknown": _set("anchors.0.tx_hash", H),
    "anchor-block-after-seal": lambda b: b["anchors"][0].update(
        block_number=b["seal"]["block_number"] + 1
    ),
    "anchor-tx-of-other-root": lambda b: b["anchors"][0].update(
        tx_hash=b["anchors"][1]["tx_hash"], block_number=b["anchors"][1]["block_number"]
    ),
    "leaf-count-off": lambda b: b["anchors"][1].update(leaf_count=4),
    "root-changed": _set("anchors.0.root", H),
    "mode-per-step": _set("anchor_mode", "per-step"),
    "anchor-entry-other-chain": _set("anchors.1.chain_id", 5),
    "anchor-entry-other-registry": lambda b: b["anchors"][1].update(
        registry=b["contracts"]["TestUSD"]
    ),
    "registry-upper-case": lambda b: [
        a.update(registry="0x" + a["registry"][2:].upper()) for a in [b, *b["anchors"], b["seal"]]
    ],
    "registry-lower-case": lambda b: b.update(registry=b["registry"].lower()),
    "seal-tx-changed": lambda b: b["seal"].update(tx_hash=b["anchors"][0]["tx_hash"]),
    "seal-block-changed": lambda b: b["seal"].update(block_number=b["seal"]["block_number"] - 1),
    "seal-head-changed": _set("seal.head", H),
    "seal-steps-changed": _set("seal.steps", 3),
    "seal-registry-other": lambda b: b["seal"].update(registry=b["contracts"]["TestUSD"]),
    "seal-chain-other": _set("seal.chain_id", 5),
    "run-key-wrong": _set("run_key", H),
    "workflow-id-changed": _set("workflow_id", "someone-else"),
    "run-id-changed": _set("run_id", "another-run"),
    "kind-outcome-in-middle": _set("steps.2.record.kind", "outcome"),
    "outcome-renamed": _set("steps.6.record.name", "run.end"),
    "outcome-failed": _set("steps.6.record.status", "failed"),
    "outcome-input-extra": lambda b: _revalue(
        b, 6, "input", {**_value(b, 6, "input"), "extra": "x"}
    ),
    "outcome-input-nonstring": lambda b: _revalue(
        b, 6, "input", {"workflow_type": "W", "status": 1}
    ),
    "outcome-output-missing-reason": lambda b: _revalue(b, 6, OUT, {"outcome": "completed"}),
    "outcome-output-redacted": _set("steps.6.output", None),
    "outcome-both-redacted": _do(_set("steps.6.output", None), _set("steps.6.input", None)),
    "outcome-not-last": lambda b: b["steps"].insert(5, copy.deepcopy(b["steps"][6])),
    "no-outcome": lambda b: b["steps"].pop(),
    "failed-output-redacted": _set("steps.3.output", None),
    "failed-output-extra": lambda b: _revalue(b, 3, OUT, {**_value(b, 3, OUT), "at": 5}),
    "failed-output-nonstring": lambda b: _revalue(b, 3, OUT, {"error": {"type": 1, "message": ""}}),
    "failed-output-nested-extra": lambda b: _revalue(
        b, 3, OUT, {"error": {"type": "T", "message": "m", "code": 3}}
    ),
    "ok-step-marked-failed": _set("steps.2.record.status", "failed"),
    "failed-step-marked-ok": _set("steps.3.record.status", "ok"),
    "tx-extra-member": lambda b: _tx(b, note="x"),
    "tx-missing-member": lambda b: _tx(b, gas_used=KeyError),
    "tx-upper-case-hash": lambda b: _tx(b, tx_hash=_value(b, 1, OUT)["tx_hash"].upper()),
    "tx-block-zero": lambda b: _tx(b, block_number=0),
    "tx-block-off": lambda b: _tx(b, block_number=_value(b, 1, OUT)["block_number"] + 1),
    "tx-block-hash-off": lambda b: _tx(b, block_hash=H),
    "tx-gas-off": lambda b: _tx(b, gas_used=_value(b, 1, OUT)["gas_used"] + 1),
    "tx-gas-negative": lambda b: _tx(b, gas_used=-1),
    "tx-already-done-string": lambda b: _tx(b, already_done="no"),
    "tx-already-done-true": lambda b: _tx(b, already_done=True),
    "tx-to-lower-case": lambda b: _tx(b, to=_value(b, 1, OUT)["to"].lower()),
    "tx-to-registry": lambda b: _tx(b, to=b["registry"]),
    "tx-unknown": lambda b: _tx(b, tx_hash=H),
    "tx-no-event": lambda b: _tx(b, event=None),
    "tx-event-topics-off": lambda b: _tx(
        b, event_topics=[_value(b, 1, OUT)["event"]["topics"][0], H]
    ),
    "tx-event-topics-short": lambda b: _tx(
        b, event_topics=_value(b, 1, OUT)["event"]["topics"][:2]
    ),
    "tx-event-five-topics": lambda b: _tx(b, event_topics=[H] * 5),
    "tx-event-no-topics": lambda b: _tx(b, event_topics=[]),
    "tx-event-log-index-off": lambda b: _tx(b, event_log_index=7),
    "tx-event-address-lower": lambda b: _tx(
        b, event_address=_value(b, 1, OUT)["event"]["address"].lower()
    ),
    "tx-event-address-registry": lambda b: _tx(b, event_address=b["registry"]),
    "tx-event-extra": lambda b: _tx(b, event_data="0x"),
    "tx-output-redacted": _set("steps.1.output", None),
    "tx-on-failed-step": _set("steps.1.record.status", "failed"),
    "tx-on-activity-step": _set("steps.1.record.kind", "activity"),
    "tx-hash-on-read": lambda b: _revalue(b, 5, OUT, {"balance": 75, "tx_hash": None}),
    "preimage-lone-surrogate": lambda b: _recommit(b, 2, "input", '"\ud800"'),
    "preimage-escaped-letter": lambda b: _recommit(b, 2, "input", '{"to":"\\u0061cme"}'),
    "preimage-escaped-slash": lambda b: _recommit(b, 2, "input", '{"to":"a\\/b"}'),
    "preimage-upper-hex-escape": lambda b: _recommit(b, 2, "input", '{"to":"\\u001F"}'),
    "preimage-lower-hex-escape": lambda b: _recommit(b, 2, "input", '{"to":"\\u001f"}'),
    "preimage-raw-control": lambda b: _recommit(b, 2, "input", '{"to":"\x01"}'),
    "preimage-surrogate-pair-escape": lambda b: _recommit(b, 2, "input", '"\\ud83d\\ude00"'),
    "preimage-emoji": lambda b: _recommit(b, 2, "input", '"\U0001f600\u2028\u007f"'),
    "preimage-float": lambda b: _recommit(b, 2, "input", '{"x":1.0}'),
    "preimage-exponent": lambda b: _recommit(b, 2, "input", '{"x":1e3}'),
    "preimage-negative-zero": lambda b: _recommit(b, 2, "input", "-0"),
    "preimage-leading-zero": lambda b: _recommit(b, 2, "input", "01"),
    "preimage-duplicate-key": lambda b: _recommit(b, 2, "input", '{"a":1,"a":1}'),
    "preimage-nan": lambda b: _recommit(b, 2, "input", "NaN"),
    "preimage-big-int": lambda b: _recommit(b, 2, "input", str(-(2**300))),
    "preimage-key-order-utf8": lambda b: _recommit(b, 2, "input", '{"z":2,"é":1}'),
    "preimage-key-order-jcs": lambda b: _recommit(b, 2, "input", '{"\U0001f600":2,"\ue000":1}'),
    "preimage-key-order-cp": lambda b: _recommit(b, 2, "input", '{"\ue000":1,"\U0001f600":2}'),
    "preimage-whitespace": lambda b: _recommit(b, 2, "input", '{"to": "acme"}'),
    "preimage-trailing-newline": lambda b: _recommit(b, 2, "input", '{"to":"acme"}\n'),
    "preimage-empty": lambda b: _recommit(b, 2, "input", ""),
    "preimage-deep": lambda b: _recommit(b, 2, "input", "[" * 3000 + "]" * 3000),
    "preimage-bom": lambda b: _recommit(b, 2, "input", '\ufeff{"to":"acme"}'),
    "preimage-changed": lambda b: b["steps"][2]["input"].update(preimage='{"to":"acmf"}'),
    "salts-swapped": lambda b: [
        b["steps"][4][p].update(salt=b["steps"][5][q]["salt"]) for p, q in (("input", "output"),)
    ],
    "input-redacted": _set("steps.0.input", None),
    "proof-empty": _set("steps.0.proof", []),
    "proof-extra-element": lambda b: b["steps"][0]["proof"].append(H),
    "proof-of-other-step": lambda b: b["steps"][0].update(proof=b["steps"][1]["proof"]),
    "anchor-of-other-batch": _set("steps.0.anchor", 1),
    "steps-empty": _set("steps", []),
    "steps-reversed": lambda b: b["steps"].reverse(),
    "step-duplicated": lambda b: b["steps"].insert(3, copy.deepcopy(b["steps"][2])),
    "unreferenced-extra-anchor": lambda b: b["anchors"].append({**b["anchors"][0], "tx_hash": H}),
    "informational-members": lambda b: b.update(
        exported_at="2026-12-01T00:00:00Z", status="completed", extra={"x": [1.5, None]}
    ),
    "workflow-type-other": _set("workflow_type", "SomethingElse"),
    "deployment-block-later": _set("registry_deployment_block", 10**9),
}

PER_STEP: dict[str, Mutation] = {
    "clean": lambda b: None,
    "drop-middle": lambda b: b["steps"].pop(3),
    "drop-last": lambda b: b["steps"].pop(),
    "drop-last-two-and-anchors": lambda b: [b["steps"].pop(), b["steps"].pop()],
    "anchor-seq-beyond": _set("anchors.2.seq", 99),
    "anchor-seqs-swapped": lambda b: [
        b["anchors"][1].update(seq=2),
        b["anchors"][2].update(seq=1),
    ],
    "anchors-swapped": lambda b: [
        b["steps"][1].update(anchor=2),
        b["steps"][2].update(anchor=1),
    ],
    "steps-share-anchor": _set("steps.2.anchor", 1),
    "tx-swapped": lambda b: b["anchors"][3].update(
        tx_hash=b["anchors"][0]["tx_hash"], block_number=b["anchors"][0]["block_number"]
    ),
    "tx-of-seal": lambda b: b["anchors"][3].update(
        tx_hash=b["seal"]["tx_hash"], block_number=b["seal"]["block_number"]
    ),
    "mode-batched": _set("anchor_mode", "batched"),
    "unanchored-middle": _set("steps.2.anchor", None),
    "anchor-as-root": lambda b: [
        b["anchors"][0].update(type="root", root=H, leaf_count=1),
        b["anchors"][0].pop("seq"),
        b["steps"][0].update(proof=[]),
    ],
    "anchor-block-off": lambda b: b["anchors"][4].update(
        block_number=b["anchors"][4]["block_number"] + 1
    ),
    "seal-dropped": _set("seal", None),
    "record-changed": _set("steps.4.record.name", "settle_twice"),
}

RUNNING: dict[str, Mutation] = {
    "clean": lambda b: None,
    "fake-seal-entry": lambda b: b.update(
        seal={
            "steps": len(b["steps"]),
            "head": H,
            "chain_id": b["chain_id"],
            "registry": b["registry"],
            "tx_hash": H,
            "block_number": 1,
        }
    ),
}

V1: dict[str, Mutation] = {
    "clean": lambda b: None,
    "preimage-changed": lambda b: b["steps"][1]["input"].update(preimage='{"amount":6}'),
    "drop-last": lambda b: b["steps"].pop(),
    "record-changed": _set("steps.0.record.name", "decide_again"),
    "swap": lambda b: b["steps"].reverse(),
}

# Malformed: both must refuse a verdict (section 10.1).
MALFORMED: dict[str, Mutation] = {
    "no-steps": _set("steps", KeyError),
    "no-seal-member": _set("seal", KeyError),
    "format-other": _set("format", "other"),
    "spec-3": _set("spec_version", 3),
    "spec-string": _set("spec_version", "2"),
    "spec-true": _set("spec_version", True),
    "spec-float": _set("spec_version", 2.0),
    "record-extra": _set("steps.0.record.extra", 1),
    "record-missing": _set("steps.0.record.prev", KeyError),
    "record-upper-hex": _set("steps.0.record.input", "0X" + "a" * 64),
    "record-upper-digits": _set("steps.0.record.input", "0x" + "A" * 64),
    "record-short-hex": _set("steps.0.record.input", "0x" + "a" * 62),
    "record-v1-in-v2": _set("steps.0.record.v", 1),
    "record-kind-unknown": _set("steps.0.record.kind", "email"),
    "record-status-unknown": _set("steps.0.record.status", "maybe"),
    "record-seq-negative": _set("steps.0.record.seq", -1),
    "record-seq-2-53": _set("steps.0.record.seq", 2**53),
    "record-seq-true": _set("steps.1.record.seq", True),
    "record-seq-string": _set("steps.0.record.seq", "0"),
    "record-name-int": _set("steps.0.record.name", 5),
    "record-name-lone-surrogate": _set("steps.0.record.name", "\udc00"),
    "proof-missing": _set("steps.0.proof", None),
    "proof-non-hex": _set("steps.0.proof", ["zz"]),
    "salt-missing": _set("steps.0.input.salt", None),
    "salt-upper": lambda b: b["steps"][0]["input"].update(
        salt=b["steps"][0]["input"]["salt"].upper()
    ),
    "part-extra": _set("steps.0.input.extra", 1),
    "part-no-preimage": _set("steps.0.input.preimage", KeyError),
    "preimage-not-string": _set("steps.0.input.preimage", {"to": "acme"}),
    "anchor-out-of-range": _set("steps.0.anchor", 99),
    "anchor-negative": _set("steps.0.anchor", -1),
    "anchor-string": _set("steps.0.anchor", "0"),
    "step-entry-extra": _set("steps.0.extra", 1),
    "anchor-entry-extra": _set("anchors.0.extra", 1),
    "anchor-entry-type-other": _set("anchors.0.type", "leaf"),
    "anchor-entry-block-zero": _set("anchors.0.block_number", 0),
    "anchor-entry-chain-zero": _set("anchors.0.chain_id", 0),
    "anchor-entry-leaf-count-zero": _set("anchors.0.leaf_count", 0),
    "anchor-entry-registry-short": _set("anchors.0.registry", "0x1234"),
    "seal-extra": _set("seal.extra", 1),
    "seal-missing-head": _set("seal.head", KeyError),
    "seal-steps-negative": _set("seal.steps", -1),
    "registry-not-address": _set("registry", "registry"),
    "chain-id-zero": _set("chain_id", 0),
    "chain-id-big": _set("chain_id", 2**64),
    "contracts-not-object": _set("contracts", []),
    "contracts-bad-address": _set("contracts.TestUSD", "0x12"),
    "mode-other": _set("anchor_mode", "hourly"),
    "run-key-upper": lambda b: b.update(run_key=b["run_key"].upper().replace("0X", "0x")),
    "workflow-id-int": _set("workflow_id", 7),
    "steps-not-list": _set("steps", {}),
}

V1_MALFORMED: dict[str, Mutation] = {
    "salt-non-null": _set("steps.0.input.salt", H),
    "record-v2": _set("steps.0.record.v", 2),
    "kind-outcome": _set("steps.0.record.kind", "outcome"),
}

# Bundles the spec calls malformed that ledgerflow's verifier does not (reported with this
# verifier): case -> how it still fails, "crash: <text>" or "verdict" (it gives one).
LEDGERFLOW_DEFECTS = {
    # section 9.1: `seal` is a required member (object or null)
    "malformed/no-seal-member": "crash: KeyError: 'seal'",
    # sections 2.1 and 5.1: a record's name is a string of Unicode scalar values
    "malformed/record-name-lone-surrogate": "crash: surrogates not allowed",
    # section 9.1: "no duplicate member names" (a reader taking the first of two chain_id members
    # would see another bundle than one taking the last)
    "raw/duplicate-top-member": "verdict",
    "raw/duplicate-informational-member": "verdict",
    # section 9.1: RFC 8259 JSON, which has no NaN
    "raw/nan-member": "verdict",
}

# Raw texts: (bundle to start from, bytes -> bytes)
RAW: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "duplicate-top-member": (
        "batched",
        lambda t: t.replace(b'{"format"', b'{"chain_id": 1, "format"', 1),
    ),
    "duplicate-informational-member": (
        "batched",
        lambda t: t.replace(b'{"format"', b'{"x": 1, "x": 2, "format"', 1),
    ),
    "bom": ("batched", lambda t: b"\xef\xbb\xbf" + t),
    "invalid-utf8": ("batched", lambda t: t.replace(b'"format"', b'"\xff": 1, "format"', 1)),
    "nan-member": ("batched", lambda t: t.replace(b'{"format"', b'{"x": NaN, "format"', 1)),
    "trailing-garbage": ("batched", lambda t: t + b" x"),
    "trailing-whitespace": ("batched", lambda t: t + b" \n\t"),
    "block-as-float": ("batched", lambda t: t.replace(b'"leaf_count": 4', b'"leaf_count": 4.0', 1)),
    "block-as-exponent": (
        "batched",
        lambda t: t.replace(b'"leaf_count": 4', b'"leaf_count": 4e0', 1),
    ),
    "escaped-member-name": ("batched", lambda t: t.replace(b'"format"', b'"\\u0066ormat"', 1)),
    "lone-surrogate-preimage-escape": (
        "batched",
        lambda t: _replace_preimage(t, b'"\\"\\ud800\\""'),
    ),
    "single-quoted": ("batched", lambda t: t.replace(b'"format"', b"'format'", 1)),
}


def _replace_preimage(text: bytes, literal: bytes) -> bytes:
    """Put a JSON string literal in place of the first preimage (commitment left as it was)."""
    b = json.loads(text)
    b["steps"][2]["input"]["preimage"] = "@@P@@"
    return json.dumps(b).encode().replace(b'"@@P@@"', literal)


def _corpus(
    clean: dict[str, Bundle], world: World
) -> list[tuple[str, bytes, dict[str, Any], bool]]:
    """(name, bundle bytes, trust root, allow_unsealed_v1) for every case."""
    out: list[tuple[str, bytes, dict[str, Any], bool]] = []

    def add(
        name: str,
        base: str,
        mutate: Mutation,
        trust: dict[str, Any] | None = None,
        allow: bool = False,
    ) -> None:
        b = copy.deepcopy(clean[base])
        mutate(b)
        out.append(
            (
                name,
                json.dumps(b, indent=1).encode("utf-8", "surrogatepass"),
                trust or world.trust,
                allow,
            )
        )

    for name, m in BATCHED.items():
        add(f"batched/{name}", "batched", m)
    for name, m in PER_STEP.items():
        add(f"per-step/{name}", "per-step", m)
    for name, m in RUNNING.items():
        add(f"running/{name}", "running", m)
    for mode in ("batched", "per-step"):
        for name, m in V1.items():
            add(f"v1-{mode}/{name}", f"v1-{mode}", m)
            add(f"v1-{mode}/{name}/allowed", f"v1-{mode}", m, allow=True)
        for name, m in V1_MALFORMED.items():
            add(f"v1-{mode}/malformed/{name}", f"v1-{mode}", m)
    for name, m in MALFORMED.items():
        add(f"malformed/{name}", "batched", m)
    t = world.trust
    latest = world.chain.w3.eth.block_number
    trusts = {
        "explicit": {**t, "contracts": None, "source": "explicit"},
        "explicit-lower-case": {**t, "registry": t["registry"].lower(), "contracts": None},
        "from-block-zero": {**t, "from_block": 0},
        "from-block-after-the-seal": {**t, "from_block": latest},
        "from-block-future": {**t, "from_block": latest + 1000},
        "other-registry": {**t, "registry": world.other.address},
        "other-chain": {**t, "chain_id": 5},
        "contracts-without-token": {**t, "contracts": [t["registry"]]},
    }
    for name, trust in trusts.items():
        add(f"trust/{name}/batched", "batched", lambda b: None, trust)
        add(f"trust/{name}/per-step", "per-step", lambda b: None, trust)
        add(f"trust/{name}/v1-batched", "v1-batched", lambda b: None, trust)
        add(f"trust/{name}/v1-per-step/allowed", "v1-per-step", lambda b: None, trust, True)
    for name, (base, edit) in RAW.items():
        text = json.dumps(clean[base]).encode()
        edited = edit(text)
        assert edited != text, name
        out.append((f"raw/{name}", edited, t, False))
    return out


async def _python(data: bytes, trust: dict[str, Any], allow: bool, rpc_url: str) -> Outcome:
    w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url))
    try:
        report = await verify_bundle(
            data, TrustRoot(**trust), Web3Chain(w3), allow_unsealed_v1=allow
        )
    except BundleError as e:
        return Outcome(exit_code=2, error=str(e), malformed=True)
    except Exception as e:  # a crash is a disagreement with any verifier that gives an answer
        return Outcome(exit_code=2, error=f"crashed: {type(e).__name__}: {e}")
    finally:
        await w3.provider.disconnect()
    d = report.model_dump(mode="json")
    return Outcome(
        exit_code=0 if report.ok else 1,
        report=d,
        findings={(f.step, f.code) for f in report.findings},
    )


# ---- tests ---------------------------------------------------------------------------------------


def test_the_spec_vectors_in_typescript(ts_cli: Path) -> None:
    """verifiers/ts recomputes section 14 (LCE-1, run keys, commitments, records, heads, both
    trees and their proofs, topics) with its own code and @openzeppelin/merkle-tree."""
    done = subprocess.run(
        ["node", "--test", "dist/test/"], cwd=TS_DIR, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout and "# pass 0" not in done.stdout


def test_exit_codes(ts_cli: Path, world: World, clean: dict[str, Bundle], tmp_path: Path) -> None:
    ok, bad, malformed = tmp_path / "ok.json", tmp_path / "bad.json", tmp_path / "malformed.json"
    ok.write_text(json.dumps(clean["batched"]))
    b = copy.deepcopy(clean["batched"])
    b["seal"] = None
    bad.write_text(json.dumps(b))
    malformed.write_text(json.dumps({**clean["batched"], "format": "x"}))
    trust = ["--registry", world.registry.address, "--chain-id", str(world.chain.chain_id)]
    env = {**os.environ, "LEDGERFLOW_HOME": str(tmp_path / "no-home")}
    env.pop("LEDGERFLOW_DEPLOYMENTS_FILE", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["node", str(ts_cli), *args], capture_output=True, text=True, env=env, timeout=120
        )

    rpc = ["--rpc", world.rpc_url]
    done = run("--bundle", str(ok), *rpc, *trust, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["registry"] == world.registry.address
    assert report["chain_id"] == world.chain.chain_id and report["contracts_source"] == "bundle"
    assert run("--bundle", str(bad), *rpc, *trust).returncode == 1
    done = run("--bundle", str(malformed), *rpc, *trust, "--json")
    assert done.returncode == 2 and "malformed" in done.stderr
    assert json.loads(done.stdout)["error"].startswith("malformed bundle")
    # no trust root at all: an error naming the deployments file it tried, no verdict
    done = run("--bundle", str(ok), *rpc)
    assert done.returncode == 2 and "deployments.json" in done.stderr
    # a deployments file is a trust root (with its contracts)
    deployments = tmp_path / "deployments.json"
    deployments.write_text(
        json.dumps(
            {
                "chain_id": world.chain.chain_id,
                "block_number": world.block,
                "contracts": world.contracts,
            }
        )
    )
    done = run("--bundle", str(ok), *rpc, "--deployments", str(deployments), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["contracts_source"] == "trust_root"
    # an unreachable node is an error, not a verdict
    assert run("--bundle", str(ok), "--rpc", "http://127.0.0.1:1", *trust).returncode == 2
    # several bundles: one result each, the worst status wins
    done = run("--bundle", str(ok), "--bundle", str(bad), *rpc, *trust, "--json")
    assert done.returncode == 1
    assert [r["ok"] for r in json.loads(done.stdout)] == [True, False]
    assert run("--bundle", str(ok), "--bundle", str(malformed), *rpc, *trust).returncode == 2
    # log scans split into small ranges give the same verdict
    done = run("--bundle", str(bad), *rpc, *trust, "--log-range", "3", "--json")
    assert json.loads(done.stdout)["first_bad_step"] == len(b["steps"])


def test_both_verifiers_agree_on_the_differential_corpus(
    ts_cli: Path, world: World, clean: dict[str, Bundle], tmp_path: Path
) -> None:
    corpus = _corpus(clean, world)
    assert len(corpus) > 200
    cases, python = [], {}
    for k, (name, data, trust, allow) in enumerate(corpus):
        path = tmp_path / f"case-{k}.json"
        path.write_bytes(data)
        cases.append(BundleCase(name, path, world.rpc_url, trust, allow))

    async def all_python() -> list[Outcome]:
        limit = asyncio.Semaphore(8)

        async def one(data: bytes, trust: dict[str, Any], allow: bool) -> Outcome:
            async with limit:
                return await _python(data, trust, allow, world.rpc_url)

        return await asyncio.gather(*(one(d, t, a) for _, d, t, a in corpus))

    for (name, *_), outcome in zip(corpus, asyncio.run(all_python()), strict=True):
        python[name] = outcome
    ts = ts_outcomes(cases)
    # known defects of ledgerflow's verifier: the TypeScript one must call these malformed, and
    # ledgerflow's must still fail the same way (when it is fixed, the entry goes)
    forgive_known_differences(python, ts)
    for name, how in LEDGERFLOW_DEFECTS.items():
        p, t = python.pop(name), ts.pop(name)
        assert t.malformed, (name, t)
        still = p.report is not None if how == "verdict" else how[7:] in p.error
        assert still and not p.malformed, (
            f"{name}: ledgerflow's verifier no longer fails that way ({p.error or p.verdict}): "
            "remove it from LEDGERFLOW_DEFECTS"
        )
    problems = disagreements(python, ts)
    assert not problems, "\n".join(problems)
    # the corpus reaches every class of finding the spec names
    codes = {code for o in python.values() for _, code in o.findings}
    assert codes >= {
        "run_key", "untrusted_registry", "untrusted_chain", "node_chain", "seq", "run", "prev",
        "preimage", "commitment", "failed_output", "outcome", "tx_result", "unanchored",
        "anchor_mode", "proof", "anchor_tx", "checkpoint_log", "unsealed", "seal_steps",
        "seal_head", "bundle_seal", "after_seal", "chain_effect",
    }, codes  # fmt: skip
    assert sum(o.malformed for o in python.values()) >= len(MALFORMED)
    assert sum(bool(o.report and o.report["ok"]) for o in python.values()) >= 10


def test_both_verifiers_agree_offline_on_bundles_exported_from_the_store(
    ts_cli: Path, tmp_path: Path
) -> None:
    """``build_bundle`` (what ``ledgerflow export`` writes) read by the other verifier: v2 sealed
    and anchored, redacted, unanchored per-step, v1; clean and tampered; checked offline (no node:
    every record, commitment and proof, and finding node_chain at step 0)."""
    from ledgerflow.checkpoint.anchorer import build_batch
    from ledgerflow.checkpoint.bundle import build_bundle
    from ledgerflow.store import StepRow, Store
    from tests.test_store import make_run, seal_of

    registry = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    store = Store(f"sqlite:///{tmp_path}/store.db")
    store.migrate()

    def anchor_all(batch: int) -> None:
        block = 10
        while got := store.claim_batch(batch, build_batch, chain_id=31337, registry=registry):
            anchor, _ = got
            assert anchor.id is not None
            store.confirm_anchor(anchor.id, tx_hash="0x" + f"{block:064x}", block_number=block)
            block += 1

    runs: dict[str, str] = {}
    wf, _, rows = make_run(store, 9, spec=2)
    store.save_steps(rows)
    seal_of(store, rows)
    runs["v2-sealed"] = wf
    wf, _, rows = make_run(store, 1, spec=2)
    store.save_steps(rows)
    seal_of(store, rows)
    runs["v2-one-step"] = wf
    anchor_all(4)
    wf, _, rows = make_run(store, 5)
    store.save_steps(rows)
    runs["v1"] = wf
    anchor_all(8)
    wf, _, rows = make_run(store, 4, spec=2, mode="per-step")
    store.save_steps(rows)
    runs["v2-per-step-pending"] = wf
    wf, _, rows = make_run(store, 4, spec=2)
    store.save_steps(rows)
    with store.session() as s:
        row = s.get(StepRow, rows[1].id)
        assert row is not None
        row.input_preimage = row.input_salt = None
        s.add(row)
        s.commit()
    runs["v2-redacted-pending"] = wf

    mutations: dict[str, Mutation] = {
        "clean": lambda b: None,
        "drop-last": lambda b: b["steps"].pop(),
        "swap": lambda b: b["steps"].reverse(),
        "preimage-byte": lambda b: b["steps"][0]["output"].update(
            preimage=b["steps"][0]["output"]["preimage"].replace('"', "'", 1)
        ),
        "record-name": lambda b: b["steps"][0]["record"].update(name="renamed"),
        "forged-sibling": lambda b: b["steps"][0].update(
            proof=[H, *(b["steps"][0]["proof"] or [])[1:]] if b["steps"][0]["proof"] else None
        ),
    }
    trust = {"chain_id": 31337, "registry": registry, "from_block": 1, "contracts": [registry]}
    cases, python = [], {}
    for run_name, wf in runs.items():
        exported = build_bundle(
            store,
            wf,
            chain_id=31337,
            registry=registry,
            registry_deployment_block=1,
            contracts={"CheckpointRegistry": registry},
        )
        for name, mutate in mutations.items():
            b = copy.deepcopy(exported)
            mutate(b)
            case = f"{run_name}/{name}"
            path = tmp_path / f"{case.replace('/', '-')}.json"
            path.write_text(json.dumps(b))
            allow = run_name == "v1"
            cases.append(BundleCase(case, path, "http://127.0.0.1:1", trust, allow))
            python[case] = asyncio.run(_python_offline(path.read_bytes(), trust, allow))
    ts = ts_outcomes(cases, ["--offline"])
    # a tampered preimage that is no longer JSON: both say `preimage`, only the TypeScript
    # verifier also says `commitment` (see forgive_known_differences)
    assert forgive_known_differences(python, ts) == len(runs)
    problems = disagreements(python, ts)
    assert not problems, "\n".join(problems)
    clean = python["v2-sealed/clean"]
    assert clean.findings == {(0, "node_chain")} and clean.report is not None
    assert clean.report["steps"] == 9


async def _python_offline(data: bytes, trust: dict[str, Any], allow: bool) -> Outcome:
    try:
        report = await verify_bundle(data, TrustRoot(**trust), None, allow_unsealed_v1=allow)
    except BundleError as e:
        return Outcome(exit_code=2, error=str(e), malformed=True)
    return Outcome(
        exit_code=0 if report.ok else 1,
        report=report.model_dump(mode="json"),
        findings={(f.step, f.code) for f in report.findings},
    )
