"""Triggers: chain events and schedules that start workflows.

Two ways a run starts without a human:

* **chain events** — ``ChainEventWatcherWorkflow`` (one per chain, id ``chain-watcher-<chainid>``)
  follows ``InventoryLedger.ShortfallDetected`` logs at a confirmation depth and starts exactly one
  ``ProcurementWorkflow`` per log, with an id derived from (chain id, transaction hash, log index)
  (:func:`shortfall_workflow_id`). Start it with :func:`ensure_watcher` or ``ledgerflow watch``.
* **schedules** — Temporal schedules (:func:`create_schedule` and friends, ``ledgerflow
  schedule ...``), typically of ``InventorySweepWorkflow``: every period it reads the shortfall of
  a list of SKUs and starts one ``ProcurementWorkflow`` per SKU in shortfall, with an id per SKU
  and time window (:func:`sweep_workflow_id`).

This module is the client-side API; the trigger workflows' models live with the workflows
(:mod:`ledgerflow.workflows.watcher`) and their activities (:mod:`ledgerflow.activities.events`).
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from ledgerflow.activities.events import (
    ProcurementStart,
    shortfall_trigger,
    shortfall_workflow_id,
    watcher_id,
)
from ledgerflow.errors import ConfigError
from ledgerflow.flow import registry
from ledgerflow.workflows.procurement import ProcurementRequest
from ledgerflow.workflows.watcher import (
    SweepRequest,
    WatcherInput,
    WatcherState,
    build_procurement_request,
)

if TYPE_CHECKING:
    from ledgerflow.sdk.client import LedgerflowClient

__all__ = [
    "SCHEDULE_KINDS",
    "WATCHER_WORKFLOW",
    "ScheduleView",
    "create_schedule",
    "delete_schedule",
    "describe_schedule",
    "ensure_watcher",
    "list_schedules",
    "parse_every",
    "pause_schedule",
    "shortfall_starts_in_receipt",
    "stop_watcher",
    "trigger_schedule",
    "unpause_schedule",
    "watcher_state",
]

WATCHER_WORKFLOW = "ChainEventWatcherWorkflow"
SWEEP_WORKFLOW = "InventorySweepWorkflow"


# ---- deterministic ids ------------------------------------------------------------------------


def shortfall_starts_in_receipt(
    inventory: Any, receipt: Any, chain_id: int, overrides: dict[str, Any] | None = None
) -> list[ProcurementStart]:
    """The runs the watcher starts for a transaction: one per ShortfallDetected log in it.

    ``inventory`` is a web3 contract object of InventoryLedger (sync or async) and ``receipt``
    the transaction's receipt. Starting these yourself with ``USE_EXISTING`` gives the same runs
    as the watcher (whoever starts first, the other finds the run).
    """
    from web3.logs import DISCARD

    from ledgerflow.chain.deploy import bytes32_to_sku

    starts = []
    for log in inventory.events.ShortfallDetected().process_receipt(receipt, errors=DISCARD):
        tx = "0x" + bytes(log["transactionHash"]).hex()
        index = int(log["logIndex"])
        starts.append(
            ProcurementStart(
                workflow_id=shortfall_workflow_id(chain_id, tx, index),
                request=build_procurement_request(
                    bytes32_to_sku(log["args"]["sku"]),
                    shortfall_trigger(chain_id, tx, index),
                    overrides,
                ).model_dump(mode="json"),
            )
        )
    return starts


# ---- the chain-event watcher ------------------------------------------------------------------


# ---- the inventory sweep ------------------------------------------------------------------------


# ---- client side: the watcher -----------------------------------------------------------------


async def ensure_watcher(
    client: LedgerflowClient,
    *,
    input: WatcherInput | None = None,
    workflow_id: str | None = None,
    task_queue: str | None = None,
) -> str:
    """Start the chain-event watcher unless it runs already; return its workflow id.

    The id is ``chain-watcher-<chainid>`` (chain id from the deployment file) and the start uses
    ``USE_EXISTING``, so calling this again (``ledgerflow up`` on every start) is harmless.

    Where a new watcher starts: ``input.from_block`` if set; else the final cursor of a previous
    watcher with this id that was stopped (cancelled: it completes with its cursor); else, for one
    that was terminated or failed, the cursor its last run started with (a rescan; events already
    handled map to their existing runs); else the block after the current head. Confirmations
    default to the settings'.
    """
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.common import WorkflowIDConflictPolicy
    from temporalio.service import RPCError

    rt = client.runtime
    wf_id = workflow_id or watcher_id(rt.chain_id)
    inp = input or WatcherInput()
    if inp.confirmations is None:
        inp = inp.model_copy(update={"confirmations": client.settings.confirmations})
    if inp.from_block is None:
        handle = client.temporal.get_workflow_handle(wf_id)
        cursor: int | None = None
        try:
            desc = await handle.describe()
            if desc.status == WorkflowExecutionStatus.RUNNING:
                return wf_id
            if desc.status == WorkflowExecutionStatus.COMPLETED:
                last = WatcherState.model_validate(await handle.result())
                cursor = last.cursor
                inp = inp.model_copy(update={"stats": last.stats})
            else:
                # Terminated, failed or timed out: no final cursor, so rescan from the cursor
                # its last run started with. Events seen twice find their runs (same ids).
                async for event in handle.fetch_history_events(page_size=1):
                    payloads = event.workflow_execution_started_event_attributes.input.payloads
                    if payloads:
                        (prev,) = await client.temporal.data_converter.decode(
                            list(payloads), [WatcherInput]
                        )
                        cursor = prev.from_block
                        inp = inp.model_copy(update={"stats": prev.stats})
                    break
        except RPCError:
            pass  # never started
        if cursor is None:
            cursor = int(await rt.w3.eth.block_number) + 1
        inp = inp.model_copy(update={"from_block": cursor})
    await client.temporal.start_workflow(
        WATCHER_WORKFLOW,
        inp,
        id=wf_id,
        task_queue=task_queue or client.settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    return wf_id


async def watcher_state(client: LedgerflowClient, workflow_id: str | None = None) -> dict[str, Any]:
    """The watcher's status, run id and (while it runs) its ``state`` query."""
    wf_id = workflow_id or watcher_id(client.runtime.chain_id)
    handle = client.temporal.get_workflow_handle(wf_id)
    desc = await handle.describe()
    out: dict[str, Any] = {
        "workflow_id": wf_id,
        "run_id": desc.run_id,
        "status": desc.status.name.lower() if desc.status else "unknown",
    }
    if desc.status is not None and desc.status.name == "RUNNING":
        from temporalio.service import RPCError

        try:
            state = await handle.query(
                "state", result_type=WatcherState, rpc_timeout=timedelta(seconds=5)
            )
        except RPCError as exc:
            out["note"] = (
                f"no answer from a worker on task queue {desc.task_queue!r} ({exc.message}); "
                "is `ledgerflow worker` (or `ledgerflow up`) running?"
            )
            return out
    elif desc.status is not None and desc.status.name == "COMPLETED":
        state = WatcherState.model_validate(await handle.result())
    else:
        return out
    out.update(state.model_dump(mode="json"))
    return out


