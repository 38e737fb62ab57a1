"""``ledgerflow bench``: what checkpointing costs, each figure measured next to its baseline.

The bench brings up its own world and tears it down again: a Temporal dev server and anvil on
free ports (:mod:`ledgerflow.stack`), freshly deployed contracts (dev keys), a SQLite store in a
temporary directory, and the worker and the batch anchorer in this process. Nothing of the
user's own stack (``.ledgerflow/``, ports 7233/8545/8000) is touched.

Sections, each with its baseline measured in the same run:

1. ``throughput``: N concurrent runs of ``BenchWorkflow`` (K plain activities) without a Ledger
   (baseline), with batched checkpoints (waiting for anchoring at the end) and per step. Runs/s,
   p50/p95 completion latency and history events per step (from fetched histories).
2. ``gas``: amortized gas per checkpointed step of ``anchorRoot`` batches of 1, 16, 128, 1024
   steps next to per-step ``checkpoint`` transactions
   (:func:`ledgerflow.proofs.measure_anchor_gas`).
3. ``signer``: M concurrent sends through one :class:`~ledgerflow.chain.signer.Signer` against the
   same number of pre-signed transactions sent in nonce order as fast as the node takes them.
4. ``verification``: steps verified per second on a synthetic run (hash chain recomputed, Merkle
   proofs with :class:`~ledgerflow.merkle.MultiVerifier`, each root checked on chain once) against
   the same work with one independent proof check per step.
5. ``webhook``: signed webhook → run started (real HTTP to the FastAPI app served by uvicorn in
   this process) against starting the same run directly with the SDK.

Use :func:`run_bench` from Python or ``ledgerflow bench`` (``--json`` for one JSON object).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, Field

__all__ = [
    "SECTIONS",
    "TARGETS",
    "BenchConfig",
    "config_from_options",
    "machine_info",
    "percentile",
    "progress_printer",
    "render_report",
    "run_bench",
    "run_bench_cli",
]

log = structlog.get_logger(__name__)

Section = Literal["throughput", "gas", "signer", "verification", "webhook"]
SECTIONS: tuple[Section, ...] = ("throughput", "gas", "signer", "verification", "webhook")

#: The targets each section is judged against (see docs/benchmarks.md).
TARGETS: dict[str, float] = {
    "throughput_batched_vs_none_min": 0.90,
    "events_per_step_batched_vs_none_max_excess": 0.10,
    "gas_largest_batch_vs_per_step_max": 1 / 500,
    "signer_vs_presigned_min": 0.80,
    "verify_steps_per_s_min": 50_000,
    "webhook_vs_sdk_p50_max": 1.5,
}

Progress = Callable[[str], None]


class BenchConfig(BaseModel):
    """Sizes of every part of the bench. :meth:`quick` gives tiny ones (tests, smoke runs)."""

    sections: list[Section] = Field(default_factory=lambda: list(SECTIONS))
    # 1. throughput
    runs: int = Field(100, ge=1, description="N: concurrent runs per mode and round")
    per_step_runs: int | None = Field(
        None, ge=1, description="N for the per-step mode (default: runs)"
    )
    steps: int = Field(8, ge=5, description="K: activity steps per run")
    rounds: int = Field(2, ge=1, description="rounds of (none, batched, per-step)")
    warmup_runs: int = Field(4, ge=0, description="unmeasured runs per mode first")
    history_sample: int = Field(20, ge=1, description="histories fetched per mode")
    anchor_batch_size: int = Field(128, ge=1, description="the anchorer's batch size")
    anchor_max_wait: float = Field(0.25, gt=0, description="the anchorer's max wait (s)")
    # 2. gas
    gas_batch_sizes: list[int] = Field(default_factory=lambda: [1, 16, 128, 1024])
    gas_per_step_steps: int = Field(8, ge=1)
    # 3. signer
    signer_txs: int = Field(500, ge=1, description="M: concurrent sends per round")
    signer_rounds: int = Field(2, ge=1, description="rounds of (baseline, signer)")
    signer_processes: int = Field(
        2, ge=2, description="worker processes sharing one key on PostgreSQL"
    )
    signer_pg_url: str | None = Field(
        None,
        description="a PostgreSQL server for the shared-key measurement (a database of the "
        "run's own is created there and dropped); default LEDGERFLOW_TEST_PG_URL, else "
        "postgresql+psycopg://127.0.0.1:5432/postgres",
    )
    # 4. verification
    verify_steps: int = Field(10_000, ge=1)
    verify_batch: int = Field(1024, ge=1, description="steps per anchored root")
    verify_repeats: int = Field(3, ge=1, description="best of this many timings")
    # 5. webhook
    webhooks: int = Field(100, ge=1, description="webhook starts (and as many SDK starts)")
    webhook_warmup: int = Field(5, ge=0)

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """Tiny sizes: every section runs and reports, in well under a minute."""
        sizes: dict[str, Any] = {
            "runs": 3,
            "steps": 5,
            "rounds": 1,
            "warmup_runs": 1,
            "history_sample": 2,
            "anchor_max_wait": 0.1,
            "gas_per_step_steps": 3,
            "signer_txs": 20,
            "signer_rounds": 1,
            "verify_steps": 300,
            "verify_batch": 64,
            "verify_repeats": 1,
            "webhooks": 5,
            "webhook_warmup": 1,
        }
        return cls(**{**sizes, **overrides})


# ---- small helpers ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation; 0.0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def _latency(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 2),
        "p95_ms": round(percentile(values, 95) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2) if values else 0.0,
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def _loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine skews every figure."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not available
        return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: cores, CPU model, RAM, Python and OS."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gib: float | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        nproc = os.cpu_count() or 0
    return {
        "nproc": nproc,
        "cpu": cpu,
        "ram_gib": ram_gib,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def _proc_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (0.0 where /proc is unavailable)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


async def _gather_limited(coros: Sequence[Awaitable[Any]], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Awaitable[Any]) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


# ---- the bench's own stack ----------------------------------------------------------------------


class _World:
    """Temporal dev server, anvil, contracts, store, runtime and client of one bench run."""

    def __init__(self, tmp: Path, progress: Progress) -> None:
        self.tmp = tmp
        self.progress = progress
        self.procs: list[Any] = []
        self.pids: dict[str, int | None] = {}
        self.settings: Any = None
        self.runtime: Any = None
        self.client: Any = None
        self.rpc_url = ""

    async def start(self) -> None:
        from ledgerflow.chain.deploy import DEV_KEYS, deploy_all, save_deployment
        from ledgerflow.dev.stack import free_port, start_anvil, start_temporal
        from ledgerflow.runtime import Runtime
        from ledgerflow.settings import Settings
        from ledgerflow.temporal import connect

        anvil_port, temporal_port = free_port(), free_port()
        self.progress(f"starting anvil on :{anvil_port} and Temporal on :{temporal_port}")
        anvil, temporal = await asyncio.gather(
            asyncio.to_thread(start_anvil, anvil_port, log_path=self.tmp / "anvil.log"),
            asyncio.to_thread(start_temporal, temporal_port, log_path=self.tmp / "temporal.log"),
        )
        self.procs += [anvil, temporal]
        self.pids = {
            name: proc.proc.pid if proc.proc is not None else None
            for name, proc in (("temporal", temporal), ("anvil", anvil))
        }
        self.rpc_url = f"http://127.0.0.1:{anvil_port}"
        self.progress("deploying contracts")
        dep = await asyncio.to_thread(
            deploy_all, self.rpc_url, DEV_KEYS[0], agent_key=DEV_KEYS[1], approver_key=DEV_KEYS[2]
        )
        await asyncio.to_thread(
            _grant_writers, self.rpc_url, dep.contracts["CheckpointRegistry"], DEV_KEYS[7:9]
        )
        deployments = self.tmp / "deployments.json"
        save_deployment(deployments, dep)
        secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        self.settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            home=self.tmp / "home",
            rpc_url=self.rpc_url,
            temporal_address=f"127.0.0.1:{temporal_port}",
            namespace="default",
            task_queue=f"ledgerflow-bench-{uuid.uuid4().hex[:8]}",
            database_url=f"sqlite:///{self.tmp / 'store.db'}",
            deployments_file=deployments,
            registry_address=None,
            llm_provider="offline",
            webhook_secret=secret,
            tx_timeout_seconds=120.0,
        )
        self.runtime = Runtime(self.settings)
        await asyncio.to_thread(self.runtime.store.migrate)
        self.client = await connect(self.settings.temporal_address, "default", timeout=60)

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by this process (all threads), Temporal and anvil."""
        out = {"bench_process": time.process_time()}
        out.update({name: _proc_cpu_seconds(pid) for name, pid in self.pids.items()})
        return out

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self.procs.clear()


