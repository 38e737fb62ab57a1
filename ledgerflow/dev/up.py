"""``ledgerflow up``: the embedded stack on one machine (what ``make run`` runs), supervised.

``up`` starts four children, in this order, and reports each one only once it is really up:

- the Temporal dev server (SQLite under ``.ledgerflow/``, UI on :8233): started when the process we
  started listens on the gRPC and UI ports itself;
- anvil (state under ``.ledgerflow/``, so a restart keeps contracts and balances): started when our
  anvil listens on the RPC port; then the contracts are deployed if the deployment file is missing
  or stale;
- the worker (``ledgerflow worker``, with the anchorer): started when *that* process polls the task
  queue on our Temporal (its identity, ``<pid>@<host>``, is among the task queue's pollers);
- the API (``ledgerflow api``): started when that process listens on the API port and answers
  ``/health``.

The worker serves its Prometheus metrics on ``http://127.0.0.1:9464/metrics``
(``LEDGERFLOW_METRICS_PORT``) and the API its own on ``:9465`` (``LEDGERFLOW_API_METRICS_PORT``);
both ports must be free, like the others, before anything starts.

Then it runs one demo procurement in-process as a client, prints its id, the UI link and the
verification result, and serves until Ctrl-C or SIGTERM.

Supervision: ``up`` restarts nothing. When a child dies while ``up`` runs, it says which and how
(exit code or signal), stops the others and exits with code 3: a crash of the dev stack is shown,
not hidden behind a restart (production runs ``ledgerflow worker`` and ``ledgerflow api`` under a
supervisor with a restart policy; see docs/operations.md).

Shutdown: within :data:`STOP_TIMEOUT` seconds of Ctrl-C, SIGTERM or SIGHUP, whatever state the
services are in: API and worker first (SIGTERM, SIGKILL after :data:`CLIENT_GRACE` s), then anvil
(which saves its state on SIGTERM), then Temporal; a second Ctrl-C kills what is left at once. If
``up`` is killed hard, the kernel stops its children (parent-death signal, Linux), and the next
``up`` stops whatever is left on the lock file's list (:mod:`ledgerflow.dev.lock`), and only that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import urlparse

import httpx
import structlog
from pydantic import AliasChoices, SecretStr
from pydantic_settings import NoDecode
from rich.console import Console
from rich.markup import escape

from ledgerflow.dev.lock import UpLock, stop_leftovers
from ledgerflow.dev.stack import ManagedProcess, anvil_process, require_free, temporal_process
from ledgerflow.errors import StackError
from ledgerflow.observability.telemetry import metrics_address
from ledgerflow.settings import Settings

__all__ = [
    "CLIENT_GRACE",
    "EXIT_SERVICE_DIED",
    "STOP_TIMEOUT",
    "child_env",
    "outcome_line",
    "run_up",
]

log = structlog.get_logger(__name__)
console = Console(stderr=False, soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

T = TypeVar("T")

DEMO_SKU = "WIDGET-42"

#: From Ctrl-C or SIGTERM to the last child gone, whatever state the services are in.
STOP_TIMEOUT = 15.0
#: How long the API and the worker get to stop after SIGTERM before SIGKILL.
CLIENT_GRACE = 5.0
#: How long anvil gets to save its state and stop after SIGTERM before SIGKILL.
ANVIL_GRACE = 4.0
#: Exit code of ``up`` when one of its services died while it ran.
EXIT_SERVICE_DIED = 3

TEMPORAL_READY_TIMEOUT = 60.0
ANVIL_READY_TIMEOUT = 30.0
WORKER_READY_TIMEOUT = 90.0
API_READY_TIMEOUT = 60.0
_WATCH_SECONDS = 0.2

#: Ctrl-C, ``kill``, and the terminal closing all stop the stack the same way.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_LABELS = {"temporal": "Temporal", "anvil": "anvil", "worker": "worker", "api": "API"}
#: Stop order: clients of the servers first, then the chain (it saves its state), then Temporal.
_STOP_ORDER = (("api", "worker"), ("anvil",), ("temporal",))


def _port(url: str, default: int) -> int:
    parsed = urlparse(url if "://" in url else f"//{url}")
    return parsed.port or default


def _ui_url(settings: Settings) -> str:
    """The UI link: the configured one, or the one of the UI port ``up`` starts the UI on."""
    if "temporal_ui_url" in settings.model_fields_set:
        return settings.temporal_ui_url
    return f"http://localhost:{settings.temporal_ui_port}"


def child_env(settings: Settings) -> dict[str, str]:
    """``up``'s settings as the environment of the worker and API it starts, so that they use the
    stack ``up`` started whatever the child would read from ``.env`` on its own."""
    env: dict[str, str] = {}
    for name, info in type(settings).model_fields.items():
        value = getattr(settings, name)
        if value is None:
            continue
        alias = info.validation_alias
        if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
            key = alias.choices[0]
        elif isinstance(alias, str):
            key = alias
        else:
            key = f"LEDGERFLOW_{name.upper()}"
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, bool):
            env[key] = "true" if value else "false"
        elif isinstance(value, list) and any(
            m is NoDecode or isinstance(m, NoDecode) for m in info.metadata
        ):
            env[key] = ",".join(str(v) for v in value)  # a comma-separated setting
        elif isinstance(value, str | int | float | Path):
            env[key] = str(value)
        else:
            env[key] = json.dumps(value, default=str)
    if settings.codec_keys is not None:
        # The API's codec server answers the browser of the UI up starts, on whatever port;
        # that UI cannot send a bearer token (it has no login), and every service of the
        # embedded stack listens on loopback only, so loopback callers are let in unless the
        # operator said otherwise.
        if not settings.codec_cors_origins:
            env["LEDGERFLOW_CODEC_CORS_ORIGINS"] = ",".join(_codec_origins(settings))
        if "codec_server_allow_loopback" not in settings.model_fields_set:
            env["LEDGERFLOW_CODEC_SERVER_ALLOW_LOOPBACK"] = "true"
    return env


def codec_endpoint(settings: Settings) -> str | None:
    """The codec server the embedded UI decodes encrypted history with (the API's ``/codec``),
    or None when encrypted history is off."""
    if settings.codec_keys is None:
        return None
    host = settings.api_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api_port}/codec"


def _codec_origins(settings: Settings) -> list[str]:
    """The browser origins of the UI ``up`` starts, as ``localhost`` and as ``127.0.0.1``."""
    ui = urlparse(_ui_url(settings))
    origins = [f"{ui.scheme}://{ui.netloc}"]
    if ui.hostname in ("localhost", "127.0.0.1") and ui.port is not None:
        origins += [f"{ui.scheme}://{h}:{ui.port}" for h in ("localhost", "127.0.0.1")]
    return list(dict.fromkeys(origins))


class ServiceDied(Exception):
    """A child of ``up`` ended while ``up`` ran."""

    def __init__(self, child: ManagedProcess) -> None:
        super().__init__(f"{child.name} {child.exit_description()}")
        self.child = child


# ---- the demo ------------------------------------------------------------------------------------


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


def outcome_line(result: dict[str, Any]) -> str:
    """The demo's one line about how the purchase ended: "bought" only for a completed one."""
    outcome = str(result.get("outcome"))
    sku = escape(str(result.get("sku") or DEMO_SKU))
    reason = escape(str(result.get("reason") or "no reason given"))
    if outcome == "completed":
        return (
            f"demo: outcome [bold]completed[/bold] — bought {result.get('quantity')} x {sku} "
            f"from {escape(str(result.get('supplier')))} for "
            f"{(result.get('total') or 0) / 1e6:,.2f} tUSD "
            f"(decided by {escape(str(result.get('decided_by')))})"
        )
    if outcome == "rejected":
        return f"demo: outcome [bold]rejected[/bold] — nothing bought: {reason}"
    if outcome == "compensated":
        done = [escape(str(c)) for c in result.get("compensations") or []]
        undone = f"; compensated by {', '.join(done)}" if done else ""
        return (
            f"demo: outcome [bold]compensated[/bold] — the purchase of {sku} did not complete: "
            f"{reason}{undone}"
        )
    return f"demo: outcome [bold]{escape(outcome)}[/bold] — {reason}"


async def run_demo(settings: Settings, ui_url: str) -> bool:
    """The flagship, event-driven: sales cause an on-chain shortfall, the chain-event watcher
    starts the procurement for that event (the demo starts the same run with USE_EXISTING, so
    whoever is first, there is one run), then the run is verified."""
    from temporalio.common import WorkflowIDConflictPolicy

    from ledgerflow.chain import deploy
    from ledgerflow.sdk.client import LedgerflowClient
    from ledgerflow.sdk.schedules import ensure_watcher, shortfall_starts_in_receipt
    from ledgerflow.workflows.watcher import WatcherInput

    async with LedgerflowClient.connect(settings) as lf:
        watcher = await ensure_watcher(lf, input=WatcherInput(procurement=DEMO_PROCUREMENT))
        console.print(f"watcher: following ShortfallDetected events ({escape(str(watcher))})")
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
                f"demo: ShortfallDetected -> ProcurementWorkflow [bold]{escape(handle.id)}[/bold] "
                f"(trigger {escape(str(starts[0].request['trigger']))})"
            )
        else:
            handle = await lf.start("ProcurementWorkflow", {"sku": DEMO_SKU, **DEMO_PROCUREMENT})
            console.print(f"demo: started ProcurementWorkflow [bold]{escape(handle.id)}[/bold]")
        link = f"{ui_url}/namespaces/{settings.namespace}/workflows/{handle.id}"
        console.print(f"demo: watch it in the Temporal UI: {escape(link)}")
        result = await lf.result(handle.id)
        console.print(
            outcome_line(result.model_dump() if hasattr(result, "model_dump") else result)
        )
        report = await lf.verify(handle.id)
        mark = "[green]ok[/green]" if report.ok else "[red]FAILED[/red]"
        console.print(
            f"verify: {mark} — {report.steps} steps, head {report.head}, "
            f"{len(report.anchors)} anchor(s), anchor mode {report.anchor_mode}"
        )
        for problem in report.problems:
            console.print(f"verify: {escape(str(problem))}")
        console.print(f"verify again any time: ledgerflow verify {escape(handle.id)} --json")
        return bool(report.ok)


