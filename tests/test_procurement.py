"""ProcurementWorkflow end to end on the real stack: Temporal dev server, anvil, store."""

from __future__ import annotations

import uuid

import pytest

from ledgerflow.types import ProcurementRequest, ProcurementState
from tests.conftest import Stack


async def _run(stack: Stack, request: ProcurementRequest, *, deliver: bool = True) -> dict:
    wf_id = f"proc-{uuid.uuid4().hex[:10]}"
    handle = await stack.client.start("ProcurementWorkflow", request, workflow_id=wf_id)
    if deliver:
        await _wait_phase(stack, wf_id, "awaiting-delivery")
        await stack.client.confirm_delivery(wf_id, reference="pod-1")
    result = await stack.client.result(handle.id)
    return {"id": wf_id, **result}


async def _wait_phase(stack: Stack, wf_id: str, phase: str, timeout: float = 60) -> None:
    import asyncio

    handle = stack.client.temporal.get_workflow_handle(wf_id)
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        state = await handle.query("state", result_type=ProcurementState)
        if state.phase == phase:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{wf_id} never reached {phase}")


@pytest.mark.parametrize("mode", ["batched", "per-step"])
async def test_happy_path_verifies(stack: Stack, mode: str) -> None:
    res = await _run(stack, ProcurementRequest(sku="WIDGET-42", quantity=10, anchor_mode=mode))
    assert res["outcome"] == "completed", res
    assert res["anchored"] is True
    report = await stack.client.verify(res["id"])
    assert report.ok, report.problems
    assert report.steps == res["steps"]
    assert report.head == res["head"]
    assert report.history_checked
