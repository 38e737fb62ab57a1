"""Trigger workflows: the chain-event watcher and the periodic inventory sweep.

``ChainEventWatcherWorkflow`` keeps its cursor (the next block to scan) in workflow state. Each
poll is one activity that reads ``ShortfallDetected`` logs up to the confirmed head, then one
activity that starts a ``ProcurementWorkflow`` per log under a deterministic id; only then does
the cursor move. A crash anywhere replays to the same cursor, and a repeated start finds the run
it started before, so no event is missed or handled twice. History stays bounded: the watcher
continues-as-new after ``polls_per_run`` polls or when Temporal suggests it, carrying the cursor.

``InventorySweepWorkflow`` is what a schedule runs: it reads the shortfall of a list of SKUs and
starts one ``ProcurementWorkflow`` per SKU in shortfall, id per SKU and time window.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from pydantic import Field, field_validator

    from ledgerflow.activities.events import (
        FetchShortfalls,
        ProcurementStart,
        ShortfallBatch,
        ShortfallList,
        SkuList,
        StartedRun,
        StartedRuns,
        StartProcurements,
        sweep_workflow_id,
        window_stamp,
    )
    from ledgerflow.activities.procurement import Shortfall
    from ledgerflow.flow import register
    from ledgerflow.flow.ledger import failure_output
    from ledgerflow.types import Sku, StrictInput, StrictModel, Text, WaitSeconds
    from ledgerflow.workflows.procurement import ProcurementRequest

__all__ = [
    "ChainEventWatcherWorkflow",
    "InventorySweepWorkflow",
    "SweepRequest",
    "SweepResult",
    "WatcherInput",
    "WatcherState",
    "WatcherStats",
    "build_procurement_request",
]


# ---- inputs, state and results ---------------------------------------------------------------

#: Fields of ProcurementRequest that a trigger sets itself and overrides may not touch.
_RESERVED = frozenset({"sku", "trigger"})


def build_procurement_request(
    sku: str, trigger: str, overrides: dict[str, Any] | None = None
) -> ProcurementRequest:
    """The ProcurementRequest a trigger starts: the SKU and trigger, plus optional overrides."""
    return ProcurementRequest.model_validate({**(overrides or {}), "sku": sku, "trigger": trigger})


def _check_overrides(value: dict[str, Any]) -> dict[str, Any]:
    reserved = sorted(_RESERVED & value.keys())
    if reserved:
        raise ValueError(f"procurement overrides may not set {', '.join(reserved)}")
    build_procurement_request("SKU", "check", value)  # raises on unknown fields or bad values
    return value


class WatcherStats(StrictModel):
    """Counters carried across continue-as-new."""

    runs: int = 1  # runs in this watcher's continue-as-new chain
    polls: int = 0
    events: int = 0
    started: int = 0  # procurements newly started (not found existing)


class WatcherInput(StrictInput):
    """Input of ChainEventWatcherWorkflow. ``{}`` is a valid start (follow from the next block)."""

    from_block: int | None = Field(
        None, ge=0, description="cursor: first block not yet scanned; null = after the head"
    )
    confirmations: int | None = Field(
        None, ge=0, description="blocks a log must be buried under; null = worker setting"
    )
    poll_interval_seconds: float = Field(2.0, gt=0, le=3600, description="pause between polls")
    max_blocks_per_poll: int = Field(2000, ge=1, le=100_000)
    polls_per_run: int = Field(
        200, ge=1, le=10_000, description="continue-as-new after this many polls"
    )
    max_history_events: int = Field(
        10_000, ge=100, le=40_000, description="continue-as-new once history is this long"
    )
    skus: list[Sku] = Field(
        default_factory=list, max_length=1000, description="only these SKUs; empty = all"
    )
    procurement: dict[str, Any] = Field(
        default_factory=dict, description="extra ProcurementRequest fields for started runs"
    )
    task_queue: Text | None = Field(
        None, max_length=255, description="procurements' task queue; null = worker's"
    )
    stats: WatcherStats = Field(default_factory=WatcherStats)

    @field_validator("procurement")
    @classmethod
    def _overrides(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_overrides(value)


class WatcherState(StrictModel):
    """Query ``state`` of the watcher, and its result when it is cancelled (stopped)."""

    cursor: int | None = None
    head: int | None = None
    confirmations: int | None = None
    caught_up: bool = False
    run_polls: int = 0
    last_error: str | None = None
    recent: list[str] = Field(default_factory=list)  # last workflow ids it started or found
    stats: WatcherStats = Field(default_factory=WatcherStats)


class SweepRequest(StrictInput):
    """Input of InventorySweepWorkflow. ``{}`` sweeps every SKU configured on the ledger."""

    skus: list[Sku] = Field(
        default_factory=list,
        max_length=1000,
        description="SKUs to check; empty = every configured SKU",
    )
    window_seconds: WaitSeconds = Field(
        3600, description="one procurement per SKU per window of this length"
    )
    skip_if_running: bool = Field(
        True, description="skip a SKU that already has a running ProcurementWorkflow"
    )
    procurement: dict[str, Any] = Field(
        default_factory=dict, description="extra ProcurementRequest fields for started runs"
    )
    task_queue: Text | None = Field(
        None, max_length=255, description="procurements' task queue; null = worker's"
    )

    @field_validator("procurement")
    @classmethod
    def _overrides(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_overrides(value)


class SweepResult(StrictModel):
    window: str
    checked: list[str]
    in_shortfall: list[Shortfall]
    runs: list[StartedRun]


FETCH_START_TO_CLOSE_TIMEOUT = timedelta(seconds=60)
START_START_TO_CLOSE_TIMEOUT = timedelta(minutes=2)
#: Reads and idempotent starts retry without a limit: an RPC outage pauses the watcher, visibly
#: (the pending activity's attempts show in the UI), and costs no history.
TRIGGER_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=["ConfigError", "ContractRevert"],
)
#: How many started workflow ids the watcher's ``state`` query shows.
RECENT_IDS = 20

_scheduled_by = SearchAttributeKey.for_keyword("TemporalScheduledById")
_scheduled_start = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


def _error(err: BaseException) -> str:
    e = failure_output(err)["error"]
    return f"{e['type']}: {e['message']}"


@register(public=False)
@workflow.defn(name="ChainEventWatcherWorkflow")
class ChainEventWatcherWorkflow:
    def __init__(self) -> None:
        self._state = WatcherState()

    @workflow.query(name="state")
    def state(self) -> WatcherState:
        return self._state

    @workflow.run
    async def run(self, inp: WatcherInput) -> WatcherState:
        st = self._state
        st.cursor = inp.from_block
        st.confirmations = inp.confirmations
        st.stats = inp.stats.model_copy()
        try:
            while True:
                if self._should_continue_as_new(inp):
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    stats = st.stats.model_copy(update={"runs": st.stats.runs + 1})
                    workflow.continue_as_new(
                        inp.model_copy(update={"from_block": st.cursor, "stats": stats})
                    )
                caught_up = await self._poll(inp)
                if caught_up:
                    await workflow.sleep(timedelta(seconds=inp.poll_interval_seconds))
        except asyncio.CancelledError:
            # Stopped: complete with the cursor, so the next watcher resumes where this one was.
            return st

    def _should_continue_as_new(self, inp: WatcherInput) -> bool:
        if self._state.run_polls == 0:
            return False
        info = workflow.info()
        return (
            self._state.run_polls >= inp.polls_per_run
            or info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= inp.max_history_events
        )

    async def _poll(self, inp: WatcherInput) -> bool:
        """One poll; True when the scan reached the confirmed head (time to sleep)."""
        st = self._state
        st.run_polls += 1
        st.stats.polls += 1
        try:
            batch: ShortfallBatch = await workflow.execute_activity(
                "events.fetch_shortfalls",
                FetchShortfalls(
                    from_block=st.cursor,
                    confirmations=inp.confirmations,
                    max_blocks=inp.max_blocks_per_poll,
                    skus=inp.skus,
                ),
                result_type=ShortfallBatch,
                start_to_close_timeout=FETCH_START_TO_CLOSE_TIMEOUT,
                retry_policy=TRIGGER_RETRY_POLICY,
            )
            if batch.events:
                starts = [
                    ProcurementStart(
                        workflow_id=ev.workflow_id,
                        request=build_procurement_request(
                            ev.sku, ev.trigger, inp.procurement
                        ).model_dump(mode="json"),
                    )
                    for ev in batch.events
                ]
                started: StartedRuns = await workflow.execute_activity(
                    "events.start_procurements",
                    StartProcurements(starts=starts, task_queue=inp.task_queue),
                    result_type=StartedRuns,
                    start_to_close_timeout=START_START_TO_CLOSE_TIMEOUT,
                    retry_policy=TRIGGER_RETRY_POLICY,
                )
                st.stats.events += len(batch.events)
                st.stats.started += sum(r.status == "started" for r in started.runs)
                st.recent = [*st.recent, *(r.workflow_id for r in started.runs)][-RECENT_IDS:]
        except ActivityError as err:
            # Only non-retryable failures get here (bad config): keep the cursor, retry later.
            st.last_error = _error(err)
            workflow.logger.warning("watcher poll failed: %s", st.last_error)
            return True
        # The cursor moves only after every event of the batch has its run.
        st.cursor = batch.next_block
        st.head = batch.head
        st.confirmations = batch.confirmations
        st.caught_up = batch.caught_up
        st.last_error = None
        return batch.caught_up


@register(public=False)
@workflow.defn(name="InventorySweepWorkflow")
class InventorySweepWorkflow:
    @workflow.run
    async def run(self, req: SweepRequest) -> SweepResult:
        info = workflow.info()
        attrs = info.typed_search_attributes
        when = attrs.get(_scheduled_start) or workflow.now()
        source = attrs.get(_scheduled_by) or info.workflow_id
        window = window_stamp(when, req.window_seconds)
        levels: ShortfallList = await workflow.execute_activity(
            "events.read_shortfalls",
            SkuList(skus=req.skus),
            result_type=ShortfallList,
            start_to_close_timeout=FETCH_START_TO_CLOSE_TIMEOUT,
            retry_policy=TRIGGER_RETRY_POLICY,
        )
        short = [s for s in levels.items if s.needed > 0]
        runs: list[StartedRun] = []
        if short:
            starts = [
                ProcurementStart(
                    workflow_id=sweep_workflow_id(s.sku, window),
                    request=build_procurement_request(
                        s.sku, f"schedule:{source}:{window}", req.procurement
                    ).model_dump(mode="json"),
                )
                for s in short
            ]
            started: StartedRuns = await workflow.execute_activity(
                "events.start_procurements",
                StartProcurements(
                    starts=starts, task_queue=req.task_queue, skip_running_skus=req.skip_if_running
                ),
                result_type=StartedRuns,
                start_to_close_timeout=START_START_TO_CLOSE_TIMEOUT,
                retry_policy=TRIGGER_RETRY_POLICY,
            )
            runs = started.runs
        return SweepResult(
            window=window, checked=[s.sku for s in levels.items], in_shortfall=short, runs=runs
        )
