"""The operator's view of a real worker process: Prometheus metrics and JSON logs.

``ledgerflow worker`` runs as its own process (its own anvil, contracts, store and task queue on the
session's Temporal dev server) with ``LEDGERFLOW_LOG_FORMAT=json``. Two real runs go through it: a
vendor payment that completes and one that the chain refuses (a warning with a traceback from
temporalio, then the saga). Then its ``/metrics`` is scraped and its output read: Temporal's SDK
series and ledgerflow's own are there with the values these runs must have produced, every stderr
line is one JSON object and stdout is empty.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from temporalio.client import Client

from ledgerflow.chain.deploy import deploy_all, save_deployment, seed_demo
from ledgerflow.dev.stack import free_port, start_anvil
from ledgerflow.sdk.client import LedgerflowClient
from ledgerflow.settings import ANVIL_DEFAULT_KEYS as DEV
from ledgerflow.settings import Settings
from tests.support.chain import ChainAdmin

TUSD = 1_000_000
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text exposition: (name, labels, value)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = dict(_LABEL.findall(m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def value(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    return sum(
        v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items())
    )


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    settings: Settings
    metrics_url: str
    out: Path
    err: Path

    def stderr_lines(self) -> list[str]:
        return [line for line in self.err.read_text().splitlines() if line.strip()]


@pytest.fixture
def worker_process(temporal_address: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    """``ledgerflow worker`` on a private anvil with its own deployment, store and task queue."""
    anvil_port = free_port()
    anvil = start_anvil(anvil_port, log_path=tmp_path / "anvil.log")
    rpc = f"http://127.0.0.1:{anvil_port}"
    d = deploy_all(rpc, DEV[0], agent_key=DEV[1], approver_key=DEV[2])
    seed_demo(rpc, d, DEV[0], DEV[1])
    ChainAdmin(rpc, d).set_agent_limits(cap_tusd=5_000, budget_tusd=1_000_000)
    deployments = tmp_path / "deployments.json"
    save_deployment(deployments, d)
    metrics_port = free_port()
    env_settings = {
        "LEDGERFLOW_HOME": str(tmp_path / "home"),
        "LEDGERFLOW_TEMPORAL_ADDRESS": temporal_address,
        "LEDGERFLOW_TASK_QUEUE": f"observability-{uuid.uuid4().hex[:8]}",
        "LEDGERFLOW_RPC_URL": rpc,
        "LEDGERFLOW_DEPLOYMENTS_FILE": str(deployments),
        "LEDGERFLOW_ANCHOR_MAX_WAIT_SECONDS": "0.2",
        "LEDGERFLOW_METRICS_PORT": str(metrics_port),
        "LEDGERFLOW_METRICS_SAMPLE_SECONDS": "0.2",
        "LEDGERFLOW_LOG_FORMAT": "json",
        # The core's INFO lines are what proves its logging is forwarded (WARN may be silent).
        "LEDGERFLOW_TEMPORAL_CORE_LOG_LEVEL": "INFO",
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LEDGERFLOW_", "TEMPORAL_"))},
        **env_settings,
    }
    out, err = tmp_path / "worker.out", tmp_path / "worker.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ledgerflow.cli", "worker"],
            env=env,
            cwd=tmp_path,
            stdout=o,
            stderr=e,
            stdin=subprocess.DEVNULL,
        )
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        home=tmp_path / "home",
        temporal_address=temporal_address,
        task_queue=env_settings["LEDGERFLOW_TASK_QUEUE"],
        rpc_url=rpc,
        deployments_file=deployments,
    )
    try:
        yield WorkerProcess(proc, settings, f"http://127.0.0.1:{metrics_port}/metrics", out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        anvil.stop()


def _metrics(url: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            resp = httpx.get(url, timeout=2)
            if resp.status_code == 200:
                return resp.text
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing answered {url}")
        time.sleep(0.2)


@pytest.mark.slow
async def test_a_worker_process_serves_metrics_and_logs_json_lines(
    worker_process: WorkerProcess, temporal_client: Client
) -> None:
    w = worker_process
    await asyncio.to_thread(_metrics, w.metrics_url)  # the endpoint is up before the first run
    lf = LedgerflowClient(temporal_client, w.settings)
    # Not allow-listed: Escrow.open reverts; nothing was paid, so the run is rejected (no refund).
    stranger = Account.from_key("0x" + "77" * 32).address
    paid = await lf.start("VendorPaymentWorkflow", {"max_amount": 20 * TUSD})
    refused = await lf.start("VendorPaymentWorkflow", {"vendor": stranger, "max_amount": 7 * TUSD})
    ok = await asyncio.wait_for(lf.result(paid.id), 120)
    bad = await asyncio.wait_for(lf.result(refused.id), 120)
    assert ok.outcome == "completed" and ok.amount == 20 * TUSD
    assert bad.outcome == "rejected" and "PolicyCounterpartyNotAllowed" in bad.reason

    # The sampler sets the gauges every 0.2 s; a scrape a moment later sees this state.
    await asyncio.sleep(1.0)
    samples = scrape(await asyncio.to_thread(_metrics, w.metrics_url))
    names = {n for n, _, _ in samples}

    # Temporal's own SDK series, through the runtime's Prometheus exporter.
    wf = {"workflow_type": "VendorPaymentWorkflow"}
    assert value(samples, "temporal_workflow_completed", **wf) == 2
    assert value(
        samples, "temporal_activity_execution_latency_count", activity_type="contract.call"
    )
    assert "temporal_workflow_task_execution_latency_bucket" in names

    # ledgerflow's: runs by outcome, payments and amounts, compensations.
    assert value(samples, "ledgerflow_runs_total", outcome="completed", **wf) == 1
    assert value(samples, "ledgerflow_runs_total", outcome="rejected", **wf) == 1
    assert value(samples, "ledgerflow_payments_total", outcome="escrowed") == 1
    assert value(samples, "ledgerflow_payments_total", outcome="released") == 1
    assert value(samples, "ledgerflow_payments_total", outcome="refunded") == 0
    assert value(samples, "ledgerflow_payment_amount_total", outcome="released") == 20 * TUSD
    # The refused payment's refund was dropped, not run.
    assert value(samples, "ledgerflow_compensations_total", step="Escrow.refund", **wf) == 0
    # Anchoring: every step stored by the two runs was anchored, each lag observed once.
    store_steps = 0
    for wf_id in (paid.id, refused.id):
        run = await asyncio.to_thread(lf.runtime.store.get_run, wf_id)
        store_steps += run.steps
    assert value(samples, "ledgerflow_anchors_total", mode="batched") >= 1
    assert value(samples, "ledgerflow_anchor_leaves_sum", mode="batched") == store_steps
    assert value(samples, "ledgerflow_anchor_lag_seconds_count", mode="batched") == store_steps
    assert value(samples, "ledgerflow_anchor_lag_seconds_sum", mode="batched") > 0
    assert value(samples, "ledgerflow_anchor_pending_leaves") == 0
    assert "ledgerflow_anchor_oldest_pending_seconds" in names
    # Signers: everything the agent and the orchestrator signed is mined.
    lags = {ls["role"]: v for n, ls, v in samples if n == "ledgerflow_signer_nonce_lag"}
    assert lags.get("agent") == 0 and lags.get("orchestrator") == 0, lags
    # The LLM decisions (the offline rules, labelled so): one per run, no tokens.
    llm = {"provider": "offline", "result": "ok"}
    assert value(samples, "ledgerflow_llm_calls_total", **llm) == 2
    assert value(samples, "ledgerflow_llm_latency_seconds_count", provider="offline") == 2
    assert value(samples, "ledgerflow_llm_tokens_total") == 0

    # A clean stop, then the process's output: stdout empty, every stderr line one JSON object.
    w.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(w.proc.wait, 30) == 0
    assert w.out.read_text() == ""
    lines = w.stderr_lines()
    records: list[dict[str, Any]] = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"a stderr line is not JSON: {line!r}") from None
        assert isinstance(record, dict) and "event" in record and "level" in record, line
        records.append(record)
    # temporalio's warning about the refused step, its traceback one field of one line.
    failed = [
        r for r in records if r.get("logger") == "temporalio.activity" and r["level"] == "warning"
    ]
    assert failed and any("ContractRevert" in r.get("exception", "") for r in failed), failed
    assert any("Traceback" in r.get("exception", "") for r in failed)
    # The Rust core's own lines, forwarded into logging (ANSI-free, JSON like the rest).
    core = [r for r in records if str(r.get("logger", "")).startswith("temporalio.core")]
    assert core, "no line of the SDK core was forwarded"
    assert not any("\x1b[" in line for line in lines)
    assert any(r["event"] == "worker started" for r in records)
