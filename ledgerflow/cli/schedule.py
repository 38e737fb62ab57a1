"""``ledgerflow schedule ...`` and ``ledgerflow watch``: schedules and the chain-event watcher.

Kept apart from :mod:`ledgerflow.cli`, which registers ``schedule_app`` and ``watch``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from ledgerflow.errors import ConfigError, LedgerflowError
from ledgerflow.settings import Settings, get_settings

__all__ = ["schedule_app", "watch"]

schedule_app = typer.Typer(
    help="Temporal schedules that start workflows periodically (e.g. inventory-sweep).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _settings() -> Settings:
    from ledgerflow.log import configure_logging

    s = get_settings()
    configure_logging(s.log_level, s.log_format)
    return s


def _call(fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """Connect, run ``fn(client, ...)``, and turn ledgerflow errors into exit code 2."""
    from ledgerflow.sdk.client import LedgerflowClient

    settings = _settings()

    async def _main() -> Any:
        lf = await LedgerflowClient.connect(settings)
        try:
            return await fn(lf, *args, **kwargs)
        finally:
            del lf
            gc.collect()

    try:
        return asyncio.run(_main())
    except LedgerflowError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _dump(data: Any) -> Any:
    if hasattr(data, "model_dump"):
        return data.model_dump(mode="json")
    if isinstance(data, list):
        return [_dump(d) for d in data]
    return data


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(_dump(data), indent=2, default=str) + "\n")


def _print_view(view: Any) -> None:
    d = _dump(view)
    state = "[yellow]paused[/yellow]" if d["paused"] else "[green]active[/green]"
    spec = d.get("spec") or ", ".join([*(f"every {e}" for e in d["every"]), *d["cron"]]) or "-"
    out.print(f"[bold]{d['schedule_id']}[/bold]  {d['workflow_type']}  {spec}  {state}")
    if d.get("note"):
        out.print(f"  note: {d['note']}")
    if d.get("input") is not None:
        out.print(f"  input: {json.dumps(d['input'], sort_keys=True)}")
    if d.get("next_runs"):
        out.print(f"  next run: {d['next_runs'][0]}")
    for r in d.get("recent_runs", [])[-3:]:
        out.print(f"  ran {r['workflow_id']} at {r['started_at']}")


@schedule_app.command("create")
def create(
    kind: Annotated[
        str, typer.Argument(help="inventory-sweep, or a workflow type such as ProcurementWorkflow")
    ],
    input: Annotated[str, typer.Option("--input", "-i", help="the workflow input as JSON")] = "{}",
    every: Annotated[
        str | None, typer.Option("--every", help="interval: 30s, 5m, 1h, 1h30m, 1d")
    ] = None,
    cron: Annotated[str | None, typer.Option("--cron", help="cron expression (UTC)")] = None,
    id: Annotated[str | None, typer.Option("--id", help="schedule id; default: the kind")] = None,
    paused: Annotated[bool, typer.Option("--paused", help="create it paused")] = False,
    note: Annotated[str | None, typer.Option("--note", help="a note shown with it")] = None,
    overlap: Annotated[
        str, typer.Option(help="skip|buffer-one|buffer-all|cancel-other|terminate-other|allow-all")
    ] = "skip",
    trigger_now: Annotated[bool, typer.Option("--trigger-now", help="also run once now")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a schedule, e.g. `schedule create inventory-sweep --every 1h --input '{...}'`."""
    from ledgerflow.sdk.schedules import create_schedule

    view = _call(
        create_schedule,
        kind,
        input,
        schedule_id=id,
        every=every,
        cron=cron,
        paused=paused,
        note=note,
        overlap=overlap,
        trigger_now=trigger_now,
    )
    if as_json:
        _print_json(view)
    else:
        out.print(f"created schedule {view.schedule_id}")
        _print_view(view)


@schedule_app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """List the namespace's schedules."""
    from ledgerflow.sdk.schedules import list_schedules

    views = _call(list_schedules)
    if as_json:
        _print_json(views)
        return
    if not views:
        out.print("no schedules")
    for v in views:
        _print_view(v)


@schedule_app.command("describe")
def describe(schedule_id: str, as_json: JsonOpt = False) -> None:
    """Show one schedule: spec, input, state, next and recent runs."""
    from ledgerflow.sdk.schedules import describe_schedule

    view = _call(describe_schedule, schedule_id)
    if as_json:
        _print_json(view)
    else:
        _print_view(view)