# ---- the supervisor ------------------------------------------------------------------------------


class Up:
    """One run of ``ledgerflow up``: start, watch, stop."""

    def __init__(self, settings: Settings, *, demo: bool = True) -> None:
        self.settings = settings
        self.demo = demo
        self.home = settings.home
        self.ui_url = _ui_url(settings)
        self.lock = UpLock(self.home)
        self.children: list[ManagedProcess] = []
        self.stop_signal: int | None = None
        self.demo_ok: bool | None = None
        self._hurry = False
        self._stopping = False
        self._serving = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[int] | None = None

    # -- signals: one handler for the whole run, so that no phase is left without one

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop_signal is not None or self._stopping:
            self._hurry = True  # a second Ctrl-C: kill what is left now
            return
        self.stop_signal = signum
        loop, main = self._loop, self._main
        if loop is not None and main is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(main.cancel)

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in _STOP_SIGNALS}
        try:
            leftovers = self.lock.acquire()
            try:
                stopped = stop_leftovers(leftovers, grace=CLIENT_GRACE)
                if stopped:
                    console.print(
                        "cleanup: stopped what the previous `ledgerflow up` left running: "
                        + ", ".join(stopped)
                    )
                self.lock.record([])
                self._check_ports()
                return self._run_loop()
            finally:
                self._shutdown()
                self.lock.release()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _check_ports(self) -> None:
        """Every port ``up`` needs is free before anything starts (one line names the holder)."""
        s = self.settings
        require_free(
            _port(s.temporal_address, 7233),
            "the Temporal dev server",
            "set LEDGERFLOW_TEMPORAL_ADDRESS",
        )
        require_free(s.temporal_ui_port, "the Temporal UI", "set LEDGERFLOW_TEMPORAL_UI_PORT")
        require_free(_port(s.rpc_url, 8545), "anvil", "set LEDGERFLOW_RPC_URL")
        require_free(s.api_port, "the API", "set LEDGERFLOW_API_PORT")
        if s.metrics_port:
            require_free(
                s.metrics_port,
                "the worker's metrics endpoint",
                "set LEDGERFLOW_METRICS_PORT (0 for none)",
            )
        if s.api_metrics_port:
            require_free(
                s.api_metrics_port,
                "the API's metrics endpoint",
                "set LEDGERFLOW_API_METRICS_PORT (0 for none)",
            )

    def _run_loop(self) -> int:
        loop = self._loop = asyncio.new_event_loop()
        try:
            main = self._main = loop.create_task(self._serve())
            if self.stop_signal is not None:  # asked to stop before the loop started
                main.cancel()
            try:
                return loop.run_until_complete(main)
            except asyncio.CancelledError:
                return 1 if self.demo_ok is False else 0
        finally:
            self._main = None
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=2))
            # Threads still busy (a deploy cut short) are not waited for: close() does not join.
            loop.close()
            self._loop = None

    async def _serve(self) -> int:
        try:
            await self._start_services()
            if self.demo:
                try:
                    self.demo_ok = await self._watching(run_demo(self.settings, self.ui_url))
                except (ServiceDied, asyncio.CancelledError):
                    raise
                except Exception as exc:  # the demo failing is reported; the stack keeps serving
                    self._check_children()  # unless it failed because a service died
                    self.demo_ok = False
                    err_console.print(
                        f"[red]demo failed:[/red] {escape(type(exc).__name__)}: {escape(str(exc))}"
                    )
            s = self.settings
            self._serving = True
            console.print(
                f"serving: Temporal UI {escape(self.ui_url)} · API "
                f"http://{s.api_host}:{s.api_port}/docs · Ctrl-C to stop"
            )
            await self._watching(asyncio.Event().wait())
            return 0  # not reached: serving ends by a signal or a death
        except ServiceDied as died:
            self._report_death(died.child)
            return EXIT_SERVICE_DIED

    def _check_children(self) -> None:
        for child in self.children:
            if child.returncode is not None:
                raise ServiceDied(child)

    async def _watching(self, aw: Awaitable[T]) -> T:
        """Await ``aw`` while watching every child; a death cancels it and raises ServiceDied."""
        task = asyncio.ensure_future(aw)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=_WATCH_SECONDS)
                if done:
                    return task.result()
                self._check_children()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 2)

    def _launch(self, child: ManagedProcess) -> ManagedProcess:
        """Start ``child`` (from the main thread: its parent-death signal is bound to it) and put
        it on the lock file's list before anything else can happen."""
        self.children.append(child.start())
        self.lock.record(self.children)
        return child

    async def _until_listening(
        self, child: ManagedProcess, ports: Sequence[int], timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while not child.check_listening(ports):
            self._check_children()
            if time.monotonic() > deadline:
                raise StackError(child.not_ready_message(ports, timeout))
            await asyncio.sleep(0.05)

    async def _start_services(self) -> None:
        s = self.settings
        self.home.mkdir(parents=True, exist_ok=True)
        t_port = _port(s.temporal_address, 7233)
        temporal = self._launch(
            temporal_process(
                t_port,
                ui_port=s.temporal_ui_port,
                db_file=self.home / "temporal.db",
                namespace=s.namespace,
                log_path=self.home / "temporal.log",
                port_hint="set LEDGERFLOW_TEMPORAL_ADDRESS",
                ui_port_hint="set LEDGERFLOW_TEMPORAL_UI_PORT",
                ui_codec_endpoint=codec_endpoint(s),
            )
        )
        a_port = _port(s.rpc_url, 8545)
        anvil = self._launch(
            anvil_process(
                a_port,
                state_file=self.home / "anvil-state.json",
                log_path=self.home / "anvil.log",
                port_hint="set LEDGERFLOW_RPC_URL",
            )
        )
        await asyncio.gather(
            self._until_listening(temporal, [t_port, s.temporal_ui_port], TEMPORAL_READY_TIMEOUT),
            self._until_listening(anvil, [a_port], ANVIL_READY_TIMEOUT),
        )
        console.print(
            f"temporal: {escape(s.temporal_address)} (UI {escape(self.ui_url)}), "
            f"pid {temporal.pid} · anvil: {escape(s.rpc_url)}, pid {anvil.pid}"
        )
        await self._watching(asyncio.to_thread(ensure_deployed, s))

        env = child_env(s)
        cli = [sys.executable, "-m", "ledgerflow.cli"]
        # Killing these two loses nothing (Temporal retries, the outbox resends), and a graceful
        # stop could hang once Temporal is gone: they die with ``up``.
        worker = self._launch(
            ManagedProcess(
                "worker",
                [*cli, "worker"],
                env=env,
                inherit_output=True,
                parent_death_signal=signal.SIGKILL,
            )
        )
        api = self._launch(
            ManagedProcess(
                "api",
                [*cli, "api"],
                env=env,
                inherit_output=True,
                parent_death_signal=signal.SIGKILL,
            )
        )
        await asyncio.gather(self._worker_ready(worker), self._api_ready(api))
        console.print(
            f"worker: pid {worker.pid}, polling task queue {escape(s.task_queue)} (with the "
            f"anchorer) · API: http://{s.api_host}:{s.api_port}/docs, pid {api.pid}"
        )
        endpoints = [
            f"{who} http://{escape(addr)}/metrics"
            for who, port in (("worker", s.metrics_port), ("API", s.api_metrics_port))
            if (addr := metrics_address(s.metrics_host, port))
        ]
        if endpoints:
            console.print("metrics: " + " · ".join(endpoints))
        if (endpoint := codec_endpoint(s)) is not None:
            console.print(
                f"encrypted history: on · the Temporal UI decodes through {escape(endpoint)}"
            )

    async def _worker_ready(self, worker: ManagedProcess) -> None:
        """Ready when the worker process we started polls the task queue on our Temporal."""
        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

        from ledgerflow.temporal import connect

        s = self.settings
        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        client = await self._watching(connect(s.temporal_address, s.namespace, timeout=30))
        request = DescribeTaskQueueRequest(
            namespace=s.namespace,
            task_queue=TaskQueue(name=s.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
        me = f"{worker.pid}@"
        while True:
            resp = await self._watching(client.workflow_service.describe_task_queue(request))
            if any(p.identity.startswith(me) for p in resp.pollers):
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"the worker (pid {worker.pid}) runs but did not poll task queue "
                    f"{s.task_queue!r} on {s.temporal_address} within {WORKER_READY_TIMEOUT:.0f}s"
                )
            await asyncio.sleep(0.2)

    async def _api_ready(self, api: ManagedProcess) -> None:
        """Ready when the API process we started listens on the API port and answers /health."""
        s = self.settings
        host = "127.0.0.1" if s.api_host in ("0.0.0.0", "::", "") else s.api_host
        url = f"http://{host}:{s.api_port}/health"
        await self._until_listening(api, [s.api_port], API_READY_TIMEOUT)
        deadline = time.monotonic() + API_READY_TIMEOUT
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url)).status_code == 200:
                        return
                self._check_children()
                if time.monotonic() > deadline:
                    raise StackError(f"the API (pid {api.pid}) did not answer {url}")
                await asyncio.sleep(0.1)

    # -- deaths and the stop

    def _report_death(self, child: ManagedProcess) -> None:
        where = f"; its log: {child.log_path}" if child.log_path else ""
        err_console.print(
            f"[red]error:[/red] {_LABELS.get(child.name, child.name)} (pid {child.pid}) "
            f"{child.exit_description()} while `ledgerflow up` was "
            f"{'serving' if self._serving else 'starting'}{escape(where)}; stopping the rest"
        )

    def _shutdown(self) -> None:
        """Stop every child still running, in order, within :data:`STOP_TIMEOUT` seconds."""
        if not self.children:
            return
        self._stopping = True
        # One second of the budget is kept for SIGKILL and reaping.
        deadline = time.monotonic() + STOP_TIMEOUT - 1.0
        by_name = {c.name: c for c in self.children}
        outcome: dict[str, str] = {}
        groups = [[by_name[n] for n in names if n in by_name] for names in _STOP_ORDER]
        groups = [g for g in groups if g]
        for i, group in enumerate(groups):
            left = max(deadline - time.monotonic(), 0.0)
            if i == len(groups) - 1:
                grace = left
            elif group[0].name in ("api", "worker"):
                grace = min(CLIENT_GRACE, left)
            else:
                grace = min(ANVIL_GRACE, left)
            outcome.update(self._stop_group(group, grace))
        self.lock.record([c for c in self.children if c.alive])
        parts = []
        for c in reversed(self.children):
            how = outcome.get(c.name, "stopped")
            label = _LABELS.get(c.name, c.name)
            if c.name == "anvil" and how == "stopped" and c.returncode == 0:
                how = "state saved"
            elif c.name == "anvil" and how.startswith("killed"):
                how += "; chain state as of its last dump"
            parts.append(label if how == "stopped" else f"{label} ({how})")
        with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
            console.print("stopped: " + ", ".join(parts))

    def _stop_group(self, group: Sequence[ManagedProcess], grace: float) -> dict[str, str]:
        """SIGTERM the group at once, wait up to ``grace`` seconds, SIGKILL the rest."""
        how: dict[str, str] = {}
        running = []
        for c in group:
            if c.returncode is not None:
                how[c.name] = c.stop()  # "had exited with code 1", "had been killed by SIGSEGV"
            else:
                c.terminate()
                running.append(c)
        deadline = time.monotonic() + grace
        for c in running:
            if c.wait_exit(deadline - time.monotonic(), hurry=lambda: self._hurry):
                how[c.name] = "stopped"
        for c in running:
            if c.name not in how:
                c.kill()
                how[c.name] = "killed at once" if self._hurry else f"killed after {grace:.0f}s"
        return how


def run_up(settings: Settings, *, demo: bool = True) -> int:
    """Run the embedded stack until Ctrl-C or SIGTERM; returns the process exit code.

    Returns:
        0 after a requested stop (1 if the demo run did not verify), :data:`EXIT_SERVICE_DIED`
        if a service died while ``up`` ran.

    Raises:
        StackError: a port is taken, another ``up`` runs on the same state directory, or a
            service did not start (one line each).
    """
    return Up(settings, demo=demo).run()
