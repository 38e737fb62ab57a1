"""Replay gate: stored histories of every workflow must replay against today's workflow code.

A nondeterministic change to workflow code (reordered activities, a new step, a changed hash
input) fails here before it can break running workflows. Record fresh histories after an
intentional, versioned change with ``LEDGERFLOW_RECORD_HISTORIES=1 make test``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from ledgerflow.activities.checkpoint import CheckpointActivities
from ledgerflow.converter import data_converter
from ledgerflow.worker.runner import workflow_classes
from ledgerflow.workflows.procurement import ProcurementRequest
from tests.conftest import Stack
from tests.test_procurement import _wait_phase

HISTORIES = Path(__file__).parent / "histories"


def _replayer() -> Replayer:
    from ledgerflow_bench.workflow import BenchWorkflow

    return Replayer(workflows=[*workflow_classes(), BenchWorkflow], data_converter=data_converter)


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_stored_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    await _replayer().replay_workflow(history)


def test_every_workflow_has_a_stored_history() -> None:
    stored = {
        json.loads(p.read_text())["events"][0]["workflowExecutionStartedEventAttributes"][
            "workflowType"
        ]["name"]
        for p in HISTORIES.glob("*.json")
    }
    for cls in workflow_classes():
        name = cls.__temporal_workflow_definition.name  # type: ignore[attr-defined]
        assert name in stored, f"no stored history for {name}: record one"


def test_every_checkpointed_workflow_has_a_spec_v2_history() -> None:
    """New runs take the spec v2 path (workflow.patched): each checkpointed workflow needs a
    stored history of that path too, beside its version 1 histories."""
    from ledgerflow.flow import CheckpointedWorkflow
    from ledgerflow.flow.ledger import SPEC_V2_PATCH

    def patches(events: list[dict[str, Any]]) -> set[str]:
        out = set()
        for event in events:
            marker = event.get("markerRecordedEventAttributes") or {}
            if marker.get("markerName") != "core_patch":
                continue
            for payload in marker["details"]["patch-data"]["payloads"]:
                out.add(json.loads(base64.b64decode(payload["data"]))["id"])
        return out

    v2 = set()
    for p in HISTORIES.glob("*.json"):
        events = json.loads(p.read_text())["events"]
        if SPEC_V2_PATCH in patches(events):
            started = events[0]["workflowExecutionStartedEventAttributes"]
            v2.add(started["workflowType"]["name"])
    for cls in workflow_classes():
        if issubclass(cls, CheckpointedWorkflow):
            name = cls.__temporal_workflow_definition.name  # type: ignore[attr-defined]
            assert name in v2, f"no spec v2 history for {name}: record one"


@pytest.mark.parametrize("mode", ["batched", "per-step"])
async def test_fresh_history_replays(stack: Stack, mode: str) -> None:
    # The file name is the workflow id: hashes in the history depend on it.
    # Recorded under the current checkpoint spec (v2); the version 1 histories stay as recorded.
    wf_id = f"procurement-v2-{mode}-{uuid.uuid4().hex[:8]}"
    await stack.client.start(
        "ProcurementWorkflow",
        ProcurementRequest(sku="WIDGET-42", quantity=2, anchor_mode=mode),  # type: ignore[arg-type]
        workflow_id=wf_id,
    )
    await _wait_phase(stack, wf_id, "awaiting-delivery")
    await stack.client.confirm_delivery(wf_id)
    await stack.client.result(wf_id)
    history = await stack.client.temporal.get_workflow_handle(wf_id).fetch_history()
    await _replayer().replay_workflow(history)
    if os.environ.get("LEDGERFLOW_RECORD_HISTORIES") == "1":
        for old in HISTORIES.glob(f"procurement-v2-{mode}-*.json"):
            old.unlink()
        (HISTORIES / f"{wf_id}.json").write_text(history.to_json())


# InvoiceReconciliationWorkflow and ContentProvenanceWorkflow: each recorded scenario covers a
# path (update answered, review timed out) in one anchoring mode.
_SCENARIOS: dict[str, tuple[str, dict[str, Any], tuple[str, dict[str, Any]] | None]] = {
    "invoice-resolved": (
        "InvoiceReconciliationWorkflow",
        {
            "invoice_number": "INV-REPLAY-1",
            "supplier": "0x976EA74026E726554dB657fA54763abd0C3a0aa9",
            "order_id": "0x" + "5e" * 32,  # no such order: a mismatch
            "lines": [{"description": "WIDGET-42", "quantity": 2, "unit_price": 12_000_000}],
            "notes": "Please pay promptly.",
            "anchor_mode": "per-step",
        },
        ("resolve", {"action": "accept", "resolver": "ap@acme", "reason": "credit note"}),
    ),
    "invoice-timeout": (
        "InvoiceReconciliationWorkflow",
        {"invoice_number": "INV-REPLAY-2", "review_timeout_seconds": 1, "anchor_mode": "batched"},
        None,
    ),
    "content-reviewed": (
        "ContentProvenanceWorkflow",
        {"title": "Memo", "body": "Confidential: Q3 numbers.", "anchor_mode": "batched"},
        ("review", {"action": "reject", "reviewer": "editor@acme", "reason": "internal"}),
    ),
    # Signed provenance claim and its registration (content.provenance-claims-1).
    "content-provenance": (
        "ContentProvenanceWorkflow",
        {
            "title": "Launch post",
            "body": "Our AI-drafted launch post.",
            "generator_model": "gpt-test",
            "generator_provider": "openai",
            "prompt_hash": "0x" + "ab" * 32,
            "anchor_mode": "batched",
        },
        None,
    ),
    "content-clean": (
        "ContentProvenanceWorkflow",
        {"title": "Release notes", "body": "Version 2.4 is out.", "anchor_mode": "per-step"},
        None,
    ),
    # The authoring example of docs/authoring.md: LLM decision, approval, escrow, saga.
    "vendor-payment-approved": (
        "VendorPaymentWorkflow",
        {},
        ("approve", {"approved": True, "approver": "cfo@acme", "reason": "replay"}),
    ),
}
#: What each steered scenario waits for before its update is sent (the state query's `awaiting`).
_AWAITING = {"resolve": "resolution", "review": "review", "approve": "approval"}


async def _wait_awaiting(handle: Any, what: str, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if (await handle.query("state")).get("awaiting") == what:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{handle.id} never waited for {what}")


@pytest.mark.parametrize("scenario", sorted(_SCENARIOS))
async def test_fresh_history_replays_invoice_and_content(stack: Stack, scenario: str) -> None:
    workflow_type, data, update = _SCENARIOS[scenario]
    wf_id = f"{scenario}-v2-{uuid.uuid4().hex[:8]}"
    await stack.client.start(workflow_type, data, workflow_id=wf_id)
    handle = stack.client.temporal.get_workflow_handle(wf_id)
    if update is not None:
        name, arg = update
        await _wait_awaiting(handle, _AWAITING[name])
        await handle.execute_update(name, arg)
    await stack.client.result(wf_id)
    history = await handle.fetch_history()
    await _replayer().replay_workflow(history)
    if os.environ.get("LEDGERFLOW_RECORD_HISTORIES") == "1":
        for old in HISTORIES.glob(f"{scenario}-v2-*.json"):
            old.unlink()
        (HISTORIES / f"{wf_id}.json").write_text(history.to_json())


@pytest.mark.parametrize("mode", ["none", "batched"])
async def test_fresh_history_replays_bench(stack: Stack, mode: str) -> None:
    from ledgerflow_bench.activities import BenchInput, bench_step
    from ledgerflow_bench.workflow import BenchWorkflow

    from ledgerflow.worker.runner import build_worker

    # The benchmark's workflow is served by the bench's own worker, never by a product worker.
    task_queue = f"bench-replay-{uuid.uuid4().hex[:8]}"
    worker = build_worker(
        stack.client.temporal,
        stack.runtime,
        task_queue=task_queue,
        workflows=[BenchWorkflow],
        activities=[bench_step, *CheckpointActivities(stack.runtime).all()],
    )
    wf_id = f"bench-v2-{mode}-{uuid.uuid4().hex[:8]}"
    async with worker:
        handle = await stack.client.temporal.start_workflow(
            "BenchWorkflow",
            BenchInput(steps=3, mode=mode),  # type: ignore[arg-type]
            id=wf_id,
            task_queue=task_queue,
        )
        await handle.result()
    history = await handle.fetch_history()
    await _replayer().replay_workflow(history)
    if os.environ.get("LEDGERFLOW_RECORD_HISTORIES") == "1":
        for old in HISTORIES.glob(f"bench-v2-{mode}-*.json"):
            old.unlink()
        (HISTORIES / f"{wf_id}.json").write_text(history.to_json())


async def test_a_run_started_by_ledgerflow_needs_no_open_run(stack: Stack) -> None:
    """A ledgerflow client puts a salt secret into every start's memo: the run derives its seed
    from it and its run id (no ``checkpoint.open_run``, one event fewer); a run started without
    one (the Temporal UI, a plain client) asks ``open_run``. Both verify; two runs given the same
    secret still get different salts."""
    from ledgerflow_bench.activities import BenchInput, bench_step
    from ledgerflow_bench.workflow import BenchWorkflow
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import Client

    from ledgerflow.checkpoint.anchorer import Anchorer
    from ledgerflow.checkpoint.verify import verify_run
    from ledgerflow.types import SALT_SECRET_MEMO
    from ledgerflow.worker.runner import build_worker

    ours = stack.client.temporal
    plain = await Client.connect(
        stack.settings.temporal_address, namespace=ours.namespace, data_converter=data_converter
    )
    task_queue = f"bench-salt-{uuid.uuid4().hex[:8]}"
    worker = build_worker(
        ours,
        stack.runtime,
        task_queue=task_queue,
        workflows=[BenchWorkflow],
        activities=[bench_step, *CheckpointActivities(stack.runtime).all()],
    )
    stop = asyncio.Event()
    anchorer = asyncio.create_task(Anchorer(stack.runtime, batch_size=64, max_wait=0.1).run(stop))
    secret = "0x" + "ab" * 32

    async def run(client: Client, memo: dict[str, str] | None = None) -> tuple[str, int]:
        wf_id = f"bench-salt-{uuid.uuid4().hex[:8]}"
        handle = await client.start_workflow(
            "BenchWorkflow",
            BenchInput(steps=2, mode="batched"),  # type: ignore[arg-type]
            id=wf_id,
            task_queue=task_queue,
            memo=memo,
        )
        await handle.result()
        history = await handle.fetch_history()
        await _replayer().replay_workflow(history)
        markers = sum(
            1 for e in history.events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        )
        return wf_id, markers

    try:
        async with worker:
            by_ledgerflow, markers_ours = await run(ours)
            by_plain, markers_plain = await run(plain)
            same_a, _ = await run(plain, {SALT_SECRET_MEMO: secret})
            same_b, _ = await run(plain, {SALT_SECRET_MEMO: secret})
    finally:
        stop.set()
        await anchorer
    assert markers_ours == 1  # the final flush only
    assert markers_plain == 2  # open_run, then the final flush
    for wf_id in (by_ledgerflow, by_plain, same_a, same_b):
        report = await verify_run(stack.runtime, wf_id)
        assert report.ok, report.problems
    salts = [
        {
            s.input_salt
            for s in stack.runtime.store.get_steps(w, stack.runtime.store.get_run(w).run_id)
        }
        for w in (same_a, same_b)
    ]
    assert salts[0] and not salts[0] & salts[1]  # one secret, two runs: no salt in common