def _grant_writers(rpc_url: str, registry: str, keys: Sequence[str]) -> None:
    """Give the signer bench's two keys the registry's WRITER_ROLE (signed by the deployer)."""
    from eth_account import Account

    from ledgerflow.chain.deploy import DEV_KEYS, connect, contract, role_id

    w3 = connect(rpc_url)
    reg = contract(w3, "CheckpointRegistry", registry)
    admin = Account.from_key(DEV_KEYS[0])
    for key in keys:
        who = Account.from_key(key).address
        tx = reg.functions.grantRole(role_id("WRITER_ROLE"), who).build_transaction(
            {"from": admin.address, "nonce": w3.eth.get_transaction_count(admin.address)}
        )
        tx_hash = w3.eth.send_raw_transaction(admin.sign_transaction(tx).raw_transaction)
        if w3.eth.wait_for_transaction_receipt(tx_hash)["status"] != 1:
            raise RuntimeError("granting WRITER_ROLE for the signer bench failed")


# ---- 1. throughput ------------------------------------------------------------------------------

_MODES = ("none", "batched", "per-step")


async def _bench_throughput(world: _World, cfg: BenchConfig) -> dict[str, Any]:
    from temporalio.api.enums.v1 import EventType

    from ledgerflow.checkpoint.anchorer import Anchorer
    from ledgerflow.worker.runner import (
        activity_functions,
        build_worker,
        ensure_search_attributes,
        workflow_classes,
    )
    from ledgerflow_bench.activities import BenchInput, BenchResult, bench_step
    from ledgerflow_bench.workflow import BenchWorkflow

    client, settings = world.client, world.settings
    tq = settings.task_queue
    await ensure_search_attributes(client, "default")
    worker = build_worker(
        client,
        world.runtime,
        task_queue=tq,
        workflows=[*workflow_classes(), BenchWorkflow],
        activities=[*activity_functions(world.runtime), bench_step],
    )
    stop = asyncio.Event()
    anchorer = Anchorer(
        world.runtime, batch_size=cfg.anchor_batch_size, max_wait=cfg.anchor_max_wait
    )
    tasks = [
        asyncio.create_task(worker.run(), name="bench-worker"),
        asyncio.create_task(anchorer.run(stop), name="bench-anchorer"),
    ]
    tag = uuid.uuid4().hex[:6]
    latencies: dict[str, list[float]] = {m: [] for m in _MODES}
    walls: dict[str, float] = dict.fromkeys(_MODES, 0.0)
    ids: dict[str, list[str]] = {m: [] for m in _MODES}
    failures: dict[str, int] = dict.fromkeys(_MODES, 0)
    cpu: dict[str, dict[str, float]] = {m: {} for m in _MODES}
    unanchored = 0

    async def one(mode: str, wf_id: str) -> tuple[float, BenchResult | None]:
        t0 = time.perf_counter()
        try:
            handle = await client.start_workflow(
                "BenchWorkflow",
                BenchInput(steps=cfg.steps, mode=mode),  # type: ignore[arg-type]
                id=wf_id,
                task_queue=tq,
                result_type=BenchResult,
            )
            result = await handle.result()
        except Exception as exc:
            log.warning("bench run failed", workflow_id=wf_id, error=str(exc))
            return time.perf_counter() - t0, None
        return time.perf_counter() - t0, result

    async def batch(
        mode: str, label: str, n: int
    ) -> tuple[float, list[tuple[float, Any]], list[str]]:
        wf_ids = [f"bench-{tag}-{label}-{mode}-{i}" for i in range(n)]
        t0 = time.perf_counter()
        out = await asyncio.gather(*(one(mode, w) for w in wf_ids))
        return time.perf_counter() - t0, out, wf_ids

    try:
        if cfg.warmup_runs:
            world.progress(f"throughput: warm-up ({cfg.warmup_runs} runs per mode)")
            for mode in _MODES:
                await batch(mode, "warmup", cfg.warmup_runs)
        for r in range(cfg.rounds):
            for mode in _MODES:
                n = cfg.per_step_runs or cfg.runs if mode == "per-step" else cfg.runs
                world.progress(
                    f"throughput: round {r + 1}/{cfg.rounds}, {n} runs x {cfg.steps} "
                    f"steps, mode {mode}"
                )
                before = world.cpu()
                wall, out, wf_ids = await batch(mode, f"r{r}", n)
                after = world.cpu()
                walls[mode] += wall
                for name, value in after.items():
                    cpu[mode][name] = cpu[mode].get(name, 0.0) + value - before[name]
                for (lat, res), wf_id in zip(out, wf_ids, strict=True):
                    if res is None or res.steps != cfg.steps:
                        failures[mode] += 1
                        continue
                    if mode != "none" and not res.anchored:
                        unanchored += 1
                    latencies[mode].append(lat)
                    ids[mode].append(wf_id)
    finally:
        stop.set()
        await worker.shutdown()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    world.progress("throughput: fetching histories")

    async def events(wf_id: str) -> tuple[int, int]:
        history = await client.get_workflow_handle(wf_id).fetch_history()
        hb = sum(
            1
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        )
        return len(history.events), hb

    modes: dict[str, Any] = {}
    for mode in _MODES:
        sample = ids[mode][: cfg.history_sample]
        counts = await _gather_limited([events(w) for w in sample], 8)
        total_runs = len(latencies[mode])
        per_run = statistics.fmean(c for c, _ in counts) if counts else 0.0
        modes[mode] = {
            "runs": total_runs,
            "failed": failures[mode],
            "seconds": round(walls[mode], 3),
            "runs_per_s": round(total_runs / walls[mode], 2) if walls[mode] else 0.0,
            "steps_per_s": round(total_runs * cfg.steps / walls[mode], 1) if walls[mode] else 0.0,
            **_latency(latencies[mode]),
            "history_events_per_run": round(per_run, 2),
            "history_events_per_step": round(per_run / cfg.steps, 3),
            "workflow_tasks_per_run": (
                round(statistics.fmean(h for _, h in counts), 2) if counts else 0.0
            ),
            "histories_sampled": len(counts),
            "cpu_ms_per_run": {
                name: round(1000 * value / max(total_runs, 1), 2)
                for name, value in cpu[mode].items()
            },
            "cpu_utilisation": round(sum(cpu[mode].values()) / walls[mode], 2)
            if walls[mode]
            else 0.0,
        }
    none, batched, per_step = modes["none"], modes["batched"], modes["per-step"]
    ratio_b = _ratio(batched["runs_per_s"], none["runs_per_s"])
    events_b = _ratio(batched["history_events_per_step"], none["history_events_per_step"])
    met = {
        "throughput": ratio_b is not None and ratio_b >= TARGETS["throughput_batched_vs_none_min"],
        "events_per_step": events_b is not None
        and events_b <= 1 + TARGETS["events_per_step_batched_vs_none_max_excess"],
    }
    return {
        "workflow": "BenchWorkflow",
        "runs_per_mode": cfg.runs * cfg.rounds,
        "concurrency": cfg.runs,
        "steps": cfg.steps,
        "rounds": cfg.rounds,
        "anchor_batch_size": cfg.anchor_batch_size,
        "anchor_max_wait_s": cfg.anchor_max_wait,
        "baseline": {"mode": "none", **none},
        "modes": modes,
        "ratio": ratio_b,
        "ratios": {
            "batched_vs_none": ratio_b,
            "per_step_vs_none": _ratio(per_step["runs_per_s"], none["runs_per_s"]),
            "events_per_step_batched_vs_none": events_b,
            "events_per_step_per_step_vs_none": _ratio(
                per_step["history_events_per_step"], none["history_events_per_step"]
            ),
        },
        "unanchored_runs": unanchored,
        "target": {
            "batched_vs_none_min": TARGETS["throughput_batched_vs_none_min"],
            "events_per_step_max_excess": TARGETS["events_per_step_batched_vs_none_max_excess"],
        },
        "met": met["throughput"] and met["events_per_step"] and unanchored == 0,
        "met_detail": met,
    }


