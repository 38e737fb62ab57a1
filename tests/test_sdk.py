"""The SDK as a Python developer expects it: typed results, typed errors, an async context
manager, delivery with a quantity, and the store found from any directory (or a clear error)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from pathlib import Path

import pytest
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from ledgerflow import (
    ConfigError,
    EngineUnavailable,
    LedgerflowError,
    RunAlreadyStarted,
    RunFailed,
    RunNotFound,
    StackError,
    StoreError,
    UpdateRejected,
)
from ledgerflow.checkpoint.verify import VerifyReport
from ledgerflow.sdk import LedgerflowClient, RunStatus, RunSummary
from ledgerflow.sdk.client import map_temporal_error, resolve_paths
from ledgerflow.settings import Settings
from ledgerflow.workflows.procurement import ProcurementResult, ProcurementState
from ledgerflow.workflows.vendor_payment import VendorPaymentResult
from tests.conftest import Stack
from tests.support.plain_workflow import PlainDictWorkflow

TUSD = 1_000_000


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def _awaiting(lf: LedgerflowClient, wf_id: str, what: str, timeout: float = 60) -> RunStatus:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await lf.status(wf_id)
        if status.awaiting == what:
            return status
        assert not status.closed, f"{wf_id} ended ({status.status}) before awaiting {what}"
        assert loop.time() < deadline, f"{wf_id} never awaited {what} (last: {status})"
        await asyncio.sleep(0.1)


# ---- connecting ---------------------------------------------------------------------------------


async def test_connect_is_awaitable_and_an_async_context_manager(stack: Stack) -> None:
    async with LedgerflowClient.connect(stack.settings) as lf:
        assert isinstance(lf, LedgerflowClient)
        assert await lf.list_runs(limit=1) is not None
        runtime = lf.runtime
        assert "w3" not in runtime.__dict__ or runtime.w3 is not None
    # The same call awaited gives a client that is itself an async context manager.
    lf2 = await LedgerflowClient.connect(stack.settings)
    async with lf2 as same:
        assert same is lf2


async def test_connect_to_nothing_is_a_stack_error() -> None:
    from ledgerflow.dev.stack import free_port

    settings = Settings(_env_file=None, temporal_address=f"127.0.0.1:{free_port()}")  # type: ignore[call-arg]
    with pytest.raises(StackError, match="make run"):
        async with LedgerflowClient.connect(settings):
            pass  # pragma: no cover


# ---- typed results ------------------------------------------------------------------------------


async def test_results_are_the_workflows_result_models(stack: Stack) -> None:
    lf = stack.client
    wf_id = _id("sdk-pay")
    await lf.start("VendorPaymentWorkflow", {"max_amount": 5 * TUSD}, workflow_id=wf_id)
    result = await lf.result(wf_id)
    assert isinstance(result, VendorPaymentResult)
    assert result.outcome == "completed" and result.amount == 5 * TUSD
    status = await lf.status(wf_id)
    assert status.status == "completed" and status.closed
    assert isinstance(status.result, VendorPaymentResult)
    assert status.phase == "completed" and status.awaiting is None
    assert status.steps == result.steps and status.head == result.head
    assert status.anchor_state == "anchored"
    # The CLI's JSON of a status is plain data.
    assert json.loads(status.model_dump_json())["result"]["amount"] == 5 * TUSD

    report = await lf.verify(wf_id)
    assert isinstance(report, VerifyReport) and report.ok, report.problems

    runs = await lf.list_runs(limit=50)
    assert all(isinstance(r, RunSummary) for r in runs)
    mine = [r for r in runs if r.workflow_id == wf_id]
    assert mine and mine[0].workflow_type == "VendorPaymentWorkflow"
    assert mine[0].status == "completed" and mine[0].steps == result.steps


async def test_a_result_of_an_unknown_workflow_type_stays_a_dict(
    stack: Stack, temporal_client: Client
) -> None:
    queue = _id("sdk-plain")
    async with Worker(temporal_client, task_queue=queue, workflows=[PlainDictWorkflow]):
        wf_id = _id("plain")
        await temporal_client.start_workflow(
            "SdkPlainDictWorkflow", {"x": "hi"}, id=wf_id, task_queue=queue
        )
        assert await stack.client.result(wf_id) == {"echo": "hi", "n": 3}


async def test_status_while_waiting_has_the_typed_state(stack: Stack) -> None:
    lf = stack.client
    wf_id = _id("sdk-wait")
    await lf.start("ProcurementWorkflow", {"sku": "WIDGET-42", "quantity": 2}, workflow_id=wf_id)
    status = await _awaiting(lf, wf_id, "delivery")
    assert isinstance(status.state, ProcurementState)
    assert status.phase == "awaiting-delivery" == status.state.phase
    assert status.status == "running" and not status.closed
    await lf.confirm_delivery(wf_id, reference="POD-7", quantity=2)
    result = await lf.result(wf_id)
    assert isinstance(result, ProcurementResult) and result.outcome == "completed"
    # The quantity travelled with the signal.
    history = await lf.temporal.get_workflow_handle(wf_id).fetch_history()
    signals = [
        json.loads(e.workflow_execution_signaled_event_attributes.input.payloads[0].data)
        for e in history.events
        if e.HasField("workflow_execution_signaled_event_attributes")
    ]
    assert signals == [{"reference": "POD-7", "quantity": 2}]


# ---- typed errors -------------------------------------------------------------------------------


async def test_an_unknown_run_is_run_not_found_with_the_cause(stack: Stack) -> None:
    for call in (
        stack.client.result("no-such-run-xyz"),
        stack.client.status("no-such-run-xyz"),
        stack.client.approve("no-such-run-xyz"),
    ):
        with pytest.raises(RunNotFound) as exc:
            await call
        assert isinstance(exc.value, LedgerflowError)
        assert isinstance(exc.value.__cause__, RPCError)
        assert exc.value.workflow_id == "no-such-run-xyz"


async def test_a_refused_update_is_update_rejected(stack: Stack) -> None:
    """Approving a run that waits for no approval: the run's validator refuses it."""
    lf = stack.client
    wf_id = _id("sdk-refuse")
    await lf.start("ProcurementWorkflow", {"sku": "WIDGET-42", "quantity": 1}, workflow_id=wf_id)
    await _awaiting(lf, wf_id, "delivery")
    with pytest.raises(UpdateRejected) as exc:
        await lf.approve(wf_id, approver="cfo@example.com")
    assert exc.value.update == "approve" and exc.value.failure_type == "UpdateRejected"
    assert isinstance(exc.value.__cause__, WorkflowUpdateFailedError)
    assert wf_id in str(exc.value)
    await lf.confirm_delivery(wf_id)
    assert (await lf.result(wf_id)).outcome == "completed"
    # A signal to a run that has ended: nothing to steer any more.
    with pytest.raises(RunNotFound):
        await lf.confirm_delivery(wf_id)