async def stop_watcher(client: LedgerflowClient, workflow_id: str | None = None) -> str:
    """Cancel the watcher. It completes with its cursor, so :func:`ensure_watcher` resumes."""
    wf_id = workflow_id or watcher_id(client.runtime.chain_id)
    await client.temporal.get_workflow_handle(wf_id).cancel()
    return wf_id


# ---- client side: schedules -------------------------------------------------------------------

#: Short names for schedulable workflows; any registered public workflow is accepted too.
SCHEDULE_KINDS: dict[str, tuple[str, type[BaseModel]]] = {
    "inventory-sweep": (SWEEP_WORKFLOW, SweepRequest),
}

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_OVERLAP = ("skip", "buffer-one", "buffer-all", "cancel-other", "terminate-other", "allow-all")


def parse_every(text: str) -> timedelta:
    """Parse ``90``, ``45s``, ``5m``, ``1h``, ``1h30m``, ``1d`` into a positive timedelta.

    Raises:
        ConfigError: not a duration.
    """
    t = text.strip().lower()
    if t.isdigit():
        seconds = int(t)
    else:
        m = _DURATION.match(t)
        if not t or m is None:
            raise ConfigError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h, 1h30m, 1d)")
        d, h, mi, s = (int(g or 0) for g in m.groups())
        seconds = ((d * 24 + h) * 60 + mi) * 60 + s
    if seconds <= 0:
        raise ConfigError(f"a schedule interval must be positive, got {text!r}")
    return timedelta(seconds=seconds)


