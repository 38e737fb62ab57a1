"""The embedded stack's process handling: clear errors instead of tracebacks."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from ledgerflow.dev.stack import free_port, start_anvil, start_temporal
from ledgerflow.errors import StackError


@pytest.fixture
def taken_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


def test_anvil_on_a_taken_port_names_the_port(taken_port: int) -> None:
    with pytest.raises(StackError, match=f"port {taken_port} is already in use"):
        start_anvil(taken_port)


def test_temporal_on_a_taken_port_names_the_port(taken_port: int) -> None:
    with pytest.raises(StackError, match=f"port {taken_port} is already in use"):
        start_temporal(taken_port)


def test_up_with_a_taken_port_is_one_clear_line(taken_port: int, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {
        "PATH": "/usr/bin:/bin",
        "LEDGERFLOW_HOME": str(tmp_path),
        "LEDGERFLOW_TEMPORAL_ADDRESS": f"127.0.0.1:{taken_port}",
        "LEDGERFLOW_TEMPORAL_UI_PORT": str(free_port()),
        "LEDGERFLOW_RPC_URL": f"http://127.0.0.1:{free_port()}",
        "LEDGERFLOW_API_PORT": str(free_port()),
        "LEDGERFLOW_METRICS_PORT": str(free_port()),
        "LEDGERFLOW_API_METRICS_PORT": str(free_port()),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "ledgerflow.cli", "up", "--no-demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert f"port {taken_port} is already in use" in proc.stderr
    assert "Traceback" not in proc.stderr
