"""Trigger activities: read ShortfallDetected logs, read shortfalls, start procurements.

Starting is idempotent: every procurement has a deterministic workflow id and is started with
``USE_EXISTING`` (a running run with that id is reused) and ``REJECT_DUPLICATE`` (a closed run
with that id is never started again), so a retried or replayed start never creates a second run.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import Field
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from ledgerflow.activities.procurement import Shortfall
from ledgerflow.chain.deploy import bytes32_to_sku, sku_to_bytes32
from ledgerflow.errors import ChainError, ConfigError
from ledgerflow.flow.errors import mapped_errors
from ledgerflow.flow.registry import Activities
from ledgerflow.types import StrictModel

__all__ = [
    "EventActivities",
    "FetchShortfalls",
    "ProcurementStart",
    "ShortfallBatch",
    "ShortfallEvent",
    "ShortfallList",
    "SkuList",
    "StartProcurements",
    "StartedRun",
    "StartedRuns",
    "shortfall_trigger",
    "shortfall_workflow_id",
    "sweep_workflow_id",
    "watcher_id",
    "window_stamp",
]

PROCUREMENT_WORKFLOW = "ProcurementWorkflow"
#: Block range per eth_getLogs call when discovering configured SKUs.
DISCOVERY_CHUNK = 10_000
#: At most this many running procurements are inspected to find their SKUs.
MAX_RUNNING_INSPECTED = 1000

_SA_STATUS = SearchAttributeKey.for_keyword("LedgerflowStatus")
_SA_MODE = SearchAttributeKey.for_keyword("LedgerflowAnchorMode")


# ---- deterministic ids ----------------------------------------------------------------------


def watcher_id(chain_id: int) -> str:
    """The one watcher's workflow id on a chain."""
    return f"chain-watcher-{chain_id}"


def shortfall_workflow_id(chain_id: int, tx_hash: str, log_index: int) -> str:
    """``procurement-ev-<chainid>-<txhash[2:14]>-<logindex>``: one id per ShortfallDetected log."""
    tx = tx_hash.lower()
    if not tx.startswith("0x"):
        tx = "0x" + tx
    return f"procurement-ev-{chain_id}-{tx[2:14]}-{log_index}"


def shortfall_trigger(chain_id: int, tx_hash: str, log_index: int) -> str:
    """``chain:<chain_id>:<tx_hash>:<log_index>``, the ``trigger`` of an event-started run."""
    tx = tx_hash.lower()
    if not tx.startswith("0x"):
        tx = "0x" + tx
    return f"chain:{chain_id}:{tx}:{log_index}"


_SAFE_SKU = re.compile(r"^[A-Za-z0-9._-]{1,32}$")


def sweep_workflow_id(sku: str, window: str) -> str:
    """``procurement-sweep-<sku>-<window>``; SKUs outside ``[A-Za-z0-9._-]`` are hex-encoded."""
    part = sku if _SAFE_SKU.match(sku) else "x" + sku.encode("utf-8").hex()
    return f"procurement-sweep-{part}-{window}"


def window_stamp(when: datetime, window_seconds: int) -> str:
    """The start of ``when``'s window, as ``YYYYmmddTHHMMSSZ`` (UTC)."""
    from datetime import UTC

    epoch = int(when.timestamp())
    start = datetime.fromtimestamp(epoch - epoch % window_seconds, tz=UTC)
    return start.strftime("%Y%m%dT%H%M%SZ")


# ---- models ---------------------------------------------------------------------------------


class ShortfallEvent(StrictModel):
    """One decoded ``ShortfallDetected`` log."""

    chain_id: int
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    sku: str
    stock: int
    threshold: int
    needed: int

    @property
    def workflow_id(self) -> str:
        return shortfall_workflow_id(self.chain_id, self.tx_hash, self.log_index)

    @property
    def trigger(self) -> str:
        return shortfall_trigger(self.chain_id, self.tx_hash, self.log_index)


class FetchShortfalls(StrictModel):
    """Argument of ``events.fetch_shortfalls``: scan ``[from_block, safe head]``, at most
    ``max_blocks`` blocks, where the safe head is the chain head minus ``confirmations``."""

    from_block: int | None = Field(None, ge=0, description="null: start after the current head")
    confirmations: int | None = Field(None, ge=0, description="null: the worker's setting")
    max_blocks: int = Field(2000, ge=1)
    skus: list[str] = Field(default_factory=list, description="only these SKUs; empty: all")


