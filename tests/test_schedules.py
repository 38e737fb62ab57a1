"""Schedules of InventorySweepWorkflow on the real stack, through the Python API and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from ledgerflow.activities.events import sweep_workflow_id
from ledgerflow.errors import ConfigError
from ledgerflow.sdk.schedules import (
    create_schedule,
    delete_schedule,
    describe_schedule,
    list_schedules,
    parse_every,
    pause_schedule,
    trigger_schedule,
    unpause_schedule,
)
from ledgerflow.workflows.watcher import InventorySweepWorkflow, SweepRequest, SweepResult
from tests.conftest import Stack
from tests.support.chain import ChainAdmin
from tests.test_cli import _cli

HISTORIES = Path(__file__).parent / "histories"


@pytest.fixture(scope="module")
def admin(stack: Stack) -> ChainAdmin:
    return ChainAdmin(stack.settings.rpc_url, stack.deployment)


async def _listed(stack: Stack, schedule_id: str, present: bool = True) -> None:
    for _ in range(100):
        ids = {v.schedule_id for v in await list_schedules(stack.client)}
        if (schedule_id in ids) == present:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{schedule_id} {'never listed' if present else 'still listed'}")


async def _runs(client: Client, wf_id: str) -> int:
    return len([w async for w in client.list_workflows(f"WorkflowId = '{wf_id}'")])


def test_parse_every() -> None:
    assert parse_every("90") == timedelta(seconds=90)
    assert parse_every("45s") == timedelta(seconds=45)
    assert parse_every("1h30m") == timedelta(minutes=90)
    assert parse_every("1d") == timedelta(days=1)
    for bad in ("", "0s", "1x", "h", "-5m"):
        with pytest.raises(ConfigError):
            parse_every(bad)


async def test_invalid_schedules_are_clear_errors(stack: Stack) -> None:
    with pytest.raises(ConfigError, match="--every"):
        await create_schedule(stack.client, "inventory-sweep", {})
    with pytest.raises(ConfigError, match="cannot schedule"):
        await create_schedule(stack.client, "no-such-thing", {}, every="1h")
    with pytest.raises(ConfigError, match="colour"):
        await create_schedule(stack.client, "inventory-sweep", {"colour": "red"}, every="1h")
    with pytest.raises(ConfigError, match="may not set sku"):
        await create_schedule(
            stack.client, "inventory-sweep", {"procurement": {"sku": "X"}}, every="1h"
        )
    with pytest.raises(ConfigError, match="no schedule"):
        await describe_schedule(stack.client, f"missing-{uuid.uuid4().hex[:6]}")


async def test_schedule_lifecycle_and_sweep_starts_one_procurement_per_window(
    stack: Stack, admin: ChainAdmin, temporal_client: Client
) -> None:
    short = f"SWP-{uuid.uuid4().hex[:6]}"
    fine = f"OK-{uuid.uuid4().hex[:6]}"
    admin.new_sku(short, stock=10, threshold=50, target=100)
    admin.new_sku(fine, stock=80, threshold=50, target=100)
    sid = f"sweep-{uuid.uuid4().hex[:8]}"
    view = await create_schedule(
        stack.client,
        "inventory-sweep",
        {"skus": [short, fine]},
        schedule_id=sid,
        every="1h",
        note="test sweep",
    )
    procurements: list[str] = []
    try:
        assert view.schedule_id == sid and view.workflow_type == "InventorySweepWorkflow"
        assert view.every == ["1h"] and view.spec == "every 1h" and view.paused is False
        assert view.input == SweepRequest(skus=[short, fine]).model_dump(mode="json")
        assert view.task_queue == stack.settings.task_queue and view.next_runs
        await _listed(stack, sid)

        ran = await trigger_schedule(stack.client, sid)
        assert ran["workflow_id"] and ran["workflow_id"].startswith(sid)
        raw = await temporal_client.get_workflow_handle(ran["workflow_id"]).result()
        result = SweepResult.model_validate(raw)
        assert result.checked == [short, fine]
        assert [s.sku for s in result.in_shortfall] == [short]
        assert result.in_shortfall[0].needed == 90
        (run,) = result.runs
        assert run.status == "started" and run.workflow_id == sweep_workflow_id(
            short, result.window
        )
        procurements.append(run.workflow_id)

        # A second run in the same window finds the first one's procurement: still one run.
        await asyncio.sleep(1.1)  # scheduled runs are named after their start, to the second
        again = await trigger_schedule(stack.client, sid)
        raw = await temporal_client.get_workflow_handle(again["workflow_id"]).result()
        second = SweepResult.model_validate(raw)
        assert second.window == result.window
        assert [r.status for r in second.runs] == ["existing"]
        assert await _runs(temporal_client, run.workflow_id) == 1

        paused = await pause_schedule(stack.client, sid, "maintenance")
        assert paused.paused is True and paused.note == "maintenance"
        assert (await unpause_schedule(stack.client, sid)).paused is False
        described = await describe_schedule(stack.client, sid)
        assert described.num_actions == 2 and len(described.recent_runs) == 2

        with pytest.raises(ConfigError, match="exists"):
            await create_schedule(stack.client, "inventory-sweep", {}, schedule_id=sid, every="1h")
    finally:
        await delete_schedule(stack.client, sid)
        for wf_id in procurements:
            with contextlib.suppress(Exception):
                await temporal_client.get_workflow_handle(wf_id).terminate("test cleanup")
    with pytest.raises(ConfigError, match="no schedule"):
        await describe_schedule(stack.client, sid)
    await _listed(stack, sid, present=False)


async def test_schedule_cli(stack: Stack, admin: ChainAdmin) -> None:
    sku = f"CLI-{uuid.uuid4().hex[:6]}"
    admin.new_sku(sku, stock=80, threshold=50, target=100)  # no shortfall: nothing to buy
    sid = f"cli-sweep-{uuid.uuid4().hex[:8]}"
    payload = json.dumps({"skus": [sku]})
    code, out, err = await _cli(
        stack,
        "schedule",
        "create",
        "inventory-sweep",
        "--every",
        "1h",
        "--input",
        payload,
        "--id",
        sid,
        "--json",
    )
    assert code == 0, err
    created = json.loads(out)
    assert created["schedule_id"] == sid and created["paused"] is False
    assert created["input"]["skus"] == [sku]
    try:
        # Independent commands run side by side (each CLI start costs over a second).
        triggered, bad = await asyncio.gather(
            _cli(stack, "schedule", "trigger", sid, "--json"),
            _cli(stack, "schedule", "create", "inventory-sweep", "--id", sid),
        )
        assert triggered[0] == 0, triggered[2]
        started = json.loads(triggered[1])["workflow_id"]
        assert started and started.startswith(sid)
        result = await stack.client.temporal.get_workflow_handle(started).result()
        assert SweepResult.model_validate(result).runs == []
        assert bad[0] == 2 and "--every" in bad[2] and "Traceback" not in bad[2]
        await _listed(stack, sid)  # the list is eventually consistent

        listed, (code, out, err) = await asyncio.gather(
            _cli(stack, "schedule", "list", "--json"),
            _cli(stack, "schedule", "pause", sid, "--note", "hold"),
        )
        assert code == 0 and f"paused {sid}" in out, err
        assert listed[0] == 0, listed[2]
        (mine,) = [s for s in json.loads(listed[1]) if s["schedule_id"] == sid]
        assert mine["workflow_type"] == "InventorySweepWorkflow" and mine["every"] == ["1h"]
        paused = await describe_schedule(stack.client, sid)
        assert paused.paused is True and paused.note == "hold"
    finally:
        code, out, err = await _cli(stack, "schedule", "delete", sid, "--json")
        assert code == 0 and json.loads(out) == {"schedule_id": sid, "deleted": True}, err
    code, _, err = await _cli(stack, "schedule", "describe", sid)
    assert code == 2 and "no schedule" in err and "Traceback" not in err


async def test_sweep_history_replays(
    stack: Stack, admin: ChainAdmin, temporal_client: Client
) -> None:
    """A sweep started by hand (no schedule: the window comes from the start time) replays."""
    sku = f"RPL-{uuid.uuid4().hex[:6]}"
    admin.new_sku(sku, stock=5, threshold=10, target=20)
    wf_id = f"inventory-sweep-{uuid.uuid4().hex[:8]}"
    nowhere = f"nowhere-{uuid.uuid4().hex[:8]}"
    handle = await temporal_client.start_workflow(
        "InventorySweepWorkflow",
        SweepRequest(skus=[sku], task_queue=nowhere, skip_if_running=False),
        id=wf_id,
        task_queue=stack.settings.task_queue,
    )
    result = SweepResult.model_validate(await handle.result())
    (run,) = result.runs
    assert run.status == "started"
    assert (await temporal_client.get_workflow_handle(run.workflow_id).describe()).status
    await temporal_client.get_workflow_handle(run.workflow_id).terminate("test cleanup")
    history = await handle.fetch_history()
    await Replayer(
        workflows=[InventorySweepWorkflow], data_converter=pydantic_data_converter
    ).replay_workflow(history)
    if os.environ.get("LEDGERFLOW_RECORD_HISTORIES") == "1":
        for old in HISTORIES.glob("inventory-sweep-*.json"):
            old.unlink()
        (HISTORIES / f"{wf_id}.json").write_text(history.to_json())
