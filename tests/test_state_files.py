"""The embedded stack's state files are readable by their owner only.

``ledgerflow up`` (as ``make run`` starts it) in a fresh directory: the state directory is 0700
and every file in it (the SQLite store and its -wal/-shm, the Temporal dev server's database,
anvil's state, the deployment file, the logs) has no group or other permission bits, even when
the invoking shell's umask is the usual 022.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledgerflow.dev.stack import free_port
from ledgerflow.store import Store
from tests.support.isolated import clean_env

pytestmark = pytest.mark.slow


def _modes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
        for p in [root, *root.rglob("*")]
        if not p.is_symlink()
    }


def test_up_creates_private_state_files(tmp_path: Path) -> None:
    env = clean_env(
        {
            "LEDGERFLOW_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
            "LEDGERFLOW_TEMPORAL_UI_PORT": str(free_port()),
            "LEDGERFLOW_RPC_URL": f"http://127.0.0.1:{free_port()}",
            "LEDGERFLOW_API_PORT": str(free_port()),
            "LEDGERFLOW_METRICS_PORT": str(free_port()),
            "LEDGERFLOW_API_METRICS_PORT": str(free_port()),
            "LEDGERFLOW_LOG_LEVEL": "WARNING",
        }
    )
    home = tmp_path / ".ledgerflow"
    wanted = ("temporal.db", "deployments.json", "ledgerflow.db")
    old = os.umask(0o022)  # what a login shell usually has
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ledgerflow.cli", "up", "--no-demo"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    finally:
        os.umask(old)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if all((home / name).exists() for name in wanted):
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert all((home / name).exists() for name in wanted), sorted(os.listdir(home))
        time.sleep(6)  # anvil dumps its state every 5 s
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0
    modes = _modes(home)
    assert "anvil-state.json" in modes, sorted(modes)
    assert modes["."] == 0o700
    loose = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert not loose, f"readable by others: {loose}"


def test_a_sqlite_store_is_created_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = Store(f"sqlite:///{tmp_path}/state/store.db")
        store.migrate()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    for name in os.listdir(tmp_path / "state"):  # store.db and its -wal / -shm
        assert stat.S_IMODE((tmp_path / "state" / name).stat().st_mode) == 0o600, name
    store.engine.dispose()
