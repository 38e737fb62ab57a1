"""``ledgerflow up`` supervises what it starts (issue 17), run as a real process on free ports.

Each test starts ``ledgerflow up`` (real Temporal dev server, real anvil, real worker and API child
processes) with its own state directory, breaks something the way it breaks in real life, and checks
what ``up`` says, how it exits, and that nothing it started is left running or holding a port.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from ledgerflow.dev.lock import UpLock, stop_leftovers
from ledgerflow.dev.stack import ManagedProcess, free_port, port_holders, start_temporal
from ledgerflow.dev.up import EXIT_SERVICE_DIED, STOP_TIMEOUT, child_env, outcome_line
from ledgerflow.errors import StackError
from ledgerflow.settings import Settings
from tests.support.readme import first_session_commands, run_first_session

READY_TIMEOUT = 120.0


def _clean_environ() -> dict[str, str]:
    """The test runner's environment without settings that would point ``up`` elsewhere."""
    drop = ("LEDGERFLOW_", "TEMPORAL_", "OPENAI_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


@dataclass
class UpRun:
    """One ``ledgerflow up`` process and what it printed."""

    proc: subprocess.Popen[bytes]
    home: Path
    out: Path
    err: Path

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stdout:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"up exited ({self.proc.returncode}) before printing {text!r}:\n"
                    f"{self.stdout}\n{self.stderr[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout}s:\n{self.stdout}")
            time.sleep(0.1)

    def children(self) -> dict[str, int]:
        doc = json.loads((self.home / "up.lock").read_text())
        return {c["name"]: c["pid"] for c in doc["children"]}

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)


@dataclass
class EmbeddedStack:
    """The settings of one embedded stack on free ports, and a way to run ``up`` on it."""

    cwd: Path
    home: Path
    ports: dict[str, int]

    @property
    def env(self) -> dict[str, str]:
        return {
            **_clean_environ(),
            "LEDGERFLOW_HOME": str(self.home),
            "LEDGERFLOW_TEMPORAL_ADDRESS": f"127.0.0.1:{self.ports['temporal']}",
            "LEDGERFLOW_TEMPORAL_UI_PORT": str(self.ports["ui"]),
            "LEDGERFLOW_RPC_URL": f"http://127.0.0.1:{self.ports['anvil']}",
            "LEDGERFLOW_API_PORT": str(self.ports["api"]),
            "LEDGERFLOW_METRICS_PORT": str(self.ports["metrics"]),
            "LEDGERFLOW_API_METRICS_PORT": str(self.ports["api_metrics"]),
            "LEDGERFLOW_DATABASE_URL": f"sqlite:///{self.home}/ledgerflow.db",
            "LEDGERFLOW_LOG_FORMAT": "json",
        }

    def up(self, *args: str, name: str = "up") -> UpRun:
        out, err = self.cwd / f"{name}.out", self.cwd / f"{name}.err"
        # Output goes to files, not pipes: a child that outlived ``up`` would keep a pipe open.
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ledgerflow.cli", "up", *args],
                env=self.env,
                cwd=self.cwd,
                stdout=o,
                stderr=e,
                stdin=subprocess.DEVNULL,
            )
        return UpRun(proc, self.home, out, err)

    def run_up(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ledgerflow.cli", "up", *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def holders(self) -> dict[str, list[str]]:
        """Who listens on the stack's ports (should be nobody once ``up`` is gone)."""
        found = {name: [h.describe() for h in port_holders(p)] for name, p in self.ports.items()}
        return {k: v for k, v in found.items() if v}


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedStack]:
    s = EmbeddedStack(
        cwd=tmp_path,
        home=tmp_path / "home",
        ports={
            name: free_port()
            for name in ("temporal", "ui", "anvil", "api", "metrics", "api_metrics")
        },
    )
    yield s
    # Whatever a failing test left behind: stop the processes the lock file lists.
    lock = s.home / "up.lock"
    if lock.exists() and lock.read_text().strip():
        from ledgerflow.dev.lock import ChildRecord

        rows = json.loads(lock.read_text()).get("children", [])
        stop_leftovers(
            [ChildRecord(r["name"], r["pid"], r["started_at"], tuple(r["argv"])) for r in rows]
        )


