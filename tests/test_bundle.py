"""Audit bundles without a chain: the export from the store, the shape rules, the offline phases.

The chain phases (anchors, seals, chain effects) are exercised on a real anvil by the tamper
battery (tests/test_tamper.py).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerflow.checkpoint.anchorer import build_batch
from ledgerflow.checkpoint.bundle import (
    BUNDLE_FORMAT,
    BundleError,
    TrustRoot,
    _record_preimage,
    build_bundle,
    parse_bundle,
    verify_bundle,
)
from ledgerflow.checkpoint.canonical import canonical_bytes
from ledgerflow.errors import VerificationError
from ledgerflow.store import StepRow, Store
from tests.test_store import make_run, seal_of

REGISTRY = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
TRUST = TrustRoot(chain_id=31337, registry=REGISTRY, from_block=1, contracts=[REGISTRY])


@pytest.fixture
def store(tmp_path: Any) -> Store:
    s = Store(f"sqlite:///{tmp_path}/store.db")
    s.migrate()
    return s


def _export(store: Store, wf: str) -> dict[str, Any]:
    return build_bundle(
        store,
        wf,
        chain_id=31337,
        registry=REGISTRY,
        registry_deployment_block=1,
        contracts={"CheckpointRegistry": REGISTRY},
    )


def _anchor_all(store: Store, batch: int = 4) -> None:
    block = 10
    while got := store.claim_batch(batch, build_batch, chain_id=31337, registry=REGISTRY):
        anchor, _ = got
        assert anchor.id is not None
        store.confirm_anchor(anchor.id, tx_hash="0x" + f"{block:064x}", block_number=block)
        block += 1


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(),
    kind=st.sampled_from(["llm", "chain", "outcome", "timer"]),
    seq=st.integers(0, 2**53 - 1),
    status=st.sampled_from(["ok", "failed"]),
)
def test_the_record_fast_path_is_lce(name: str, kind: str, seq: int, status: str) -> None:
    h = "0x" + "ab" * 32
    record = {
        "v": 2,
        "run": h,
        "seq": seq,
        "kind": kind,
        "name": name,
        "input": h,
        "output": h,
        "status": status,
        "prev": h,
    }
    try:
        expected = canonical_bytes(record)
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 encoding either way
        return
    assert _record_preimage(record) == expected


def test_export_of_a_sealed_v2_run_from_the_store(store: Store) -> None:
    wf, _, rows = make_run(store, 9, spec=2)
    store.save_steps(rows)
    seal_of(store, rows)
    _anchor_all(store)
    b = _export(store, wf)
    assert parse_bundle(json.dumps(b)) == json.loads(json.dumps(b))
    assert b["format"] == BUNDLE_FORMAT and b["spec_version"] == 2
    assert len(b["steps"]) == 9 and [s["record"]["seq"] for s in b["steps"]] == list(range(9))
    assert [a["leaf_count"] for a in b["anchors"]] == [4, 4, 1]
    assert b["steps"][8]["record"]["kind"] == "outcome"
    assert all(s["input"]["salt"].startswith("0x") for s in b["steps"])
    seal = b["seal"]
    assert seal is not None and seal["steps"] == 9 and seal["head"] == rows[-1].head
    assert seal["tx_hash"] == b["anchors"][2]["tx_hash"]  # rode with the last steps
    # offline: every record, commitment and proof checks; only the chain is missing
    report = asyncio.run(verify_bundle(b, TRUST, None))
    assert [(f.step, f.code) for f in report.findings] == [(0, "node_chain")]
    assert report.head == rows[-1].head and report.steps == 9 and not report.ok


def test_a_redacted_step_is_exported_without_preimage_or_salt(store: Store) -> None:
    wf, _, rows = make_run(store, 4, spec=2)
    store.save_steps(rows)
    with store.session() as s:
        row = s.get(StepRow, rows[1].id)
        assert row is not None
        row.input_preimage = row.output_preimage = row.input_salt = row.output_salt = None
        row.redacted_at = datetime.now(UTC)
        s.add(row)
        s.commit()
    b = _export(store, wf)
    assert b["steps"][1]["input"] is None and b["steps"][1]["output"] is None
    assert b["steps"][1]["record"]["input"] == rows[1].input_hash  # the commitment stays
    report = asyncio.run(verify_bundle(b, TRUST, None))
    assert report.redacted == [{"step": 1, "parts": ["input", "output"]}]
    assert {f.code for f in report.findings} == {"node_chain", "unanchored"}


def test_export_of_a_v1_run(store: Store) -> None:
    wf, _, rows = make_run(store, 5)
    store.save_steps(rows)
    _anchor_all(store, batch=8)
    b = _export(store, wf)
    assert b["spec_version"] == 1 and b["seal"] is None
    assert all(s["record"]["v"] == 1 and s["input"]["salt"] is None for s in b["steps"])
    report = asyncio.run(verify_bundle(b, TRUST, None))
    assert [(f.step, f.code) for f in report.findings] == [(0, "node_chain")]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.update(run_key=b["run_key"].upper()),
        lambda b: b.update(chain_id=0),
        lambda b: b.update(registry="0x1234"),
        lambda b: b["steps"][0]["record"].update(v=1),
        lambda b: b["steps"][0]["record"].update(seq=-1),
        lambda b: b["steps"][0]["record"].update(seq=True),
        lambda b: b["steps"][0]["record"].update(kind="magic"),
        lambda b: b["steps"][0]["record"].pop("prev"),
        lambda b: b["steps"][0].update(extra=1),
        lambda b: b["steps"][0]["input"].update(preimage=7),
        lambda b: b["steps"][0]["input"].update(salt="0x" + "ab" * 31),
        lambda b: b["steps"][0].update(proof=["0x" + "AB" * 32]),
        lambda b: b["anchors"][0].update(leaf_count=0),
        lambda b: b["anchors"][0].update(type="leaf"),
        lambda b: b["seal"].update(extra=True),
        lambda b: b.update(steps={}),
    ],
)
def test_malformed_bundles_are_rejected(store: Store, mutate: Any) -> None:
    wf, _, rows = make_run(store, 3, spec=2)
    store.save_steps(rows)
    seal_of(store, rows)
    _anchor_all(store)
    b = _export(store, wf)
    mutate(b)
    with pytest.raises(BundleError):
        parse_bundle(b)


def test_non_json_is_malformed() -> None:
    with pytest.raises(BundleError):
        parse_bundle("{nope")
    with pytest.raises(BundleError):
        parse_bundle("[]")


def test_explicit_trust_roots() -> None:
    trust = TrustRoot.explicit(REGISTRY.lower(), 31337)
    assert trust.trusts(REGISTRY) and trust.contracts is None and trust.from_block == 0
    with pytest.raises(VerificationError):
        TrustRoot.explicit("0x1234", 31337)
    with pytest.raises(VerificationError):
        TrustRoot.explicit(REGISTRY, 0)