@schedule_app.command("pause")
def pause(
    schedule_id: str,
    note: Annotated[str | None, typer.Option("--note", help="why")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pause a schedule."""
    from ledgerflow.sdk.schedules import pause_schedule

    view = _call(pause_schedule, schedule_id, note)
    if as_json:
        _print_json(view)
    else:
        out.print(f"paused {schedule_id}")


@schedule_app.command("unpause")
def unpause(
    schedule_id: str,
    note: Annotated[str | None, typer.Option("--note", help="why")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Resume a paused schedule."""
    from ledgerflow.sdk.schedules import unpause_schedule

    view = _call(unpause_schedule, schedule_id, note)
    if as_json:
        _print_json(view)
    else:
        out.print(f"unpaused {schedule_id}")


@schedule_app.command("trigger")
def trigger(schedule_id: str, as_json: JsonOpt = False) -> None:
    """Start one run of a schedule now; prints the run's workflow id."""
    from ledgerflow.sdk.schedules import trigger_schedule

    data = _call(trigger_schedule, schedule_id)
    if as_json:
        _print_json(data)
    elif data.get("workflow_id"):
        out.print(f"triggered {schedule_id}: started {data['workflow_id']}")
    else:
        out.print(f"triggered {schedule_id} (no run reported yet; overlap policy may skip it)")


@schedule_app.command("delete")
def delete(schedule_id: str, as_json: JsonOpt = False) -> None:
    """Delete a schedule (runs it started keep running)."""
    from ledgerflow.sdk.schedules import delete_schedule

    _call(delete_schedule, schedule_id)
    if as_json:
        _print_json({"schedule_id": schedule_id, "deleted": True})
    else:
        out.print(f"deleted {schedule_id}")


def watch(
    confirmations: Annotated[
        int | None, typer.Option(help="confirmation depth; default: LEDGERFLOW_CONFIRMATIONS")
    ] = None,
    from_block: Annotated[
        int | None,
        typer.Option(help="first block to scan (backfill); default: resume, else the next block"),
    ] = None,
    sku: Annotated[
        list[str] | None, typer.Option("--sku", help="only this SKU (repeatable); default: all")
    ] = None,
    poll_interval: Annotated[float, typer.Option(help="seconds between polls")] = 2.0,
    procurement: Annotated[
        str | None,
        typer.Option(help="extra ProcurementRequest fields as JSON, e.g. '{\"quantity\": 10}'"),
    ] = None,
    id: Annotated[str | None, typer.Option("--id", help="default: chain-watcher-<chainid>")] = None,
    status: Annotated[bool, typer.Option("--status", help="only show the watcher's state")] = False,
    stop: Annotated[
        bool, typer.Option("--stop", help="stop the watcher (keeps its cursor)")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start the chain-event watcher (ShortfallDetected → ProcurementWorkflow) unless it runs."""
    from ledgerflow.sdk.schedules import ensure_watcher, stop_watcher, watcher_state
    from ledgerflow.workflows.watcher import WatcherInput

    async def _main(lf: Any) -> dict[str, Any]:
        if stop:
            wf_id = await stop_watcher(lf, id)
            return {"workflow_id": wf_id, "stopping": True}
        if not status:
            try:
                inp = WatcherInput(
                    confirmations=confirmations,
                    from_block=from_block,
                    skus=list(sku or []),
                    poll_interval_seconds=poll_interval,
                    procurement=json.loads(procurement) if procurement else {},
                )
            except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
                raise ConfigError(f"invalid watcher options: {exc}") from None
            wf_id = await ensure_watcher(lf, input=inp, workflow_id=id)
            for _ in range(20):  # give the first poll a moment, so the state shows a cursor
                data = await watcher_state(lf, wf_id)
                if data.get("cursor") is not None or "note" in data:
                    return data
                await asyncio.sleep(0.1)
            return data
        return await watcher_state(lf, id)

    try:
        data = _call(_main)
    except Exception as exc:  # e.g. --status/--stop before any watcher ran
        from temporalio.service import RPCError

        if isinstance(exc, RPCError):
            err.print(f"[red]error:[/red] {exc.message}")
            raise typer.Exit(2) from None
        raise
    if as_json:
        _print_json(data)
        return
    for k, v in data.items():
        out.print(f"[bold]{k}[/bold]: {v}")