def _gone(pids: list[int], timeout: float) -> list[int]:
    """The pids in ``pids`` still running after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


LISTENER = textwrap.dedent(
    """
    import socket, sys, time
    s = socket.socket()
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen()
    print("listening", flush=True)
    time.sleep(120)
    """
)


Foreign = Callable[[int], "subprocess.Popen[str]"]


@pytest.fixture
def foreign_listener() -> Iterator[Foreign]:
    """A factory of processes that are not ours, each listening on the port it is given."""
    procs: list[subprocess.Popen[str]] = []

    def start(port: int) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-c", LISTENER, str(port)], stdout=subprocess.PIPE, text=True
        )
        assert p.stdout is not None and p.stdout.readline().strip() == "listening"
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


# ---- 1. readiness means "my child is up" -------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "setting"),
    [
        ("temporal", "LEDGERFLOW_TEMPORAL_ADDRESS"),
        ("ui", "LEDGERFLOW_TEMPORAL_UI_PORT"),
        ("anvil", "LEDGERFLOW_RPC_URL"),
        ("api", "LEDGERFLOW_API_PORT"),
        ("metrics", "LEDGERFLOW_METRICS_PORT"),
    ],
)
def test_a_port_held_by_a_foreign_process_is_one_line_naming_it(
    embedded: EmbeddedStack, foreign_listener: Foreign, service: str, setting: str
) -> None:
    port = embedded.ports[service]
    holder = foreign_listener(port)
    done = embedded.run_up("--no-demo")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: port {port} is already in use by pid {holder.pid} (python")
    assert setting in lines[0]
    # Nothing was started: no child on record, no service log, the holder untouched.
    assert json.loads((embedded.home / "up.lock").read_text() or "{}").get("children", []) == []
    assert not (embedded.home / "temporal.log").exists()
    assert holder.poll() is None


def test_an_old_temporal_still_answering_is_not_taken_for_ours(
    embedded: EmbeddedStack, tmp_path: Path
) -> None:
    """The issue's case: a Temporal that is not this ``up``'s answers on the port when it starts."""
    port = embedded.ports["temporal"]
    old = start_temporal(port, log_path=tmp_path / "old-temporal.log")
    try:
        done = embedded.run_up("--no-demo")
        assert done.returncode == 2, done.stderr
        line = done.stderr.strip()
        assert "\n" not in line
        assert f"port {port} is already in use by pid {old.pid} (temporal server start-dev" in line
        assert old.alive  # not ours: left alone
    finally:
        old.stop()


def test_a_child_that_does_not_listen_itself_is_not_ready(
    foreign_listener: Foreign, tmp_path: Path
) -> None:
    """The port answering is not enough: the listener must be the process we started."""
    port = free_port()
    holder = foreign_listener(port)
    child = ManagedProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"]).start()
    try:
        assert child.check_listening([port]) is False
        with pytest.raises(StackError, match=f"port {port} is held by pid {holder.pid}"):
            child.wait_listening([port], timeout=1)
        assert not child.alive  # stopped when it did not become ready
    finally:
        child.stop()

    # A child that cannot bind because the port is taken exits; the message says how and who.
    binder = ManagedProcess(
        "binder",
        [sys.executable, "-c", f"import socket; socket.socket().bind(('127.0.0.1', {port}))"],
        log_path=tmp_path / "binder.log",
    ).start()
    with pytest.raises(StackError) as exc:
        binder.wait_listening([port], timeout=30)
    message = str(exc.value)
    assert message.startswith("binder exited with code 1 during start-up")
    assert f"port {port} is held by pid {holder.pid}" in message
    assert "Address already in use" in message  # the child's own log


@pytest.mark.slow
def test_up_runs_the_demo_against_its_own_children_and_stops_on_ctrl_c(
    embedded: EmbeddedStack,
) -> None:
    """What ``make run`` does: the demo runs through the worker child and verifies."""
    run = embedded.up()
    run.wait_for("serving:", timeout=240)
    out = run.stdout
    children = run.children()
    assert f"worker: pid {children['worker']}, polling task queue ledgerflow" in out
    assert f"API: http://127.0.0.1:{embedded.ports['api']}/docs, pid {children['api']}" in out
    assert "demo: outcome completed — bought " in out
    assert "verify: ok — " in out
    assert f"UI http://localhost:{embedded.ports['ui']}" in out  # the link follows the UI port
    # The worker's metrics after the demo: Temporal's series and ledgerflow's; the API's own.
    worker_metrics = f"http://127.0.0.1:{embedded.ports['metrics']}/metrics"
    api_metrics = f"http://127.0.0.1:{embedded.ports['api_metrics']}/metrics"
    assert f"metrics: worker {worker_metrics} · API {api_metrics}" in out
    scraped = httpx.get(worker_metrics, timeout=5).text
    assert "temporal_workflow_completed{" in scraped
    assert re.search(
        r'^ledgerflow_runs_total\{[^}]*outcome="completed"[^}]*'
        r'workflow_type="ProcurementWorkflow"[^}]*\} 1$',
        scraped,
        re.M,
    ), scraped
    assert httpx.get(api_metrics, timeout=5).status_code == 200
    _follow_the_readme_twice(embedded)
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(STOP_TIMEOUT + 10) == 0, run.stderr[-3000:]
    # LEDGERFLOW_LOG_FORMAT=json: every line the worker and the API wrote is one JSON object.
    for line in run.stderr.splitlines():
        assert isinstance(json.loads(line), dict), line
    assert run.stdout.strip().splitlines()[-1] == (
        "stopped: API, worker, anvil (state saved), Temporal"
    )
    assert _gone(list(children.values()), 2) == []
    assert embedded.holders() == {}
    assert (embedded.home / "up.lock").read_text() == ""  # nothing left to clean up


def _follow_the_readme_twice(embedded: EmbeddedStack) -> None:
    """The README's first session, twice in a row on the stack ``up`` serves: every command
    succeeds and every purchase completes."""
    env = {
        **embedded.env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TEMPORAL_ADDRESS": embedded.env["LEDGERFLOW_TEMPORAL_ADDRESS"],
        "LEDGERFLOW_LOG_FORMAT": "console",
        "LEDGERFLOW_LOG_LEVEL": "WARNING",
    }
    commands = first_session_commands()
    started = [c.split("--id ")[1].split()[0] for c in commands if " start " in c and "--id " in c]
    assert len(started) == 3, commands
    for attempt in (1, 2):
        ran = run_first_session(env, embedded.cwd)
        transcript = "\n".join(f"$ {r.command}\n{r.output}" for r in ran)
        (embedded.cwd / f"readme-{attempt}.txt").write_text(transcript)
        assert [r.command for r in ran] == commands, transcript
        assert all(r.returncode == 0 for r in ran), transcript
        waited = [r.output for r in ran if r.command.startswith("ledgerflow status ")]
        assert all("waiting for" in o for o in waited), transcript
        assert ": completed — bought 25 x WIDGET-42" in ran[0].output, transcript
        for wf_id in started:
            status = subprocess.run(
                [sys.executable, "-m", "ledgerflow.cli", "status", wf_id, "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            result = json.loads(status.stdout)["result"]
            assert result["outcome"] == "completed", (wf_id, result, transcript)


# ---- 2. supervision: a dead child is named, the rest is stopped ---------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("victim", "sig", "how"),
    [
        ("worker", signal.SIGSEGV, "was killed by SIGSEGV"),
        ("api", signal.SIGKILL, "was killed by SIGKILL"),
        ("anvil", signal.SIGKILL, "was killed by SIGKILL"),
        ("temporal", signal.SIGKILL, "was killed by SIGKILL"),
    ],
)
def test_a_child_killed_mid_run_is_reported_and_the_rest_stopped(
    embedded: EmbeddedStack, victim: str, sig: signal.Signals, how: str
) -> None:
    run = embedded.up("--no-demo")
    run.wait_for("serving:")
    children = run.children()
    assert set(children) == {"temporal", "anvil", "worker", "api"}
    os.kill(children[victim], sig)
    killed_at = time.monotonic()
    code = run.wait(STOP_TIMEOUT + 10)
    assert code == EXIT_SERVICE_DIED, run.stderr[-3000:]
    assert time.monotonic() - killed_at < STOP_TIMEOUT
    label = {"temporal": "Temporal", "api": "API"}.get(victim, victim)
    assert (
        f"error: {label} (pid {children[victim]}) {how} while `ledgerflow up` was serving"
        in run.stderr
    )
    stopped = run.stdout.strip().splitlines()[-1]
    assert stopped.startswith("stopped: ")
    assert f"{label} (had been killed by {sig.name})" in stopped
    assert _gone(list(children.values()), 2) == []
    assert embedded.holders() == {}


# ---- 3. shutdown: bounded, whatever the services' state -----------------------------------------


@pytest.mark.slow
def test_sigterm_while_temporal_is_unreachable_stops_everything_in_time(
    embedded: EmbeddedStack,
) -> None:
    run = embedded.up("--no-demo")
    run.wait_for("serving:")
    children = run.children()
    os.kill(children["temporal"], signal.SIGSTOP)  # alive, holding its port, answering nothing
    time.sleep(2)  # the worker is now stuck on its polls, as in the issue
    asked = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    code = run.wait(STOP_TIMEOUT + 10)
    took = time.monotonic() - asked
    assert code == 0, run.stderr[-3000:]
    assert took < STOP_TIMEOUT, f"stopping took {took:.1f}s"
    assert run.stdout.strip().splitlines()[-1].startswith("stopped: API")
    assert _gone(list(children.values()), 2) == []
    assert embedded.holders() == {}


@pytest.mark.slow
def test_a_new_up_after_the_previous_was_sigkilled_starts_cleanly(embedded: EmbeddedStack) -> None:
    first = embedded.up("--no-demo", name="first")
    first.wait_for("serving:")
    old = first.children()
    # A hung Temporal cannot act on the parent-death signal: only the lock file can clean it up.
    os.kill(old["temporal"], signal.SIGSTOP)
    first.proc.kill()
    first.wait(10)
    if sys.platform.startswith("linux"):  # the parent-death signal stops the others at once
        assert _gone([old["worker"], old["api"], old["anvil"]], 5) == []
    assert psutil.Process(old["temporal"]).status() == psutil.STATUS_STOPPED

    second = embedded.up("--no-demo", name="second")
    second.wait_for("serving:")
    out = second.stdout
    assert (
        "cleanup: stopped what the previous `ledgerflow up` left running: "
        f"temporal (pid {old['temporal']}" in out  # ", killed)" if it took more than 5 s
    )
    assert "contracts: deployed at block" in out  # anvil saved its state on the way out
    assert _gone(list(old.values()), 0) == []
    new = second.children()
    assert set(new) == {"temporal", "anvil", "worker", "api"}
    assert not set(new.values()) & set(old.values())

    second.proc.send_signal(signal.SIGINT)
    assert second.wait(STOP_TIMEOUT + 10) == 0, second.stderr[-3000:]
    assert second.stdout.strip().splitlines()[-1] == (
        "stopped: API, worker, anvil (state saved), Temporal"
    )
    assert _gone(list(new.values()), 2) == []
    assert embedded.holders() == {}


# ---- the lock file ------------------------------------------------------------------------------


def test_a_second_up_on_the_same_state_directory_is_refused(embedded: EmbeddedStack) -> None:
    lock = UpLock(embedded.home)
    lock.acquire()
    try:
        done = embedded.run_up("--no-demo")
    finally:
        lock.release()
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: another `ledgerflow up` (pid {os.getpid()}) is running on the state directory "
        f"{embedded.home}; stop it first (Ctrl-C in its terminal, or `kill {os.getpid()}`)"
    )


def _spawn(code: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    time.sleep(0.3)  # let it install its signal handlers
    return p


def test_leftovers_are_stopped_only_when_they_are_still_ours(tmp_path: Path) -> None:
    from ledgerflow.dev.lock import ChildRecord

    sleeper = _spawn("import time; time.sleep(60)")
    stubborn = _spawn(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    )
    stranger = _spawn("import time; time.sleep(60)")  # a pid the system gave someone else since
    try:
        records = [
            ChildRecord(
                n,
                p.pid,
                psutil.Process(p.pid).create_time(),
                tuple(psutil.Process(p.pid).cmdline()),
            )
            for n, p in (("temporal", sleeper), ("worker", stubborn))
        ]
        info = psutil.Process(stranger.pid)
        records.append(
            ChildRecord("anvil", stranger.pid, info.create_time() - 3600, tuple(info.cmdline()))
        )
        records.append(
            ChildRecord("api", stranger.pid, info.create_time(), ("anvil", "--port", "1"))
        )
        # As a killed ``up`` leaves it: its pid is dead, the lock is free, the children listed.
        home = tmp_path / "home"
        home.mkdir()
        (home / "up.lock").write_text(
            json.dumps(
                {
                    "pid": 2**22 + 1,
                    "started_at": 0,
                    "children": [
                        {
                            "name": r.name,
                            "pid": r.pid,
                            "started_at": r.started_at,
                            "argv": list(r.argv),
                        }
                        for r in records
                    ],
                }
            )
        )
        lock = UpLock(home)
        previous = lock.acquire()
        assert previous == records
        stopped = stop_leftovers(previous, grace=1)
        assert stopped == [f"temporal (pid {sleeper.pid})", f"worker (pid {stubborn.pid}, killed)"]
        # (psutil reaped them, so Popen cannot tell how they ended.)
        assert _gone([sleeper.pid, stubborn.pid], 2) == []
        assert stranger.poll() is None
        lock.release()
    finally:
        for p in (sleeper, stubborn, stranger):
            p.kill()
            p.wait()


# ---- what ``up`` prints and passes on -----------------------------------------------------------


def test_outcome_lines_say_bought_only_for_a_completed_purchase() -> None:
    base = {"sku": "WIDGET-42", "supplier": "0xabc", "quantity": 5, "total": 60_000_000}
    completed = outcome_line({**base, "outcome": "completed", "decided_by": "offline:rules"})
    assert "completed[/bold] — bought 5 x WIDGET-42 from 0xabc for 60.00 tUSD" in completed
    refused = outcome_line(
        {
            **base,
            "outcome": "rejected",
            "reason": "over budget: PolicyBudgetExceeded[amount=300, remaining=80]",
        }
    )
    assert "bought" not in refused.replace("nothing bought", "")
    assert "rejected[/bold] — nothing bought: over budget: PolicyBudgetExceeded\\[amount" in refused
    compensated = outcome_line(
        {
            **base,
            "outcome": "compensated",
            "reason": "ContractRevert: Escrow: PolicyBudgetExceeded(amount=300)",
            "compensations": ["escrow.refund"],
        }
    )
    assert "bought" not in compensated
    assert "did not complete: ContractRevert" in compensated
    assert compensated.endswith("; compensated by escrow.refund")


def test_the_children_get_ups_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pydantic import SecretStr

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        home=tmp_path,
        temporal_address="127.0.0.1:7999",
        rpc_url="http://127.0.0.1:9999",
        api_port=8123,
        wait_for_anchor=False,
        anchor_max_wait_seconds=0.5,
        openai_api_key=SecretStr("sk-test"),
    )
    env = child_env(settings)
    for key in list(os.environ):
        if key.startswith(("LEDGERFLOW_", "OPENAI_")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    again = Settings(_env_file=None)  # type: ignore[call-arg]
    assert again.model_dump() | {"openai_api_key": None} == settings.model_dump() | {
        "openai_api_key": None
    }
    assert again.openai_api_key is not None
    assert again.openai_api_key.get_secret_value() == "sk-test"


def test_free_port_really_is_free() -> None:
    """The helpers the tests above lean on."""
    port = free_port()
    assert port_holders(port) == []
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        (holder,) = port_holders(port)
        assert holder.pid == os.getpid()
        assert holder.address == "127.0.0.1"