class ShortfallBatch(StrictModel):
    """Result of ``events.fetch_shortfalls``: events in log order and the new cursor."""

    events: list[ShortfallEvent]
    from_block: int
    to_block: int  # last block scanned; from_block - 1 when nothing was scanned
    next_block: int  # the new cursor
    head: int
    confirmations: int
    caught_up: bool  # True when the scan reached the safe head


class ProcurementStart(StrictModel):
    workflow_id: str
    """One run to start: its workflow id and its ProcurementRequest (as JSON: the workflow
    validates it)."""

    request: dict[str, Any]


class StartProcurements(StrictModel):
    """Argument of ``events.start_procurements``."""

    starts: list[ProcurementStart]
    task_queue: str | None = None  # null: the worker's task queue
    skip_running_skus: bool = False  # skip a SKU that already has a running procurement


class StartedRun(StrictModel):
    workflow_id: str
    run_id: str | None = None
    status: Literal["started", "existing", "skipped"]
    reason: str = ""


class StartedRuns(StrictModel):
    runs: list[StartedRun]


class SkuList(StrictModel):
    skus: list[str] = Field(default_factory=list)


class ShortfallList(StrictModel):
    items: list[Shortfall]


def _hex(value: Any) -> str:
    raw = value if isinstance(value, bytes | bytearray) else bytes(value)
    return "0x" + raw.hex()


def _sku_filter(skus: list[str]) -> dict[str, Any] | None:
    if not skus:
        return None
    try:
        return {"sku": [sku_to_bytes32(s) for s in skus]}
    except ValueError as exc:
        raise ConfigError(f"invalid SKU filter: {exc}") from None


