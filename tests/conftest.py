"""Shared fixtures: real anvil, a real Temporal dev server and the real PostgreSQL server.

Every service is started on free ports, so the suite also runs while `make run` is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _pytest._code import code as _pytest_code
from temporalio.client import Client

from ledgerflow.chain.deploy import (
    Deployment,
    deploy_all,
    load_deployment,
    save_deployment,
    seed_demo,
)
from ledgerflow.checkpoint.anchorer import Anchorer
from ledgerflow.dev.stack import free_port, start_anvil, start_temporal
from ledgerflow.runtime import Runtime
from ledgerflow.sdk.client import LedgerflowClient
from ledgerflow.settings import ANVIL_DEFAULT_KEYS, Settings
from ledgerflow.worker.runner import build_worker, ensure_search_attributes
from tests.support.chain import ChainAdmin

_getsource = _pytest_code.TracebackEntry.getsource


def _source_or_none(self: _pytest_code.TracebackEntry, astcache: Any = None) -> Any:
    """CPython 3.11 keeps the ast module's recursion counter per interpreter, not per thread
    (gh-106905): pytest parsing a failing test's source while a worker thread parses too raises
    SystemError, an INTERNALERROR that ends the session and hides every later result. Show the
    failure without its source instead."""
    try:
        return _getsource(self, astcache)
    except SystemError:
        return None


_pytest_code.TracebackEntry.getsource = _source_or_none  # type: ignore[method-assign]

PG_URL = os.environ.get("LEDGERFLOW_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")


@dataclass
class Anvil:
    rpc_url: str
    chain_id: int
    port: int


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def anvil(logs_dir: Path) -> Iterator[Anvil]:
    """One anvil for the session; tests deploy their own contracts on it."""
    port = free_port()
    proc = start_anvil(port, log_path=logs_dir / "anvil.log")
    try:
        yield Anvil(rpc_url=f"http://127.0.0.1:{port}", chain_id=31337, port=port)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def temporal_address(logs_dir: Path) -> Iterator[str]:
    port = free_port()
    ui_port = free_port()
    proc = start_temporal(port, ui_port=ui_port, log_path=logs_dir / "temporal.log")
    os.environ["LEDGERFLOW_TEST_UI_URL"] = f"http://127.0.0.1:{ui_port}"
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture(scope="session")
async def temporal_client(temporal_address: str) -> AsyncIterator[Client]:
    from ledgerflow.temporal import connect

    client = await connect(temporal_address, "default")
    yield client


@pytest.fixture(scope="session")
def pg_url() -> str:
    return PG_URL


# ---- the whole stack: contracts deployed, a worker with the anchorer, an SDK client -------------

DEV = ANVIL_DEFAULT_KEYS


@dataclass
class Stack:
    settings: Settings
    runtime: Runtime
    client: LedgerflowClient
    deployment: Deployment


@pytest.fixture(scope="session")
def deployment_file(anvil: Anvil, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = deploy_all(anvil.rpc_url, DEV[0], agent_key=DEV[1], approver_key=DEV[2])
    seed_demo(anvil.rpc_url, d, DEV[0], DEV[1])
    # Many tests pay: give the agent room (the demo's own limits are tested in test_contracts).
    admin = ChainAdmin(anvil.rpc_url, d)
    admin.set_agent_limits(cap_tusd=5_000, budget_tusd=10_000_000)
    admin.fund_vault(d.agent, 5_000_000)
    # A large shortfall of WIDGET-42 for the session (tests name their quantity; a run without
    # one would reserve and buy all of it).
    admin.new_sku("WIDGET-42", stock=0, threshold=5_000, target=5_000)
    path = tmp_path_factory.mktemp("deploy") / "deployments.json"
    save_deployment(path, d)
    return path


@pytest.fixture(scope="session")
def stack_settings(
    anvil: Anvil,
    temporal_address: str,
    deployment_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    home = tmp_path_factory.mktemp("ledgerflow-home")
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        home=home,
        rpc_url=anvil.rpc_url,
        temporal_address=temporal_address,
        task_queue=f"ledgerflow-test-{uuid.uuid4().hex[:8]}",
        database_url=f"sqlite:///{home}/store.db",
        deployments_file=deployment_file,
        anchor_batch_size=64,
        anchor_max_wait_seconds=0.2,
        llm_provider="offline",
    )


@pytest.fixture(scope="session")
async def stack(stack_settings: Settings, temporal_client: Client) -> AsyncIterator[Stack]:
    """A worker (workflows, activities, anchorer) on its own task queue for the session."""
    runtime = Runtime(stack_settings)
    runtime.store.migrate()
    await ensure_search_attributes(temporal_client, "default")
    worker = build_worker(temporal_client, runtime, task_queue=stack_settings.task_queue)
    stop = asyncio.Event()
    anchorer = Anchorer(
        runtime,
        batch_size=stack_settings.anchor_batch_size,
        max_wait=stack_settings.anchor_max_wait_seconds,
    )
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(anchorer.run(stop))]
    client = LedgerflowClient(temporal_client, stack_settings, runtime)
    try:
        yield Stack(
            stack_settings, runtime, client, load_deployment(stack_settings.deployments_path)
        )
    finally:
        stop.set()
        await worker.shutdown()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


# ---- leaving the test process -------------------------------------------------------------------

_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # The summary is printed and every fixture (and child process) is torn down. Leave without
    # interpreter finalization, which the Temporal SDK's native runtime can abort
    # (PyGILState_Release, sdk-python#300): a green run must not end as a crash.
    if _EXIT_STATUS and os.environ.get("LEDGERFLOW_TEST_NORMAL_EXIT") != "1":
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
