"""Shared fixtures: real anvil, a real Temporal dev server and the real PostgreSQL server.

Every service is started on free ports, so the suite also runs while `make run` is up.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from ledgerflow.stack import free_port, start_anvil, start_temporal

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
    proc = start_temporal(port, log_path=logs_dir / "temporal.log")
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