# ---- 2. gas -------------------------------------------------------------------------------------


async def _bench_gas(world: _World, cfg: BenchConfig) -> dict[str, Any]:
    from ledgerflow.checkpoint.proofs import format_gas_table, measure_anchor_gas, measure_seal_gas

    world.progress(f"gas: anchorRoot batches {cfg.gas_batch_sizes} and per-step checkpoints")
    rows = await measure_anchor_gas(
        world.runtime,
        cfg.gas_batch_sizes,
        per_step_steps=cfg.gas_per_step_steps,
        key_prefix=f"bench-gas-{uuid.uuid4().hex[:8]}",
    )
    seal = await measure_seal_gas(world.runtime, key_prefix=f"bench-seal-{uuid.uuid4().hex[:8]}")
    batched = [r for r in rows if r.mode == "batched"]
    per_step = next(r for r in rows if r.mode == "per-step")
    largest = max(batched, key=lambda r: r.steps_per_tx)
    ratio = largest.gas_per_step / per_step.gas_per_step
    target = TARGETS["gas_largest_batch_vs_per_step_max"]
    return {
        "rows": [r.model_dump() for r in rows],
        "table": format_gas_table(rows),
        "seal": seal.model_dump(),
        "baseline": per_step.model_dump(),
        "largest_batch": largest.steps_per_tx,
        "ratio": round(ratio, 6),
        "per_step_over_batched": round(1 / ratio, 1) if ratio else None,
        "target": {"largest_batch_vs_per_step_max": target},
        "met": ratio <= target,
    }


# ---- 3. signer ----------------------------------------------------------------------------------


async def _nonces(w3: Any, address: str) -> tuple[int, int]:
    latest = int(await w3.eth.get_transaction_count(address, "latest"))
    pending = int(await w3.eth.get_transaction_count(address, "pending"))
    return latest, pending