async def test_a_taken_workflow_id_is_run_already_started(stack: Stack) -> None:
    lf = stack.client
    wf_id = _id("sdk-twice")
    await lf.start("VendorPaymentWorkflow", {}, workflow_id=wf_id)  # waits for approval
    try:
        with pytest.raises(RunAlreadyStarted) as exc:
            await lf.start("VendorPaymentWorkflow", {}, workflow_id=wf_id)
        assert exc.value.workflow_id == wf_id
    finally:
        await lf.temporal.get_workflow_handle(wf_id).terminate("test done")


async def test_a_run_that_did_not_complete_is_run_failed(stack: Stack) -> None:
    lf = stack.client
    wf_id = _id("sdk-term")
    await lf.start("VendorPaymentWorkflow", {}, workflow_id=wf_id)
    await _awaiting(lf, wf_id, "approval")
    await lf.temporal.get_workflow_handle(wf_id).terminate("an operator stopped it")
    with pytest.raises(RunFailed) as exc:
        await lf.result(wf_id)
    assert exc.value.status == "terminated"
    assert str(exc.value).startswith(f"run {wf_id!r} terminated")
    assert isinstance(exc.value.__cause__, WorkflowFailureError)
    status = await lf.status(wf_id)
    assert status.status == "terminated" and status.closed and status.awaiting is None


async def test_reject_uses_the_workflows_own_update(stack: Stack) -> None:
    """Procurement has a ``reject`` update; VendorPayment rejects through ``approve``."""
    lf = stack.client
    wf_id = _id("sdk-reject")
    await lf.start("VendorPaymentWorkflow", {}, workflow_id=wf_id)
    await _awaiting(lf, wf_id, "approval")
    assert await lf.reject(wf_id, approver="cfo@example.com") == "recorded"
    result = await lf.result(wf_id)
    assert result.outcome == "rejected" and result.reason == "no approval"