def _fmt_every(td: timedelta) -> str:
    s = int(td.total_seconds())
    parts = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            parts.append(f"{s // size}{unit}")
            s %= size
    return "".join(parts) or "0s"


class ScheduleView(BaseModel):
    """What ``schedule list/describe`` show of one schedule."""

    schedule_id: str
    workflow_type: str
    kind: str | None = None
    spec: str | None = None
    every: list[str] = Field(default_factory=list)
    cron: list[str] = Field(default_factory=list)
    paused: bool = False
    note: str | None = None
    task_queue: str | None = None
    input: dict[str, Any] | None = None
    overlap: str | None = None
    num_actions: int | None = None
    next_runs: list[str] = Field(default_factory=list)
    recent_runs: list[dict[str, Any]] = Field(default_factory=list)
    running: list[str] = Field(default_factory=list)


def _resolve_kind(kind: str) -> tuple[str, type[BaseModel], str]:
    """(workflow type, input model, default schedule id) of a kind or workflow type name."""
    inputs = {name: r.input_model for name, r in registry.public().items()}
    if kind in SCHEDULE_KINDS:
        wf, model = SCHEDULE_KINDS[kind]
        return wf, model, kind
    for name, (wf, model) in SCHEDULE_KINDS.items():
        if kind == wf:
            return wf, model, name
    if kind in inputs:
        return kind, inputs[kind], _kebab(kind.removesuffix("Workflow"))
    known = ", ".join([*SCHEDULE_KINDS, *sorted(inputs)])
    raise ConfigError(f"cannot schedule {kind!r}; known: {known}")


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def _runs(actions: Any) -> list[dict[str, Any]]:
    return [
        {
            "workflow_id": a.action.workflow_id,
            "run_id": a.action.first_execution_run_id,
            "scheduled_at": a.scheduled_at.isoformat(),
            "started_at": a.started_at.isoformat(),
        }
        for a in actions
    ]