async def _bench_signer(world: _World, cfg: BenchConfig) -> dict[str, Any]:
    from eth_account import Account
    from web3.exceptions import TransactionNotFound

    from ledgerflow.chain.deploy import DEV_KEYS
    from ledgerflow.chain.signer import Signer

    rt = world.runtime
    w3 = rt.w3
    registry = rt.contract("CheckpointRegistry")
    m = cfg.signer_txs
    tag = uuid.uuid4().hex[:8]

    # Baseline: the same calls, pre-signed (gas, fees and nonces fixed up front), then sent one
    # after the other in nonce order as fast as the node takes them.
    base_acct = Account.from_key(DEV_KEYS[8])
    probe = registry.functions.anchorRoot(os.urandom(32), 1, [])
    estimate = int(await probe.estimate_gas({"from": base_acct.address}))
    gas = estimate + estimate // 5 + 10_000  # the signer's own margin
    block = await w3.eth.get_block("latest")
    tip = 1_000_000_000
    fees = {"maxFeePerGas": 2 * int(block.get("baseFeePerGas") or 0) + tip}
    fees["maxPriorityFeePerGas"] = tip
    next_nonce = int(await w3.eth.get_transaction_count(base_acct.address, "pending"))

    async def receipt_or_none(h: Any) -> Any:
        try:
            return await w3.eth.get_transaction_receipt(h)
        except TransactionNotFound:
            return None

    #: Blocks the measured transactions were mined in (anvil mines when transactions arrive:
    #: transactions that arrive together share a block).
    blocks_used = {"baseline": 0, "signer": 0}
    #: CPU seconds of this process (all threads) while measured.
    cpu_used = {"baseline": 0.0, "signer": 0.0}

    async def baseline_round() -> tuple[float, int, int]:
        nonlocal next_nonce
        raws: list[bytes] = []
        for _ in range(m):
            tx = await registry.functions.anchorRoot(os.urandom(32), 1, []).build_transaction(
                {
                    "from": base_acct.address,
                    "nonce": next_nonce,
                    "gas": gas,
                    "chainId": rt.chain_id,
                    "value": 0,
                    **fees,
                }
            )
            raws.append(bytes(base_acct.sign_transaction(tx).raw_transaction))
            next_nonce += 1
        t0, c0 = time.perf_counter(), time.process_time()
        hashes = [await w3.eth.send_raw_transaction(raw) for raw in raws]
        while await receipt_or_none(hashes[-1]) is None:
            await asyncio.sleep(0.005)
        seconds = time.perf_counter() - t0
        cpu_used["baseline"] += time.process_time() - c0
        receipts = await _gather_limited([receipt_or_none(h) for h in hashes], 16)
        ok = sum(1 for r in receipts if r is not None and int(r["status"]) == 1)
        blocks_used["baseline"] += len({int(r["blockNumber"]) for r in receipts if r is not None})
        return seconds, ok, sum(1 for r in receipts if r is None)

    # The signer: M concurrent sends of the same calls, as the anchorer and activities send them.
    signer = Signer(w3, DEV_KEYS[7], rt.store, rt.chain_id, timeout=rt.settings.tx_timeout_seconds)
    warm = registry.functions.anchorRoot(os.urandom(32), 1, [])
    await signer.send(f"bench-signer:{tag}:warmup", warm, contract="CheckpointRegistry")
    errors: list[str] = []

    async def signer_round(r: int) -> tuple[float, int]:
        calls = [registry.functions.anchorRoot(os.urandom(32), 1, []) for _ in range(m)]

        async def send(i: int, call: Any) -> Any:
            try:
                key = f"bench-signer:{tag}:{r}:{i}"
                return await signer.send(key, call, contract="CheckpointRegistry")
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return None

        t0, c0 = time.perf_counter(), time.process_time()
        receipts = await asyncio.gather(*(send(i, c) for i, c in enumerate(calls)))
        seconds = time.perf_counter() - t0
        cpu_used["signer"] += time.process_time() - c0
        blocks_used["signer"] += len({x.block_number for x in receipts if x is not None})
        return seconds, sum(1 for x in receipts if x is not None and int(x["status"]) == 1)

    base_s = sign_s = 0.0
    base_ok = base_missing = sign_ok = 0
    per_round: list[dict[str, float]] = []
    for r in range(cfg.signer_rounds):
        # Alternated, and in turn first (ABBA...): drift on a shared machine, and the node
        # slowing down as its chain grows, hit both alike.
        world.progress(
            f"signer: round {r + 1}/{cfg.signer_rounds}, {m} pre-signed sends in nonce order "
            f"and {m} concurrent sends through one Signer"
        )
        if r % 2 == 0:
            b_s, b_ok, b_missing = await baseline_round()
            s_s, s_ok = await signer_round(r)
        else:
            s_s, s_ok = await signer_round(r)
            b_s, b_ok, b_missing = await baseline_round()
        base_s, base_ok, base_missing = base_s + b_s, base_ok + b_ok, base_missing + b_missing
        sign_s, sign_ok = sign_s + s_s, sign_ok + s_ok
        per_round.append(
            {
                "baseline_tx_per_s": round(m / b_s, 1),
                "signer_tx_per_s": round(m / s_s, 1),
                "ratio": round(b_s / s_s, 4),
            }
        )
    total = m * cfg.signer_rounds
    latest, pending = await _nonces(w3, base_acct.address)
    baseline: dict[str, Any] = {
        "method": "pre-signed raw transactions, sent sequentially in nonce order",
        "txs": total,
        "seconds": round(base_s, 3),
        "tx_per_s": round(total / base_s, 1),
        "mined_ok": base_ok,
        "blocks": blocks_used["baseline"],
        "cpu_ms_per_tx": round(cpu_used["baseline"] * 1000 / total, 3),
        "stuck": base_missing + (pending - latest),
    }
    # Stuck: signed into the outbox but not mined on chain, or still in the node's pool.
    unmined = await asyncio.to_thread(rt.store.outbox_unmined, rt.chain_id, signer.address)
    unmined_receipts = await _gather_limited([receipt_or_none(u.tx_hash) for u in unmined], 16)
    latest, pending = await _nonces(w3, signer.address)
    signed: dict[str, Any] = {
        "method": "Signer.send, all concurrent (estimate, sign, persist, broadcast, receipt)",
        "txs": total,
        "concurrency": m,
        "seconds": round(sign_s, 3),
        "tx_per_s": round(total / sign_s, 1),
        "mined_ok": sign_ok,
        "blocks": blocks_used["signer"],
        "cpu_ms_per_tx": round(cpu_used["signer"] * 1000 / total, 3),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "nonce_errors": signer.nonce_errors,
        "outbox_rows_not_marked_mined": len(unmined),
        "stuck": sum(1 for x in unmined_receipts if x is None) + (pending - latest),
    }
    signed["rpc_requests_per_send"] = round(signer.rpc_requests / (total + 1), 3)
    ratio = _ratio(signed["tx_per_s"], baseline["tx_per_s"])
    target = TARGETS["signer_vs_presigned_min"]
    one_met = (
        ratio is not None
        and ratio >= target
        and signer.nonce_errors == 0
        and signed["stuck"] == 0
        and sign_ok == total
    )
    shared = await _signer_shared_key(world, cfg, baseline_round, receipt_or_none)
    return {
        "call": "CheckpointRegistry.anchorRoot(random root, 1)",
        "gas_limit": gas,
        "rounds": per_round,
        "baseline": baseline,
        "signer": signed,
        "ratio": ratio,
        "nonce_errors": signer.nonce_errors,
        "stuck": signed["stuck"],
        "target": {"ratio_min": target, "nonce_errors": 0, "stuck": 0},
        "met_one_process": one_met,
        "two_processes": shared,
        "met": one_met and shared["met"],
    }


def _tail(path: Path, chars: int = 600) -> str:
    from ledgerflow.log import scrub

    try:
        return scrub(path.read_text(errors="replace")[-chars:])
    except OSError:
        return "(no log)"


def _pg_admin_url() -> str:
    return (
        os.environ.get("LEDGERFLOW_TEST_PG_URL") or "postgresql+psycopg://127.0.0.1:5432/postgres"
    )


