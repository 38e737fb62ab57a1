"""``ledgerflow up``: the embedded stack on one machine (what ``make run`` runs).

Starts the Temporal dev server (SQLite under .ledgerflow/, UI on :8233) and anvil (state under
.ledgerflow/, so a restart keeps contracts and balances), deploys the contracts when the deployment
file is missing or stale, starts the worker (with the anchorer) and the API, runs one demo
procurement, prints its id, the UI link and the verification result, then serves until Ctrl-C or
SIGTERM and stops every child it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any
from urllib.parse import urlparse

import structlog
from rich.console import Console

from ledgerflow.dev.stack import ManagedProcess, port_in_use, start_anvil, start_temporal
from ledgerflow.settings import Settings

__all__ = ["run_up"]

log = structlog.get_logger(__name__)
console = Console(stderr=False, soft_wrap=True)

DEMO_SKU = "WIDGET-42"


def _port(url: str, default: int) -> int:
    parsed = urlparse(url if "://" in url else f"//{url}")
    return parsed.port or default


def start_services(settings: Settings) -> list[ManagedProcess]:
    """Start Temporal and anvil as children; raises StackError naming a taken port."""
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    procs: list[ManagedProcess] = []
    try:
        procs.append(
            start_temporal(
                _port(settings.temporal_address, 7233),
                ui_port=settings.temporal_ui_port,
                db_file=home / "temporal.db",
                namespace=settings.namespace,
                log_path=home / "temporal.log",
            )
        )
        procs.append(
            start_anvil(
                _port(settings.rpc_url, 8545),
                state_file=home / "anvil-state.json",
                log_path=home / "anvil.log",
            )
        )
    except BaseException:
        for p in reversed(procs):
            p.stop()
        raise
    return procs


def ensure_deployed(settings: Settings) -> None:
    """Deploy and seed when the deployment file is missing or does not match the chain."""
    from ledgerflow.chain import deploy

    path = settings.deployments_path
    if path.exists():
        current = deploy.load_deployment(path)
        if deploy.deployment_is_current(settings.rpc_url, current):
            console.print(f"contracts: deployed at block {current.block_number} (up to date)")
            return
        console.print("contracts: deployment file is stale; redeploying")
    keys = settings.dev_key(0), settings.dev_key(1), settings.dev_key(2)
    d = deploy.deploy_all(settings.rpc_url, keys[0], agent_key=keys[1], approver_key=keys[2])
    deploy.save_deployment(path, d)
    seed = deploy.seed_demo(
        settings.rpc_url, d, keys[0], keys[1], approver_dir=settings.home / "approvers"
    )
    console.print(f"contracts: deployed and seeded (registry {d.contracts['CheckpointRegistry']})")
    console.print(
        f"approvers: {seed.approver_threshold} of {len(seed.approvers)} sign above "
        f"{seed.unsigned_limit // deploy.TUSD:,} tUSD; their dev keys: "
        + ", ".join(seed.approver_key_files)
    )


#: What the demo's procurements add to the shortfall: a simulated supplier delivers after 2 s.
DEMO_PROCUREMENT = {"simulate_delivery_after_seconds": 2}


def simulate_sales(settings: Settings) -> Any:
    """Demo: record sales that leave the SKU below its reorder threshold, as a shop would; the
    ledger emits ShortfallDetected. Returns the receipt (None if there is no stock to sell)."""
    from ledgerflow.chain import deploy

    d = deploy.load_deployment(settings.deployments_path)
    w3 = deploy.connect(settings.rpc_url)
    inv = deploy.contract(w3, "InventoryLedger", d.contracts["InventoryLedger"])
    sku = deploy.sku_to_bytes32(DEMO_SKU)
    stock, threshold, _target = inv.functions.item(sku).call()
    sold = stock - threshold + 30 if stock >= threshold else min(5, stock)
    if sold <= 0:
        return None
    admin = w3.eth.account.from_key(settings.dev_key(0))
    tx = inv.functions.consume(sku, sold).build_transaction(
        {"from": admin.address, "nonce": w3.eth.get_transaction_count(admin.address, "pending")}
    )
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(admin.sign_transaction(tx).raw_transaction)
    )
    console.print(f"demo: recorded sales of {sold} x {DEMO_SKU}; stock now {stock - sold}")
    return receipt


async def run_demo(settings: Settings) -> bool:
    """The flagship, event-driven: sales cause an on-chain shortfall, the chain-event watcher
    starts the procurement for that event (the demo starts the same run with USE_EXISTING, so
    whoever is first, there is one run), then the run is verified."""
    from temporalio.common import WorkflowIDConflictPolicy

    from ledgerflow.chain import deploy
    from ledgerflow.sdk.client import LedgerflowClient
    from ledgerflow.sdk.schedules import WatcherInput, ensure_watcher, shortfall_starts_in_receipt

    async with await LedgerflowClient.connect(settings) as lf:
        watcher = await ensure_watcher(lf, input=WatcherInput(procurement=DEMO_PROCUREMENT))
        console.print(f"watcher: following ShortfallDetected events ({watcher})")
        receipt = await asyncio.to_thread(simulate_sales, settings)
        starts = []
        if receipt is not None:
            d = deploy.load_deployment(settings.deployments_path)
            inv = deploy.contract(
                deploy.connect(settings.rpc_url), "InventoryLedger", d.contracts["InventoryLedger"]
            )
            starts = shortfall_starts_in_receipt(inv, receipt, d.chain_id, DEMO_PROCUREMENT)
        if starts:
            handle = await lf.start(
                "ProcurementWorkflow",
                starts[0].request,
                workflow_id=starts[0].workflow_id,
                conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
            console.print(
                f"demo: ShortfallDetected -> ProcurementWorkflow [bold]{handle.id}[/bold] "
                f"(trigger {starts[0].request.trigger})"
            )
        else:
            handle = await lf.start("ProcurementWorkflow", {"sku": DEMO_SKU, **DEMO_PROCUREMENT})
            console.print(f"demo: started ProcurementWorkflow [bold]{handle.id}[/bold]")
        ui = f"{settings.temporal_ui_url}/namespaces/{settings.namespace}/workflows/{handle.id}"
        console.print(f"demo: watch it in the Temporal UI: {ui}")
        result = await lf.result(handle.id)
        console.print(
            f"demo: outcome [bold]{result['outcome']}[/bold] — bought {result.get('quantity')} x "
            f"{DEMO_SKU} from {result.get('supplier')} for "
            f"{(result.get('total') or 0) / 1e6:,.2f} tUSD (decided by {result.get('decided_by')})"
        )
        report = await lf.verify(handle.id)
        mark = "[green]ok[/green]" if report.ok else "[red]FAILED[/red]"
        console.print(
            f"verify: {mark} — {report.steps} steps, head {report.head}, "
            f"{len(report.anchors)} anchor(s), anchor mode {report.anchor_mode}"
        )
        for problem in report.problems:
            console.print(f"verify: {problem}")
        console.print(f"verify again any time: ledgerflow verify {handle.id} --json")
        return bool(report.ok)


async def _serve(settings: Settings, *, demo: bool) -> int:
    from ledgerflow.api.webhooks import serve_api
    from ledgerflow.worker.runner import run_worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [
        asyncio.create_task(run_worker(settings, stop), name="worker"),
        asyncio.create_task(serve_api(settings, stop), name="api"),
    ]
    code = 0
    try:
        if demo:
            demo_task = asyncio.create_task(run_demo(settings))
            done, _ = await asyncio.wait(
                [demo_task, asyncio.create_task(stop.wait()), *tasks],
                return_when=asyncio.FIRST_COMPLETED,
            )
            if demo_task in done:
                code = 0 if demo_task.result() else 1
            for t in tasks:
                if t in done and t.exception():
                    raise t.exception()  # type: ignore[misc]
        console.print(
            f"serving: Temporal UI {settings.temporal_ui_url} · API "
            f"http://{settings.api_host}:{settings.api_port}/docs · Ctrl-C to stop"
        )
        await stop.wait()
    finally:
        stop.set()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 15)
    return code


def run_up(settings: Settings, *, demo: bool = True) -> int:
    """Run the embedded stack until Ctrl-C; returns the process exit code."""
    from ledgerflow.errors import StackError

    if port_in_use(settings.api_port, settings.api_host):
        raise StackError(
            f"port {settings.api_port} is already in use, so the API cannot start there; "
            "stop what listens there or set LEDGERFLOW_API_PORT"
        )
    procs = start_services(settings)
    console.print(
        f"temporal: {settings.temporal_address} (UI {settings.temporal_ui_url}) · "
        f"anvil: {settings.rpc_url}"
    )
    try:
        ensure_deployed(settings)
        return asyncio.run(_serve(settings, demo=demo))
    finally:
        for p in reversed(procs):
            p.stop()
        console.print("stopped: worker, API, anvil (state saved), Temporal")