async def create_schedule(
    client: LedgerflowClient,
    kind: str,
    input: BaseModel | dict[str, Any] | str | None = None,
    *,
    schedule_id: str | None = None,
    every: timedelta | str | None = None,
    cron: str | None = None,
    paused: bool = False,
    note: str | None = None,
    overlap: str = "skip",
    trigger_now: bool = False,
) -> ScheduleView:
    """Create a Temporal schedule that starts ``kind`` (``inventory-sweep`` or a workflow type).

    Args:
        client: the SDK client (its settings give the task queue and per-run defaults).
        kind: ``inventory-sweep`` or any startable workflow type (e.g. ``ProcurementWorkflow``).
        input: the workflow input (model, dict or JSON text); validated now.
        schedule_id: the schedule's id; default: the kind (``inventory-sweep``).
        every: interval (timedelta or text such as ``1h``); and/or ``cron``.
        cron: a cron expression (``0 * * * *``), interpreted in UTC.
        paused: create paused.
        note: a note shown in the UI and ``schedule list``.
        overlap: what to do when a run is still going: skip (default), buffer-one, buffer-all,
            cancel-other, terminate-other, allow-all.
        trigger_now: also start one run right away.

    Raises:
        ConfigError: unknown kind, invalid input, no interval or cron, bad overlap, or a
            schedule with this id exists.
    """
    from temporalio.client import (
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleAlreadyRunningError,
        ScheduleIntervalSpec,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleSpec,
        ScheduleState,
    )
    from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

    workflow_type, model, default_id = _resolve_kind(kind)
    sid = schedule_id or default_id
    if every is None and not cron:
        raise ConfigError("a schedule needs --every (e.g. 1h) or --cron (e.g. '0 * * * *')")
    if overlap not in _OVERLAP:
        raise ConfigError(f"unknown overlap policy {overlap!r}; one of {', '.join(_OVERLAP)}")
    arg = _validate(workflow_type, model, input)
    sa = TypedSearchAttributes.empty
    if isinstance(arg, ProcurementRequest):
        # Like LedgerflowClient.start: per-run checkpoint options are fixed when the run starts.
        fill = {
            k: v
            for k, v in {
                "anchor_mode": client.settings.anchor_mode,
                "wait_for_anchor": client.settings.wait_for_anchor,
            }.items()
            if getattr(arg, k) is None
        }
        arg = arg.model_copy(update=fill)
        sa = TypedSearchAttributes(
            [
                SearchAttributePair(SearchAttributeKey.for_keyword("LedgerflowStatus"), "running"),
                SearchAttributePair(
                    SearchAttributeKey.for_keyword("LedgerflowAnchorMode"),
                    arg.anchor_mode or "batched",
                ),
            ]
        )
    interval = parse_every(every) if isinstance(every, str) else every
    spec_text = " + ".join(
        [
            *([f"every {_fmt_every(interval)}"] if interval else []),
            *([f"cron {cron}"] if cron else []),
        ]
    )
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            workflow_type,
            arg,
            id=sid,
            task_queue=client.settings.task_queue,
            typed_search_attributes=sa,
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=interval)] if interval else [],
            cron_expressions=[cron] if cron else [],
        ),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy[overlap.upper().replace("-", "_")],
        ),
        state=ScheduleState(note=note, paused=paused),
    )
    try:
        await client.temporal.create_schedule(
            sid,
            schedule,
            trigger_immediately=trigger_now,
            memo={"ledgerflow_kind": kind, "ledgerflow_spec": spec_text},
        )
    except ScheduleAlreadyRunningError:
        raise ConfigError(
            f"a schedule with id {sid!r} exists; delete it first or pick another --id"
        ) from None
    return await describe_schedule(client, sid)


def _validate(
    workflow_type: str, model: type[BaseModel], data: BaseModel | dict[str, Any] | str | None
) -> BaseModel:
    from pydantic import ValidationError

    if isinstance(data, model):
        return data
    try:
        if data is None:
            return model.model_validate({})
        if isinstance(data, str):
            return model.model_validate_json(data)
        if isinstance(data, BaseModel):
            return model.model_validate(data.model_dump())
        return model.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(input)'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid input for {workflow_type}: {details}") from None


def _not_found(exc: BaseException, schedule_id: str) -> ConfigError | None:
    from temporalio.service import RPCError, RPCStatusCode

    if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
        return ConfigError(f"no schedule with id {schedule_id!r}")
    return None


async def describe_schedule(client: LedgerflowClient, schedule_id: str) -> ScheduleView:
    """One schedule in detail (input decoded, next and recent runs).

    Raises:
        ConfigError: no such schedule.
    """
    from temporalio.client import ScheduleActionStartWorkflow

    try:
        desc = await client.temporal.get_schedule_handle(schedule_id).describe()
    except Exception as exc:
        mapped = _not_found(exc, schedule_id)
        if mapped is not None:
            raise mapped from None
        raise
    memo = await desc.memo()
    action = desc.schedule.action
    view = ScheduleView(
        schedule_id=schedule_id,
        workflow_type=getattr(action, "workflow", "?"),
        kind=memo.get("ledgerflow_kind"),
        spec=memo.get("ledgerflow_spec"),
        every=[_fmt_every(i.every) for i in desc.schedule.spec.intervals],
        cron=list(desc.schedule.spec.cron_expressions),
        paused=desc.schedule.state.paused,
        note=desc.schedule.state.note or None,
        overlap=desc.schedule.policy.overlap.name.lower().replace("_", "-"),
        num_actions=desc.info.num_actions,
        next_runs=[t.isoformat() for t in desc.info.next_action_times],
        recent_runs=_runs(desc.info.recent_actions),
        running=[getattr(r, "workflow_id", "?") for r in desc.info.running_actions],
    )
    if isinstance(action, ScheduleActionStartWorkflow):
        view.task_queue = action.task_queue
        if action.args:
            decoded = await client.temporal.data_converter.decode(list(action.args), [dict])
            view.input = decoded[0] if decoded else None
    return view