@contextlib.contextmanager
def _scratch_database(url: str) -> Any:
    """A fresh database on the PostgreSQL server of ``url`` (its URL), dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(url)
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"ledgerflow_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _signer_shared_key(
    world: _World,
    cfg: BenchConfig,
    baseline_round: Callable[[], Awaitable[tuple[float, int, int]]],
    receipt_or_none: Callable[[Any], Awaitable[Any]],
) -> dict[str, Any]:
    """Two worker processes share one key on a PostgreSQL store (a database of this run's own,
    dropped afterwards), each sending M/2 concurrently; rounds alternate with the baseline."""
    from eth_account import Account

    from ledgerflow.chain.deploy import DEV_KEYS
    from ledgerflow.log import scrub
    from ledgerflow.store import Store

    rt = world.runtime
    procs_n = cfg.signer_processes
    per_proc = max(1, cfg.signer_txs // procs_n)
    target = TARGETS["signer_vs_presigned_min"]
    head: dict[str, Any] = {
        "method": f"{procs_n} worker processes, one Signer each for the same key, on one "
        f"PostgreSQL store; {per_proc} concurrent Signer.send per process",
        "processes": procs_n,
        "target": {"ratio_min": target, "nonce_errors": 0, "stuck": 0},
    }
    key = DEV_KEYS[9]
    address = Account.from_key(key).address
    try:
        scratch = _scratch_database(cfg.signer_pg_url or _pg_admin_url())
        db = scratch.__enter__()
    except Exception as exc:  # no server, no rights: reported, not met
        reason = scrub(f"PostgreSQL unreachable: {type(exc).__name__}: {exc}")[:300]
        return {**head, "skipped": reason, "ratio": None, "met": False}
    try:
        registry = rt.contract("CheckpointRegistry")
        await asyncio.to_thread(Store(db).migrate)
        await asyncio.to_thread(_grant_writers, world.rpc_url, str(registry.address), [key])
        key_file = world.tmp / "shared-signer.key"
        key_file.touch(mode=0o600)
        key_file.write_text(key)
        start_nonce = int(await rt.w3.eth.get_transaction_count(address, "pending"))
        tag = uuid.uuid4().hex[:8]

        async def pg_round(r: int) -> tuple[float, list[dict[str, Any]]]:
            outs = [world.tmp / f"shared-{tag}-{r}-{i}.json" for i in range(procs_n)]
            procs = []
            for i in range(procs_n):
                argv = ["-m", "ledgerflow_bench.signer_procs", "--rpc", world.rpc_url]
                argv += ["--key-file", str(key_file), "--registry", str(registry.address)]
                argv += ["--chain-id", str(rt.chain_id), "--prefix", f"bench-pg:{tag}:{r}:{i}"]
                argv += ["--count", str(per_proc), "--out", str(outs[i])]
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        *argv,
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        env={**os.environ, "LEDGERFLOW_DATABASE_URL": db},  # not on argv
                        stderr=open(world.tmp / f"shared-{tag}-{r}-{i}.log", "wb"),  # noqa: SIM115
                    )
                )
            try:
                for p in procs:
                    assert p.stdout is not None
                    line = b""
                    while line.strip() != b"ready":
                        line = await asyncio.wait_for(p.stdout.readline(), 120)
                        if not line:
                            raise RuntimeError(
                                "a signer process did not start: "
                                + _tail(world.tmp / f"shared-{tag}-{r}-{procs.index(p)}.log")
                            )
                go = time.monotonic()
                for p in procs:
                    assert p.stdin is not None
                    p.stdin.write(b"go\n")
                    await p.stdin.drain()
                for p in procs:
                    await asyncio.wait_for(p.wait(), 600)
            finally:
                for p in procs:
                    if p.returncode is None:
                        p.kill()
                        await p.wait()
            results = [json.loads(o.read_text()) for o in outs if o.exists()]
            if len(results) != procs_n:
                raise RuntimeError(
                    "a signer process failed: " + _tail(world.tmp / f"shared-{tag}-{r}-0.log")
                )
            return max(x["finished"] for x in results) - go, results

        base_s = pg_s = 0.0
        base_ok = base_missing = pg_ok = nonce_errors = errors = requests = 0
        cpu = 0.0
        first_error: str | None = None
        per_round: list[dict[str, float]] = []
        for r in range(cfg.signer_rounds):
            world.progress(
                f"signer: shared key, round {r + 1}/{cfg.signer_rounds}, pre-signed sends, then "
                f"{procs_n} processes x {per_proc} concurrent sends on PostgreSQL"
            )
            if r % 2 == 0:  # in turn first, as above
                b_s, b_ok, b_missing = await baseline_round()
                s_s, results = await pg_round(r)
            else:
                s_s, results = await pg_round(r)
                b_s, b_ok, b_missing = await baseline_round()
            m = cfg.signer_txs
            base_s, base_ok, base_missing = base_s + b_s, base_ok + b_ok, base_missing + b_missing
            pg_s += s_s
            pg_ok += sum(x["mined_ok"] for x in results)
            nonce_errors += sum(x["nonce_errors"] for x in results)
            errors += sum(x["error_count"] for x in results)
            requests += sum(x["rpc_requests"] for x in results)
            cpu += sum(x["cpu_seconds"] for x in results)
            failed = [x["errors"][0] for x in results if x["errors"]]
            first_error = first_error or (failed[0] if failed else None)
            per_round.append(
                {
                    "baseline_tx_per_s": round(m / b_s, 1),
                    "signer_tx_per_s": round(per_proc * procs_n / s_s, 1),
                    "ratio": round((per_proc * procs_n / s_s) / (m / b_s), 4),
                }
            )
        total_base = cfg.signer_txs * cfg.signer_rounds
        total = per_proc * procs_n * cfg.signer_rounds
        # Every send mined exactly once: one outbox row per key (the key is unique), each row
        # mined with a successful receipt, nonces contiguous from where the key stood, and the
        # chain's count moved by exactly the number of rows (no second transaction for a key).
        store = Store(db)
        try:
            rows = await asyncio.to_thread(store.outbox_from_nonce, rt.chain_id, address, 0)
        finally:
            store.engine.dispose()
        receipts = await _gather_limited([receipt_or_none(x.tx_hash) for x in rows], 16)
        latest, pending = await _nonces(rt.w3, address)
        nonces = [x.nonce for x in rows]
        mined_once = (
            len({x.key for x in rows}) == len(rows) == total + procs_n * cfg.signer_rounds
            and nonces == list(range(start_nonce, start_nonce + len(rows)))
            and latest == pending == start_nonce + len(rows)
            and all(x.status == "mined" for x in rows)
            and all(rc is not None and int(rc["status"]) == 1 for rc in receipts)
        )
        stuck = sum(1 for x in rows if x.status == "signed") + (pending - latest)
        baseline: dict[str, Any] = {
            "method": "pre-signed raw transactions, sent sequentially in nonce order",
            "txs": total_base,
            "seconds": round(base_s, 3),
            "tx_per_s": round(total_base / base_s, 1),
            "mined_ok": base_ok,
            "stuck": base_missing,
        }
        signed: dict[str, Any] = {
            "txs": total,
            "seconds": round(pg_s, 3),
            "tx_per_s": round(total / pg_s, 1),
            "mined_ok": pg_ok,
            "errors": errors,
            "first_error": first_error,
            "nonce_errors": nonce_errors,
            "rpc_requests_per_send": round(requests / max(total, 1), 3),
            "cpu_ms_per_tx": round(cpu * 1000 / max(total, 1), 3),
            "outbox_rows": len(rows),
            "blocks": len({int(rc["blockNumber"]) for rc in receipts if rc is not None}),
            "every_send_mined_exactly_once": mined_once,
            "stuck": stuck,
        }
        ratio = _ratio(signed["tx_per_s"], baseline["tx_per_s"])
        return {
            **head,
            "rounds": per_round,
            "baseline": baseline,
            "signer": signed,
            "ratio": ratio,
            "nonce_errors": nonce_errors,
            "stuck": stuck,
            "met": ratio is not None
            and ratio >= target
            and nonce_errors == 0
            and stuck == 0
            and errors == 0
            and pg_ok == total
            and mined_once,
        }
    finally:
        scratch.__exit__(None, None, None)


# ---- 4. verification ----------------------------------------------------------------------------


def _synthetic_steps(workflow_id: str, run_id: str, n: int) -> list[Any]:
    """The step rows of a synthetic n-step batched run (checkpoint spec v1)."""
    from ledgerflow.checkpoint.canonical import canonical_bytes, keccak, to_hex
    from ledgerflow.checkpoint.records import StepRecord, next_head, run_key
    from ledgerflow.store import StepRow

    rk = run_key(workflow_id, run_id, spec=1)
    rk_hex = to_hex(rk)
    head = rk
    rows: list[StepRow] = []
    digest = "seed"
    for seq in range(n):
        inp = canonical_bytes({"index": seq, "digest": digest})
        digest = keccak(inp).hex()
        out = canonical_bytes({"index": seq, "digest": digest})
        record = StepRecord(
            run=rk_hex,
            seq=seq,
            kind="activity",
            name="bench.step",
            input=to_hex(keccak(inp)),
            output=to_hex(keccak(out)),
            status="ok",
            prev=to_hex(head),
        )
        sh = record.hash()
        new_head = next_head(head, sh)
        rows.append(
            StepRow(
                workflow_id=workflow_id,
                run_id=run_id,
                seq=seq,
                kind=record.kind,
                name=record.name,
                status=record.status,
                input_hash=record.input,
                output_hash=record.output,
                prev=record.prev,
                step_hash=to_hex(sh),
                head=to_hex(new_head),
                input_preimage=inp.decode(),
                output_preimage=out.decode(),
                anchor_mode="batched",
            )
        )
        head = new_head
    return rows


async def _root_checks(world: _World, anchors: dict[int, Any]) -> tuple[int, int]:
    """Each distinct root once (concurrently): ``anchoredAt`` equals the recorded block and the
    anchoring receipt carries the registry's ``RootAnchored`` for it."""
    rt = world.runtime
    registry = rt.contract("CheckpointRegistry")

    async def check(anchor: Any) -> bool:
        root = bytes.fromhex(anchor.root[2:])
        block = int(await registry.functions.anchoredAt(root).call())
        if block == 0 or block != anchor.block_number:
            return False
        receipt = await rt.w3.eth.get_transaction_receipt(anchor.tx_hash)
        events = registry.events.RootAnchored().process_receipt(receipt)
        return any(bytes(e["args"]["root"]) == root for e in events)

    results = await _gather_limited([check(a) for a in anchors.values()], 8)
    return sum(results), len(results) - sum(results)


