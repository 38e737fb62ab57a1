"""ChainEventWatcherWorkflow on the real stack: one ProcurementWorkflow per ShortfallDetected log.

The watcher runs on its own Worker (own task queue) that the tests stop and restart; the
procurements it starts go to the stack's task queue (or, where a test wants them to stay put, to a
queue no worker polls). Every workflow task of the watcher replays its history from scratch
(``max_cached_workflows=0``), so these tests also exercise its determinism.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, Worker
from web3.logs import DISCARD

from ledgerflow.activities.events import EventActivities, shortfall_trigger, shortfall_workflow_id
from ledgerflow.chain.deploy import DEV_KEYS, sku_to_bytes32
from ledgerflow.dev.stack import free_port, start_temporal
from ledgerflow.runtime import Runtime
from ledgerflow.sdk.client import LedgerflowClient
from ledgerflow.sdk.schedules import ensure_watcher, shortfall_starts_in_receipt, stop_watcher
from ledgerflow.temporal import connect
from ledgerflow.workflows.procurement import ProcurementRequest
from ledgerflow.workflows.watcher import ChainEventWatcherWorkflow, WatcherInput, WatcherState
from tests.conftest import Stack
from tests.support.chain import ChainAdmin

HISTORIES = Path(__file__).parent / "histories"
T = TypeVar("T")


@pytest.fixture(scope="module")
def admin(stack: Stack) -> ChainAdmin:
    return ChainAdmin(stack.settings.rpc_url, stack.deployment)


@contextlib.asynccontextmanager
async def _watcher_worker(client: Client, runtime: Runtime, queue: str) -> AsyncIterator[Worker]:
    worker = Worker(
        client,
        task_queue=queue,
        workflows=[ChainEventWatcherWorkflow],
        activities=EventActivities(runtime).all(),
        max_cached_workflows=0,  # every workflow task replays the whole history
    )
    async with worker:
        yield worker


async def _eventually(
    check: Callable[[], Awaitable[T]], what: str, timeout: float = 30.0, every: float = 0.1
) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


def _consume(admin: ChainAdmin, sku: str, qty: int) -> list[str]:
    """Consume stock; return the deterministic workflow ids of the ShortfallDetected it emitted."""
    inv = admin.c("InventoryLedger")
    receipt = admin.send(DEV_KEYS[0], inv.functions.consume(sku_to_bytes32(sku), qty))
    logs = inv.events.ShortfallDetected().process_receipt(receipt, errors=DISCARD)
    chain_id = admin.w3.eth.chain_id
    ids = [
        shortfall_workflow_id(chain_id, log["transactionHash"].hex(), log["logIndex"])
        for log in logs
    ]
    starts = shortfall_starts_in_receipt(inv, receipt, chain_id)
    assert [s.workflow_id for s in starts] == ids
    assert all(s.request["sku"] == sku and s.request["trigger"] for s in starts)
    return ids


async def _runs(client: Client, wf_id: str) -> int:
    return len([w async for w in client.list_workflows(f"WorkflowId = '{wf_id}'")])


async def _request(client: Client, wf_id: str) -> ProcurementRequest:
    history = await client.get_workflow_handle(wf_id).fetch_history()
    attrs = history.events[0].workflow_execution_started_event_attributes
    assert attrs.workflow_type.name == "ProcurementWorkflow"
    (req,) = await client.data_converter.decode(list(attrs.input.payloads), [ProcurementRequest])
    return req


async def _state(client: Client, wf_id: str) -> WatcherState:
    return await client.get_workflow_handle(wf_id).query("state", result_type=WatcherState)


async def _assert_exactly_once(client: Client, ids: list[str], sku: str) -> None:
    assert len(set(ids)) == len(ids)
    for wf_id in ids:
        await _eventually(lambda i=wf_id: _runs(client, i), f"{wf_id} in visibility")
        assert await _runs(client, wf_id) == 1, f"{wf_id} has more than one run"
        req = await _request(client, wf_id)
        _, chain, tx, index = (req.trigger or "").split(":")
        assert req.sku == sku
        assert req.trigger == shortfall_trigger(int(chain), tx, int(index))
        assert shortfall_workflow_id(int(chain), tx, int(index)) == wf_id


async def _cleanup(client: Client, watcher: str | None, ids: list[str]) -> None:
    handles = [client.get_workflow_handle(i) for i in ids]
    if watcher is not None:
        handles.append(client.get_workflow_handle(watcher))
    for h in handles:
        with contextlib.suppress(Exception):
            await h.terminate("test cleanup")


async def test_confirmation_depth_and_one_procurement_per_event(
    stack: Stack, admin: ChainAdmin, temporal_client: Client
) -> None:
    """Three ShortfallDetected logs start exactly three runs with the deterministic ids, each only
    once the log is buried under the configured confirmations."""
    sku = f"CONF-{uuid.uuid4().hex[:6]}"
    admin.new_sku(sku, stock=60, threshold=50, target=120)
    queue = f"watch-{uuid.uuid4().hex[:8]}"
    nowhere = f"nowhere-{uuid.uuid4().hex[:8]}"  # the runs stay put: nothing mines behind us
    wf_id = f"chain-watcher-test-{uuid.uuid4().hex[:8]}"
    ids: list[str] = []
    try:
        async with _watcher_worker(temporal_client, stack.runtime, queue):
            start = admin.w3.eth.block_number + 1
            inp = WatcherInput(
                from_block=start,
                confirmations=2,
                skus=[sku],
                poll_interval_seconds=0.2,
                task_queue=nowhere,
            )
            assert (
                await ensure_watcher(stack.client, input=inp, workflow_id=wf_id, task_queue=queue)
                == wf_id
            )
            assert _consume(admin, sku, 5) == []  # 55: above the threshold, no event
            for qty in (10, 1, 1):  # 45, 44, 43: three shortfalls, one block each
                ids += _consume(admin, sku, qty)
            assert len(ids) == 3
            last = admin.w3.eth.block_number

            # Two confirmations: only the first event's block (last - 2) is confirmed.
            async def first_only() -> bool:
                st = await _state(temporal_client, wf_id)
                return st.head is not None and st.head >= last and st.cursor == last - 1

            await _eventually(first_only, "the watcher to reach the confirmed head")
            st = await _state(temporal_client, wf_id)
            assert st.stats.events == 1 and st.recent == ids[:1]

            admin.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
            admin.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

            async def all_three() -> bool:
                return (await _state(temporal_client, wf_id)).stats.events == 3

            await _eventually(all_three, "all three events")
            st = await _state(temporal_client, wf_id)
            assert st.recent == ids and st.stats.started == 3 and st.confirmations == 2
            await _assert_exactly_once(temporal_client, ids, sku)

            # Starting the watcher again finds the running one (USE_EXISTING).
            again = await ensure_watcher(stack.client, workflow_id=wf_id, task_queue=queue)
            assert again == wf_id
            desc = await temporal_client.get_workflow_handle(wf_id).describe()
            assert desc.status == WorkflowExecutionStatus.RUNNING
    finally:
        await _cleanup(temporal_client, wf_id, ids)


async def test_worker_restart_and_continue_as_new_miss_nothing_repeat_nothing(
    stack: Stack, admin: ChainAdmin, temporal_client: Client
) -> None:
    sku = f"RST-{uuid.uuid4().hex[:6]}"
    admin.new_sku(sku, stock=100, threshold=50, target=150)
    queue = f"watch-{uuid.uuid4().hex[:8]}"
    wf_id = f"chain-watcher-test-{uuid.uuid4().hex[:8]}"
    ids: list[str] = []
    try:
        async with _watcher_worker(temporal_client, stack.runtime, queue):
            start = admin.w3.eth.block_number + 1
            inp = WatcherInput(
                from_block=start,
                confirmations=0,
                skus=[sku],
                poll_interval_seconds=0.2,
                polls_per_run=2,  # continue-as-new every second poll
            )
            await ensure_watcher(stack.client, input=inp, workflow_id=wf_id, task_queue=queue)
            first_run = (await temporal_client.get_workflow_handle(wf_id).describe()).run_id
            for qty in (55, 1, 1):
                ids += _consume(admin, sku, qty)
            assert len(ids) == 3

            def processed(n: int) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    return (await _state(temporal_client, wf_id)).stats.events >= n

                return check

            await _eventually(processed(3), "the first three events")
            before_stop = await _state(temporal_client, wf_id)

        # The watcher's worker is down: events keep coming.
        down = [*_consume(admin, sku, 1), *_consume(admin, sku, 1)]
        assert len(down) == 2
        await asyncio.sleep(0.5)
        assert all([await _runs(temporal_client, i) == 0 for i in down])

        async with _watcher_worker(temporal_client, stack.runtime, queue):
            ids += down
            await _eventually(processed(5), "the two events emitted while down")

            async def continued() -> bool:  # more polls and runs find nothing new
                st = await _state(temporal_client, wf_id)
                return st.stats.runs >= before_stop.stats.runs + 2

            await _eventually(continued, "two more continue-as-new")
            st = await _state(temporal_client, wf_id)

        assert st.stats.events == 5 and st.stats.started == 5
        assert st.cursor is not None and st.cursor > admin.w3.eth.block_number - 1
        # Continue-as-new happened, and the cursor and counters carried over.
        assert st.stats.runs >= 3 and st.stats.polls > st.run_polls
        handle = temporal_client.get_workflow_handle(wf_id)
        assert (await handle.describe()).run_id != first_run
        history = await temporal_client.get_workflow_handle(wf_id, run_id=first_run).fetch_history()
        last_event = history.events[-1]
        assert last_event.HasField("workflow_execution_continued_as_new_event_attributes")
        carried = last_event.workflow_execution_continued_as_new_event_attributes.input.payloads
        (next_input,) = await temporal_client.data_converter.decode(list(carried), [WatcherInput])
        assert next_input.from_block is not None and next_input.from_block >= start
        assert next_input.stats.runs == 2
        await Replayer(
            workflows=[ChainEventWatcherWorkflow], data_converter=pydantic_data_converter
        ).replay_workflow(history)
        if os.environ.get("LEDGERFLOW_RECORD_HISTORIES") == "1":
            for old in HISTORIES.glob("chain-watcher-*.json"):
                old.unlink()
            (HISTORIES / f"{wf_id}.json").write_text(history.to_json())

        await _assert_exactly_once(temporal_client, ids, sku)
        # The procurements ran on the stack's worker (no offers for this SKU: rejected).
        result = (await stack.client.result(ids[0])).model_dump(mode="json")
        assert result["outcome"] == "rejected" and result["sku"] == sku

        # Stopping completes the watcher with its cursor; ensure_watcher resumes from it.
        async with _watcher_worker(temporal_client, stack.runtime, queue):
            await stop_watcher(stack.client, wf_id)
            stopped = WatcherState.model_validate(await handle.result())
            assert stopped.cursor is not None and stopped.cursor >= (st.cursor or 0)
            assert stopped.stats.events == 5
            more = _consume(admin, sku, 1)
            await ensure_watcher(
                stack.client,
                input=WatcherInput(skus=[sku], poll_interval_seconds=0.2),
                workflow_id=wf_id,
                task_queue=queue,
            )
            await _eventually(processed(6), "the event emitted while stopped")
            ids += more

            # Terminated (no final cursor): the next watcher rescans from the cursor its last
            # run started with; the event seen again finds its run, the new one gets one.
            await handle.terminate("test: hard stop")
            newest = _consume(admin, sku, 1)
            await ensure_watcher(
                stack.client,
                input=WatcherInput(skus=[sku], poll_interval_seconds=0.2),
                workflow_id=wf_id,
                task_queue=queue,
            )

            async def rescanned() -> bool:
                return (await _state(temporal_client, wf_id)).recent[-2:] == [*more, *newest]

            await _eventually(rescanned, "the rescan after termination")
            ids += newest
        await _assert_exactly_once(temporal_client, ids, sku)
    finally:
        await _cleanup(temporal_client, wf_id, ids)


async def test_server_restart_misses_nothing(
    stack: Stack, admin: ChainAdmin, tmp_path: Path
) -> None:
    """A Temporal server of our own (SQLite file) is stopped and restarted under the watcher."""
    port = free_port()
    db = tmp_path / "temporal.db"
    server = start_temporal(port, db_file=db, log_path=tmp_path / "temporal.log")
    sku = f"SRV-{uuid.uuid4().hex[:6]}"
    admin.new_sku(sku, stock=100, threshold=50, target=150)
    queue = f"watch-{uuid.uuid4().hex[:8]}"
    wf_id = f"chain-watcher-test-{uuid.uuid4().hex[:8]}"
    nowhere = f"nowhere-{uuid.uuid4().hex[:8]}"
    ids: list[str] = []
    try:
        client = await connect(f"127.0.0.1:{port}")
        lf = LedgerflowClient(client, stack.settings, stack.runtime)
        inp = WatcherInput(
            from_block=admin.w3.eth.block_number + 1,
            skus=[sku],
            poll_interval_seconds=0.2,
            task_queue=nowhere,
        )

        async def events(c: Client) -> int:
            return (await _state(c, wf_id)).stats.events

        async with _watcher_worker(client, stack.runtime, queue):
            await ensure_watcher(lf, input=inp, workflow_id=wf_id, task_queue=queue)
            ids += _consume(admin, sku, 51)
            await _eventually(lambda: events(client), "the first event")
        server.stop()
        ids += _consume(admin, sku, 1)  # while the server is down
        server = start_temporal(port, db_file=db, log_path=tmp_path / "temporal.log")
        client = await connect(f"127.0.0.1:{port}")
        async with _watcher_worker(client, stack.runtime, queue):
            ids += _consume(admin, sku, 1)  # and after it is back
            assert len(ids) == 3

            async def three() -> bool:
                return await events(client) == 3

            await _eventually(three, "the events around the restart")
        await _assert_exactly_once(client, ids, sku)
        await _cleanup(client, wf_id, ids)
    finally:
        server.stop()


async def test_watch_cli_starts_finds_and_stops_the_watcher(
    stack: Stack, admin: ChainAdmin, temporal_client: Client
) -> None:
    """`ledgerflow watch` on the stack's worker: start, start again (same run), event, stop."""
    from tests.test_cli import _cli

    sku = f"CLI-{uuid.uuid4().hex[:6]}"
    admin.new_sku(sku, stock=60, threshold=50, target=100)
    wf_id = f"chain-watcher-cli-{uuid.uuid4().hex[:8]}"
    args = ("watch", "--id", wf_id, "--sku", sku, "--poll-interval", "0.2", "--json")
    ids: list[str] = []
    try:
        code, out, err = await _cli(stack, *args)
        assert code == 0, err
        first = json.loads(out)
        assert first["workflow_id"] == wf_id and first["status"] == "running"
        assert first["cursor"] is not None and first["confirmations"] == 0
        ids += _consume(admin, sku, 20)

        async def seen() -> bool:
            return (await _state(temporal_client, wf_id)).recent == ids

        await _eventually(seen, "the watcher started by the CLI")
        code, out, err = await _cli(stack, *args)
        assert code == 0 and json.loads(out)["run_id"] == first["run_id"], err
        scode, sout, serr = await _cli(stack, "watch", "--id", wf_id, "--stop", "--json")
        assert scode == 0 and json.loads(sout)["stopping"] is True, serr
        result = await temporal_client.get_workflow_handle(wf_id).result()
        assert WatcherState.model_validate(result).stats.events == 1
        await _assert_exactly_once(temporal_client, ids, sku)
    finally:
        await _cleanup(temporal_client, wf_id, ids)