async def test_invalid_messages_are_config_errors(stack: Stack) -> None:
    lf = stack.client
    wf_id = _id("sdk-invalid")
    await lf.start("ProcurementWorkflow", {"sku": "WIDGET-42", "quantity": 1}, workflow_id=wf_id)
    try:
        with pytest.raises(ConfigError, match="quantity"):
            await lf.confirm_delivery(wf_id, quantity=0)
        with pytest.raises(ConfigError, match="has no signal 'nope'"):
            await lf.signal(wf_id, "nope", {})
    finally:
        await lf.temporal.get_workflow_handle(wf_id).terminate("test done")


def test_every_rpc_failure_maps_to_a_documented_error() -> None:
    def rpc(status: RPCStatusCode) -> RPCError:
        return RPCError("boom", status, b"")

    assert isinstance(map_temporal_error(rpc(RPCStatusCode.NOT_FOUND)), RunNotFound)
    assert isinstance(map_temporal_error(rpc(RPCStatusCode.ALREADY_EXISTS)), RunAlreadyStarted)
    unavailable = map_temporal_error(rpc(RPCStatusCode.UNAVAILABLE), workflow_id="w")
    assert isinstance(unavailable, EngineUnavailable) and unavailable.status == "UNAVAILABLE"
    assert isinstance(unavailable, StackError)
    denied = map_temporal_error(rpc(RPCStatusCode.PERMISSION_DENIED))
    assert isinstance(denied, EngineUnavailable) and denied.status == "PERMISSION_DENIED"
    assert map_temporal_error(ValueError("not Temporal's")) is None


# ---- from any directory -------------------------------------------------------------------------


async def test_relative_paths_are_resolved_when_the_client_is_made(
    stack: Stack, temporal_client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = stack.settings.home
    monkeypatch.chdir(home.parent)
    relative = Settings(
        _env_file=None,  # type: ignore[call-arg]
        home=Path(home.name),
        database_url=f"sqlite:///{home.name}/store.db",
        deployments_file=Path(os.path.relpath(stack.settings.deployments_path, home.parent)),
        rpc_url=stack.settings.rpc_url,
        temporal_address=stack.settings.temporal_address,
        task_queue=stack.settings.task_queue,
    )
    lf = LedgerflowClient(temporal_client, relative)
    assert lf.settings.home.is_absolute() and lf.settings.deployments_path.is_absolute()
    assert lf.settings.database_url == f"sqlite:///{home}/store.db"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a later chdir changes nothing
    wf_id = _id("sdk-dir")
    await stack.client.start("VendorPaymentWorkflow", {"max_amount": TUSD}, workflow_id=wf_id)
    await stack.client.result(wf_id)
    assert wf_id in [r.workflow_id for r in await lf.list_runs(limit=50)]
    assert (await lf.verify(wf_id)).ok
    assert (await lf.status(wf_id)).anchor_state == "anchored"
    assert list(elsewhere.iterdir()) == []
    await lf.close()


async def test_from_a_directory_without_a_store_the_error_names_it(
    stack: Stack, temporal_client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        temporal_address=stack.settings.temporal_address,
        task_queue=stack.settings.task_queue,
    )
    lf = LedgerflowClient(temporal_client, settings)
    expected = f"sqlite:///{tmp_path}/.ledgerflow/ledgerflow.db"
    for call in (lf.list_runs(), lf.verify("any-run"), lf.proof("any-run", 0)):
        with pytest.raises(StoreError) as exc:
            await call
        assert expected in str(exc.value) and "LEDGERFLOW_HOME" in str(exc.value)
    # status still answers from Temporal; only the anchor state (from the store) is unknown.
    wf_id = _id("sdk-nostore")
    await stack.client.start("VendorPaymentWorkflow", {"max_amount": TUSD}, workflow_id=wf_id)
    await stack.client.result(wf_id)
    status = await lf.status(wf_id)
    assert status.status == "completed" and status.result.outcome == "completed"
    # ... and nothing was created here: a reader never leaves an empty store behind.
    assert list(tmp_path.iterdir()) == []
    with contextlib.suppress(Exception):
        await lf.close()


def test_resolve_paths_leaves_urls_and_absolute_paths_alone() -> None:
    s = Settings(
        _env_file=None,  # type: ignore[call-arg]
        home=Path("/srv/ledgerflow"),
        database_url="postgresql+psycopg://ledgerflow@db/ledgerflow",
    )
    assert resolve_paths(s) is s
    memory = Settings(_env_file=None, home=Path("/x"), database_url="sqlite:///:memory:")  # type: ignore[call-arg]
    assert resolve_paths(memory).database_url == "sqlite:///:memory:"