async def _verify_once(
    world: _World, wf: str, run: str, rows: list[Any], anchors: dict[int, Any], *, memo: bool
) -> dict[str, Any]:
    from ledgerflow.checkpoint.merkle import MultiVerifier, verify_proof
    from ledgerflow.checkpoint.records import leaf_hash
    from ledgerflow.checkpoint.verify import _Findings, decode_proof, verify_steps

    findings = _Findings()
    t0 = time.perf_counter()
    hashes, _head = verify_steps(wf, run, rows, findings)
    t1 = time.perf_counter()
    roots = {aid: bytes.fromhex(a.root[2:]) for aid, a in anchors.items()}
    triples = [
        (leaf_hash(sh), decode_proof(row.proof), roots[row.anchor_id])
        for row, sh in zip(rows, hashes, strict=True)
    ]
    if memo:
        results = MultiVerifier().verify_many(triples)
    else:
        results = [verify_proof(leaf, proof, root) for leaf, proof, root in triples]
    t2 = time.perf_counter()
    roots_ok, roots_bad = await _root_checks(world, anchors)
    t3 = time.perf_counter()
    n = len(rows)
    return {
        "steps": n,
        "seconds": round(t3 - t0, 4),
        "steps_per_s": round(n / (t3 - t0)),
        "chain_recompute_s": round(t1 - t0, 4),
        "merkle_proofs_s": round(t2 - t1, 4),
        "root_checks_s": round(t3 - t2, 4),
        "roots_checked": roots_ok + roots_bad,
        "ok": not findings.problems and all(results) and roots_bad == 0,
    }


async def _bench_verification(world: _World, cfg: BenchConfig) -> dict[str, Any]:
    from ledgerflow.checkpoint.anchorer import Anchorer
    from ledgerflow.checkpoint.verify import verify_run

    rt = world.runtime
    store = rt.store
    n = cfg.verify_steps
    wf, run = f"bench-verify-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    world.progress(f"verification: building a synthetic {n}-step run")
    rows = await asyncio.to_thread(_synthetic_steps, wf, run, n)
    from ledgerflow.checkpoint.canonical import to_hex
    from ledgerflow.checkpoint.records import run_key

    await asyncio.to_thread(
        store.ensure_run,
        workflow_id=wf,
        run_id=run,
        workflow_type="BenchWorkflow",
        run_key=to_hex(run_key(wf, run, spec=1)),
        anchor_mode="batched",
    )
    for i in range(0, n, 1000):
        await asyncio.to_thread(store.save_steps, rows[i : i + 1000])
    await asyncio.to_thread(store.finish_run, wf, run, "completed")
    world.progress(f"verification: anchoring in roots of {cfg.verify_batch} steps")
    anchorer = Anchorer(rt, batch_size=cfg.verify_batch, max_wait=0.0)
    while await anchorer.anchor_once() is not None:
        pass
    t0 = time.perf_counter()
    loaded = await asyncio.to_thread(store.get_steps, wf, run)
    loaded.sort(key=lambda r: r.seq)
    anchors = await asyncio.to_thread(store.get_anchors, [r.anchor_id for r in loaded])
    load_s = time.perf_counter() - t0

    world.progress(f"verification: timing (best of {cfg.verify_repeats})")
    fast: dict[str, Any] | None = None
    naive: dict[str, Any] | None = None
    for _ in range(cfg.verify_repeats):
        f = await _verify_once(world, wf, run, loaded, anchors, memo=True)
        b = await _verify_once(world, wf, run, loaded, anchors, memo=False)
        fast = f if fast is None or f["seconds"] < fast["seconds"] else fast
        naive = b if naive is None or b["seconds"] < naive["seconds"] else naive
    assert fast is not None and naive is not None
    t0 = time.perf_counter()
    report = await verify_run(rt, wf, run, allow_unsealed_v1=True)  # a synthetic v1 run
    e2e_s = time.perf_counter() - t0
    target = TARGETS["verify_steps_per_s_min"]
    return {
        "steps": n,
        "roots": len(anchors),
        "steps_per_root": cfg.verify_batch,
        "store_load_s": round(load_s, 4),
        "fast": {"method": "verify_steps + MultiVerifier + one chain check per root", **fast},
        "baseline": {"method": "verify_steps + verify_proof per step + same root checks", **naive},
        "ratio": _ratio(fast["steps_per_s"], naive["steps_per_s"]),
        "steps_per_s": fast["steps_per_s"],
        "end_to_end": {
            "method": "verify_run: store load, recompute, proofs, chain (no Temporal history)",
            "seconds": round(e2e_s, 4),
            "steps_per_s": round(n / e2e_s),
            "ok": report.ok,
        },
        "target": {"steps_per_s_min": target},
        "met": fast["ok"] and fast["steps_per_s"] >= target,
    }


# ---- 5. webhook ---------------------------------------------------------------------------------