class EventActivities(Activities):
    """Activities bound to one process's :class:`Runtime`."""

    @activity.defn(name="events.fetch_shortfalls")
    @mapped_errors
    async def fetch_shortfalls(self, req: FetchShortfalls) -> ShortfallBatch:
        """ShortfallDetected logs in ``[from_block, min(head - confirmations, from + max - 1)]``.

        The new cursor is the block after the last one scanned; nothing past the safe head is
        read, so a log is seen only once it is buried under ``confirmations`` blocks.
        """
        w3 = self.rt.w3
        chain_id = self.rt.chain_id
        confirmations = (
            req.confirmations if req.confirmations is not None else self.rt.settings.confirmations
        )
        try:
            head = int(await w3.eth.block_number)
        except Exception as exc:
            raise ChainError(f"cannot read the block number: {type(exc).__name__}") from None
        if req.from_block is None:
            # Follow from now on: the first block not yet mined.
            nxt = head + 1
            return ShortfallBatch(
                events=[],
                from_block=nxt,
                to_block=head,
                next_block=nxt,
                head=head,
                confirmations=confirmations,
                caught_up=True,
            )
        start = req.from_block
        safe = head - confirmations
        end = min(safe, start + req.max_blocks - 1)
        if end < start:
            return ShortfallBatch(
                events=[],
                from_block=start,
                to_block=start - 1,
                next_block=start,
                head=head,
                confirmations=confirmations,
                caught_up=True,
            )
        inv = self.rt.contract("InventoryLedger")
        try:
            logs = await inv.events.ShortfallDetected.get_logs(
                argument_filters=_sku_filter(req.skus), from_block=start, to_block=end
            )
        except ConfigError:
            raise
        except Exception as exc:
            raise ChainError(f"eth_getLogs {start}..{end} failed: {exc}") from None
        events = []
        for log in logs:
            args = log["args"]
            try:
                sku = bytes32_to_sku(args["sku"])
            except ValueError:
                activity.logger.warning("skipping a ShortfallDetected log with an undecodable SKU")
                continue
            events.append(
                ShortfallEvent(
                    chain_id=chain_id,
                    block_number=int(log["blockNumber"]),
                    block_hash=_hex(log["blockHash"]),
                    tx_hash=_hex(log["transactionHash"]),
                    log_index=int(log["logIndex"]),
                    sku=sku,
                    stock=int(args["stock"]),
                    threshold=int(args["threshold"]),
                    needed=int(args["needed"]),
                )
            )
        events.sort(key=lambda e: (e.block_number, e.log_index))
        return ShortfallBatch(
            events=events,
            from_block=start,
            to_block=end,
            next_block=end + 1,
            head=head,
            confirmations=confirmations,
            caught_up=end >= safe,
        )

    @activity.defn(name="events.read_shortfalls")
    @mapped_errors
    async def read_shortfalls(self, req: SkuList) -> ShortfallList:
        """``InventoryLedger.item`` and ``shortfall`` of each SKU (every configured one if none)."""
        inv = self.rt.contract("InventoryLedger")
        skus = list(dict.fromkeys(req.skus)) or await self._configured_skus()
        items = []
        for sku in skus:
            try:
                key = sku_to_bytes32(sku)
            except ValueError as exc:
                raise ConfigError(f"invalid SKU {sku!r}: {exc}") from None
            stock, threshold, target = await inv.functions.item(key).call()
            needed = await inv.functions.shortfall(key).call()
            items.append(
                Shortfall(
                    sku=sku,
                    stock=int(stock),
                    threshold=int(threshold),
                    target=int(target),
                    needed=int(needed),
                )
            )
        return ShortfallList(items=items)

    async def _configured_skus(self) -> list[str]:
        """Every SKU with an ItemConfigured log since the deployment, in first-seen order."""
        inv = self.rt.contract("InventoryLedger")
        head = int(await self.rt.w3.eth.block_number)
        start = int(self.rt.deployment.block_number)
        seen: dict[str, None] = {}
        while start <= head:
            end = min(head, start + DISCOVERY_CHUNK - 1)
            for log in await inv.events.ItemConfigured.get_logs(from_block=start, to_block=end):
                try:
                    seen.setdefault(bytes32_to_sku(log["args"]["sku"]), None)
                except ValueError:
                    continue
            start = end + 1
        return list(seen)

    @activity.defn(name="events.start_procurements")
    @mapped_errors
    async def start_procurements(self, req: StartProcurements) -> StartedRuns:
        """Start each procurement once (deterministic id, USE_EXISTING, REJECT_DUPLICATE)."""
        client = activity.client()
        settings = self.rt.settings
        task_queue = req.task_queue or settings.task_queue
        running = await _running_skus(client) if req.skip_running_skus else {}
        runs: list[StartedRun] = []
        for i, item in enumerate(req.starts):
            request = dict(item.request)
            sku = str(request.get("sku", ""))
            other = running.get(sku)
            if other is not None and other != item.workflow_id:
                runs.append(
                    StartedRun(
                        workflow_id=item.workflow_id,
                        status="skipped",
                        reason=f"{other} is already procuring {sku}",
                    )
                )
                continue
            # Like LedgerflowClient.start: checkpoint options are fixed when the run starts.
            for k, v in {
                "anchor_mode": settings.anchor_mode,
                "wait_for_anchor": settings.wait_for_anchor,
            }.items():
                if request.get(k) is None:
                    request[k] = v
            try:
                handle: WorkflowHandle[Any, Any] = await client.start_workflow(
                    PROCUREMENT_WORKFLOW,
                    request,
                    id=item.workflow_id,
                    task_queue=task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    search_attributes=TypedSearchAttributes(
                        [
                            SearchAttributePair(_SA_STATUS, "running"),
                            SearchAttributePair(_SA_MODE, request.get("anchor_mode") or "batched"),
                        ]
                    ),
                    static_summary=f"{sku}: {request.get('trigger') or 'trigger'}"[:200],
                )
            except WorkflowAlreadyStartedError as exc:
                # A closed run with this id exists: the event was handled before.
                runs.append(
                    StartedRun(
                        workflow_id=item.workflow_id,
                        run_id=exc.run_id or None,
                        status="existing",
                        reason="closed",
                    )
                )
                continue
            resp = getattr(handle, "_start_workflow_response", None)
            started = bool(getattr(resp, "started", True))
            runs.append(
                StartedRun(
                    workflow_id=item.workflow_id,
                    run_id=handle.result_run_id,
                    status="started" if started else "existing",
                    reason="" if started else "running",
                )
            )
            activity.heartbeat(i)
        return StartedRuns(runs=runs)


async def _running_skus(client: Client) -> dict[str, str]:
    """SKU → id of a running ProcurementWorkflow for it (read from each run's start input)."""
    out: dict[str, str] = {}
    query = f"WorkflowType = '{PROCUREMENT_WORKFLOW}' AND ExecutionStatus = 'Running'"
    n = 0
    async for wf in client.list_workflows(query):
        n += 1
        if n > MAX_RUNNING_INSPECTED:
            break
        handle = client.get_workflow_handle(wf.id, run_id=wf.run_id)
        async for event in handle.fetch_history_events(page_size=1):
            attrs = event.workflow_execution_started_event_attributes
            if attrs.input.payloads:
                decoded = await client.data_converter.decode(list(attrs.input.payloads), [dict])
                sku = decoded[0].get("sku") if decoded and isinstance(decoded[0], dict) else None
                if isinstance(sku, str):
                    out.setdefault(sku, wf.id)
            break
    return out