async def list_schedules(client: LedgerflowClient) -> list[ScheduleView]:
    """Every schedule of the namespace (eventually consistent: a new one may show up late)."""
    views = []
    async for s in await client.temporal.list_schedules():
        memo = await s.memo()
        view = ScheduleView(
            schedule_id=s.id,
            workflow_type=getattr(s.schedule.action, "workflow", "?") if s.schedule else "?",
            kind=memo.get("ledgerflow_kind"),
            spec=memo.get("ledgerflow_spec"),
        )
        if s.schedule is not None:
            view.every = [_fmt_every(i.every) for i in s.schedule.spec.intervals]
            view.cron = list(s.schedule.spec.cron_expressions)
            view.paused = s.schedule.state.paused
            view.note = s.schedule.state.note or None
        if s.info is not None:
            view.next_runs = [t.isoformat() for t in s.info.next_action_times]
            view.recent_runs = _runs(s.info.recent_actions)
        views.append(view)
    return sorted(views, key=lambda v: v.schedule_id)


async def _with_handle(client: LedgerflowClient, schedule_id: str, op: str, **kw: Any) -> None:
    handle = client.temporal.get_schedule_handle(schedule_id)
    try:
        await getattr(handle, op)(**kw)
    except Exception as exc:
        mapped = _not_found(exc, schedule_id)
        if mapped is not None:
            raise mapped from None
        raise


async def pause_schedule(
    client: LedgerflowClient, schedule_id: str, note: str | None = None
) -> ScheduleView:
    """Pause a schedule (no new runs until unpaused). Raises ConfigError if unknown."""
    await _with_handle(client, schedule_id, "pause", note=note or "paused by ledgerflow")
    return await describe_schedule(client, schedule_id)


async def unpause_schedule(
    client: LedgerflowClient, schedule_id: str, note: str | None = None
) -> ScheduleView:
    """Resume a paused schedule. Raises ConfigError if unknown."""
    await _with_handle(client, schedule_id, "unpause", note=note or "unpaused by ledgerflow")
    return await describe_schedule(client, schedule_id)


async def trigger_schedule(
    client: LedgerflowClient, schedule_id: str, *, wait: float = 10.0
) -> dict[str, Any]:
    """Start one run now (even if paused); returns that run's ids once the server reports it.

    Scheduled runs are named ``<schedule id>-<start time to the second>``: a second trigger
    within the same second starts nothing (``workflow_id`` is then None).

    Raises:
        ConfigError: no such schedule.
    """
    before = await describe_schedule(client, schedule_id)
    seen = {(r["workflow_id"], r["run_id"]) for r in before.recent_runs}
    await _with_handle(client, schedule_id, "trigger")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        view = await describe_schedule(client, schedule_id)
        new = [r for r in view.recent_runs if (r["workflow_id"], r["run_id"]) not in seen]
        if new:
            return {"schedule_id": schedule_id, **new[-1]}
        if loop.time() >= deadline:
            return {"schedule_id": schedule_id, "workflow_id": None, "run_id": None}
        await asyncio.sleep(0.1)


async def delete_schedule(client: LedgerflowClient, schedule_id: str) -> None:
    """Delete a schedule (runs it started keep running). Raises ConfigError if unknown."""
    await _with_handle(client, schedule_id, "delete")