async def _bench_webhook(world: _World, cfg: BenchConfig) -> dict[str, Any]:
    import httpx
    import uvicorn
    from standardwebhooks.webhooks import Webhook
    from temporalio.service import RPCError

    from ledgerflow.api.webhooks import create_app
    from ledgerflow.dev.stack import free_port
    from ledgerflow.flow import registry
    from ledgerflow.sdk.client import LedgerflowClient

    # Runs go to a task queue that no worker polls: this section measures starting, nothing else.
    settings = world.settings.model_copy(
        update={"task_queue": f"bench-webhook-{uuid.uuid4().hex[:8]}"}
    )
    known = registry.public()
    workflow_type = "ProcurementWorkflow" if "ProcurementWorkflow" in known else min(known)
    lf = LedgerflowClient(world.client, settings, world.runtime)
    app = create_app(settings, lf)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    serving = asyncio.create_task(server.serve())
    secret = settings.webhook_secret.get_secret_value()
    signer = Webhook(secret)
    tag = uuid.uuid4().hex[:8]
    hook: list[float] = []
    sdk: list[float] = []
    health: list[float] = []
    describe: list[float] = []
    refused: list[str] = []
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.01)
        world.progress(
            f"webhook: {cfg.webhooks} signed webhooks vs {cfg.webhooks} SDK starts "
            f"({workflow_type}, real HTTP on :{port})"
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

            async def via_webhook(i: int) -> float:
                body = json.dumps({}).encode()
                msg_id = f"bench-{tag}-{i}"
                now = datetime.now(UTC)
                headers = {
                    "content-type": "application/json",
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(int(now.timestamp())),
                    "webhook-signature": signer.sign(msg_id, now, body.decode()),
                }
                t0 = time.perf_counter()
                resp = await http.post(f"/webhooks/{workflow_type}", content=body, headers=headers)
                dt = time.perf_counter() - t0
                if resp.status_code != 202 or not resp.json().get("run_id"):
                    refused.append(f"{resp.status_code}: {resp.text[:200]}")
                return dt

            async def via_sdk(i: int) -> float:
                t0 = time.perf_counter()
                handle = await lf.start(
                    workflow_type,
                    {"trigger": f"sdk:bench-{tag}-{i}"},
                    workflow_id=f"bench-sdk-{tag}-{i}",
                )
                dt = time.perf_counter() - t0
                if not handle.result_run_id:
                    refused.append("sdk start returned no run id")
                return dt

            for i in range(cfg.webhook_warmup):
                await via_webhook(-1 - i)
                await via_sdk(-1 - i)
            refused.clear()

            async def via_health() -> float:
                t0 = time.perf_counter()
                await http.get("/health")
                return time.perf_counter() - t0

            async def describe_missing(i: int) -> float:
                # What the webhook path asks Temporal before starting (an unknown id here).
                t0 = time.perf_counter()
                with contextlib.suppress(RPCError):
                    await world.client.get_workflow_handle(f"bench-none-{tag}-{i}").describe()
                return time.perf_counter() - t0

            for i in range(cfg.webhooks):  # interleaved, so drift hits all alike
                hook.append(await via_webhook(i))
                sdk.append(await via_sdk(i))
                health.append(await via_health())
                describe.append(await describe_missing(i))
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    webhook_stats = _latency(hook)
    sdk_stats = _latency(sdk)
    ratio = _ratio(webhook_stats["p50_ms"], sdk_stats["p50_ms"])
    target = TARGETS["webhook_vs_sdk_p50_max"]
    return {
        "transport": "real HTTP: uvicorn serving the FastAPI app on a free port in this process, "
        "httpx client with keep-alive",
        "workflow_type": workflow_type,
        "requests": cfg.webhooks,
        "webhook": {
            "method": "POST /webhooks/{type}, Standard Webhooks signature, until 202",
            **webhook_stats,
            "refused": len(refused),
            "first_refusal": refused[0] if refused else None,
        },
        "baseline": {"method": "LedgerflowClient.start (SDK) until it returns", **sdk_stats},
        "ratio": ratio,
        "ratio_p95": _ratio(webhook_stats["p95_ms"], sdk_stats["p95_ms"]),
        "components_p50_ms": {
            "http_round_trip": _latency(health)["p50_ms"],
            "describe_before_start": _latency(describe)["p50_ms"],
            "start": sdk_stats["p50_ms"],
            "rest": round(
                webhook_stats["p50_ms"]
                - sdk_stats["p50_ms"]
                - _latency(health)["p50_ms"]
                - _latency(describe)["p50_ms"],
                2,
            ),
            "note": "rest = signature check, body parsing, two store writes (claim, run id)",
        },
        "target": {"p50_ratio_max": target},
        "met": ratio is not None and ratio <= target and not refused,
    }


# ---- the whole run ------------------------------------------------------------------------------

_RUNNERS: dict[Section, Callable[[_World, BenchConfig], Awaitable[dict[str, Any]]]] = {
    "throughput": _bench_throughput,
    "gas": _bench_gas,
    "signer": _bench_signer,
    "verification": _bench_verification,
    "webhook": _bench_webhook,
}


async def run_bench(
    config: BenchConfig | None = None, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Run the bench on a stack of its own; returns the report (JSON-serialisable).

    Every section of ``config.sections`` becomes a key of the report holding its figures, a
    ``baseline``, a ``ratio``, its ``target`` and whether it was ``met``.
    """
    cfg = config or BenchConfig()
    say: Progress = progress or (lambda _msg: None)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "ledgerflow_bench": 1,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "loadavg_start": _loadavg()},
        "config": cfg.model_dump(),
    }
    with tempfile.TemporaryDirectory(prefix="ledgerflow-bench-") as tmp:
        world = _World(Path(tmp), say)
        try:
            await world.start()
            for section in SECTIONS:
                if section in cfg.sections:
                    t0 = time.perf_counter()
                    report[section] = await _RUNNERS[section](world, cfg)
                    report[section]["section_seconds"] = round(time.perf_counter() - t0, 2)
        finally:
            world.stop()
    report["summary"] = _summary(report)
    report["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    report["machine"]["loadavg_end"] = _loadavg()
    return report


def _summary(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if "throughput" in report:
        t = report["throughput"]
        rows.append(
            {
                "section": "throughput",
                "measured": f"batched/none {t['ratios']['batched_vs_none']}, "
                f"per-step/none {t['ratios']['per_step_vs_none']}",
                "target": "batched/none >= 0.90",
                "met": t["met_detail"]["throughput"],
            }
        )
        rows.append(
            {
                "section": "history events/step",
                "measured": f"batched/none {t['ratios']['events_per_step_batched_vs_none']}",
                "target": "<= 1.10",
                "met": t["met_detail"]["events_per_step"],
            }
        )
    if "gas" in report:
        g = report["gas"]
        rows.append(
            {
                "section": "gas",
                "measured": f"batch {g['largest_batch']}: 1/{g['per_step_over_batched']} "
                "of per-step",
                "target": "<= 1/500",
                "met": g["met"],
            }
        )
    if "signer" in report:
        s = report["signer"]
        two = s.get("two_processes") or {}
        shared = (
            f"skipped ({two['skipped']})"
            if two.get("skipped")
            else f"ratio {two.get('ratio')}, nonce errors {two.get('nonce_errors')}, "
            f"stuck {two.get('stuck')}"
        )
        rows.append(
            {
                "section": "signer",
                "measured": f"one process: ratio {s['ratio']}, nonce errors {s['nonce_errors']}, "
                f"stuck {s['stuck']}; two processes on PostgreSQL: {shared}",
                "target": ">= 0.8, 0, 0 (both)",
                "met": s["met"],
            }
        )
    if "verification" in report:
        v = report["verification"]
        rows.append(
            {
                "section": "verification",
                "measured": f"{v['steps_per_s']:,} steps/s",
                "target": ">= 50,000 steps/s",
                "met": v["met"],
            }
        )
    if "webhook" in report:
        w = report["webhook"]
        rows.append(
            {
                "section": "webhook",
                "measured": f"p50 ratio {w['ratio']} (p95 {w['ratio_p95']})",
                "target": "p50 ratio <= 1.5",
                "met": w["met"],
            }
        )
    return rows


# ---- rendering ----------------------------------------------------------------------------------


def render_report(report: dict[str, Any], console: Any) -> None:
    """Rich tables of a report, for people."""
    from rich.table import Table

    m = report["machine"]
    console.print(
        f"[bold]ledgerflow bench[/bold]: {m['nproc']} cores, {m['cpu']}, {m['ram_gib']} GiB RAM, "
        f"Python {m['python']}; {report['elapsed_seconds']} s"
    )
    if "throughput" in report:
        t = report["throughput"]
        table = Table(
            title=f"1. Throughput: {t['concurrency']} concurrent runs x {t['steps']} steps, "
            f"{t['rounds']} round(s)"
        )
        for col in ("mode", "runs/s", "vs none", "p50 ms", "p95 ms", "events/step", "vs none"):
            table.add_column(col, justify="left" if col == "mode" else "right")
        base = t["modes"]["none"]
        for mode, row in t["modes"].items():
            table.add_row(
                mode,
                f"{row['runs_per_s']:.1f}",
                f"{row['runs_per_s'] / base['runs_per_s']:.2f}" if base["runs_per_s"] else "",
                f"{row['p50_ms']:.0f}",
                f"{row['p95_ms']:.0f}",
                f"{row['history_events_per_step']:.2f}",
                f"{row['history_events_per_step'] / base['history_events_per_step']:.3f}"
                if base["history_events_per_step"]
                else "",
            )
        console.print(table)
    if "gas" in report:
        g = report["gas"]
        table = Table(title="2. Gas per checkpointed step")
        for col in ("mode", "steps/tx", "gas/tx", "gas/step", "vs per-step"):
            table.add_column(col, justify="left" if col == "mode" else "right")
        for row in g["rows"]:
            table.add_row(
                row["mode"],
                str(row["steps_per_tx"]),
                f"{row['gas_per_tx']:,.0f}",
                f"{row['gas_per_step']:,.1f}",
                f"{row['vs_per_step']:.5f}" if row["vs_per_step"] is not None else "",
            )
        console.print(table)
    if "signer" in report:
        s = report["signer"]
        table = Table(
            title=f"3. Signer: {s['signer']['txs']} x {s['call']}, "
            f"{s['signer'].get('concurrency', s['signer']['txs'])} at a time"
        )
        for col in ("sender", "tx/s", "seconds", "mined ok", "nonce errors", "stuck"):
            table.add_column(col, justify="left" if col == "sender" else "right")
        b, sg = s["baseline"], s["signer"]
        table.add_row(
            "pre-signed, in order", f"{b['tx_per_s']:.1f}", f"{b['seconds']:.2f}",
            str(b["mined_ok"]), "-", str(b["stuck"]),
        )  # fmt: skip
        table.add_row(
            "Signer, concurrent", f"{sg['tx_per_s']:.1f}", f"{sg['seconds']:.2f}",
            str(sg["mined_ok"]), str(sg["nonce_errors"]), str(sg["stuck"]),
        )  # fmt: skip
        two = s.get("two_processes") or {}
        if two.get("skipped"):
            table.add_row("2 processes, one key, PostgreSQL", "skipped", "", "", "", "")
        elif two:
            tb, ts = two["baseline"], two["signer"]
            table.add_row(
                "pre-signed, in order (PG rounds)", f"{tb['tx_per_s']:.1f}",
                f"{tb['seconds']:.2f}", str(tb["mined_ok"]), "-", str(tb["stuck"]),
            )  # fmt: skip
            table.add_row(
                f"{two['processes']} processes, one key, PostgreSQL", f"{ts['tx_per_s']:.1f}",
                f"{ts['seconds']:.2f}", str(ts["mined_ok"]), str(ts["nonce_errors"]),
                str(ts["stuck"]),
            )  # fmt: skip
        console.print(table)
    if "verification" in report:
        v = report["verification"]
        table = Table(title=f"4. Verification: {v['steps']:,} steps in {v['roots']} roots")
        for col in ("method", "steps/s", "chain s", "proofs s", "roots s"):
            table.add_column(col, justify="left" if col == "method" else "right")
        for name, row in (("MultiVerifier", v["fast"]), ("proof per step", v["baseline"])):
            table.add_row(
                name,
                f"{row['steps_per_s']:,}",
                f"{row['chain_recompute_s']:.3f}",
                f"{row['merkle_proofs_s']:.3f}",
                f"{row['root_checks_s']:.3f}",
            )
        e = v["end_to_end"]
        table.add_row("verify_run (from store)", f"{e['steps_per_s']:,}", "", "", "")
        console.print(table)
    if "webhook" in report:
        w = report["webhook"]
        table = Table(title=f"5. Webhook → run started ({w['requests']} each, real HTTP)")
        for col in ("path", "p50 ms", "p95 ms", "mean ms"):
            table.add_column(col, justify="left" if col == "path" else "right")
        for name, row in (("signed webhook", w["webhook"]), ("SDK start", w["baseline"])):
            table.add_row(
                name, f"{row['p50_ms']:.2f}", f"{row['p95_ms']:.2f}", f"{row['mean_ms']:.2f}"
            )
        console.print(table)
    table = Table(title="Targets")
    for col in ("section", "measured", "target", "met"):
        table.add_column(col)
    for row in report["summary"]:
        mark = "[green]yes[/green]" if row["met"] else "[red]no[/red]"
        table.add_row(row["section"], row["measured"], row["target"], mark)
    console.print(table)


def config_from_options(*, quick: bool = False, **options: Any) -> BenchConfig:
    """A config from command-line options (``None`` = default; lists as comma-separated text).

    Raises:
        ConfigError: an option is out of range or malformed.
    """
    from pydantic import ValidationError

    from ledgerflow.errors import ConfigError

    given: dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue
        if name in ("sections", "gas_batch_sizes") and isinstance(value, str):
            value = [x.strip() for x in value.split(",") if x.strip()]
        given[name] = value
    try:
        return BenchConfig.quick(**given) if quick else BenchConfig(**given)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid bench options: {details}") from None


async def run_bench_cli(config: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """:func:`run_bench` for the command line: SIGINT/SIGTERM stop it cleanly, so the services
    it started (in their own sessions) are stopped too.

    Raises:
        LedgerflowError: the bench was interrupted.
    """
    import signal

    from ledgerflow.errors import LedgerflowError

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(run_bench(config, progress=progress))
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        raise LedgerflowError("bench interrupted; its services were stopped") from None
    finally:
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def progress_printer(stream: Any = sys.stderr) -> Progress:
    """A progress callback printing timestamped lines to ``stream``."""
    start = time.perf_counter()

    def say(msg: str) -> None:
        stream.write(f"[{time.perf_counter() - start:6.1f}s] {msg}\n")
        stream.flush()

    return say
