"""The lock file of ``ledgerflow up``: one stack per state directory, and no orphans after a crash.

``<home>/up.lock`` is held with ``flock`` for as long as ``up`` runs: the kernel releases it when
the process ends, however it ends, so a second ``up`` on the same state directory is refused while
the first lives, and allowed as soon as it is gone. The file also lists the children ``up``
started (name, pid, start time, command line), rewritten as each one starts. When ``up`` was
killed hard, the next ``up`` finds that list and stops the processes on it that still run: only
those whose pid, start time and command line all still match, so a pid that the system has since
given to another process is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import psutil
import structlog

from ledgerflow.errors import StackError

__all__ = ["ChildRecord", "UpLock", "stop_leftovers"]

log = structlog.get_logger(__name__)

LOCK_FILE = "up.lock"
#: How far two readings of one process's start time may differ (the system derives it from the
#: boot time, which moves when the clock is set).
_START_TIME_SLACK = 1.0


@dataclass(frozen=True)
class ChildRecord:
    """One child of ``up``, as the lock file keeps it."""

    name: str
    pid: int
    started_at: float
    argv: tuple[str, ...]

    def still_running(self) -> psutil.Process | None:
        """The process itself if it still runs; None if it ended or the pid is someone else's."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.started_at) > _START_TIME_SLACK:
                return None
            if tuple(proc.cmdline()) != self.argv:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None


class UpLock:
    """``<home>/up.lock``: held while one ``up`` runs on ``home``."""

    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> list[ChildRecord]:
        """Take the lock; returns the children that the previous holder recorded.

        Raises:
            StackError: another live ``up`` holds the lock (the message names its pid).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 -- held open as long as the lock
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(self.path).get("pid")
            f.close()
            who = f" (pid {holder})" if holder else ""
            raise StackError(
                f"another `ledgerflow up`{who} is running on the state directory "
                f"{self.path.parent}; stop it first (Ctrl-C in its terminal"
                + (f", or `kill {holder}`)" if holder else ")")
            ) from None
        self._file = f
        previous = [_child(c) for c in _read(self.path).get("children", []) if _valid(c)]
        # Until they are stopped, the previous holder's children stay on record: if this ``up``
        # is killed too, the next one still knows them.
        self.record(previous)
        return previous

    def record(self, children: Sequence[Any]) -> None:
        """Rewrite the file with our pid and ``children`` (ManagedProcess or ChildRecord)."""
        if self._file is None:
            return
        rows = []
        for c in children:
            if isinstance(c, ChildRecord):
                rows.append(asdict(c))
            elif c.pid is not None and c.started_at is not None:
                rows.append(
                    {"name": c.name, "pid": c.pid, "started_at": c.started_at, "argv": list(c.argv)}
                )
        me = psutil.Process()
        doc = {"pid": me.pid, "started_at": me.create_time(), "children": rows}
        f = self._file
        f.seek(0)
        f.truncate()
        f.write(json.dumps(doc, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())

    def release(self) -> None:
        """Empty the record and drop the lock. The file stays: removing it would let one ``up``
        lock the removed file while another locks a new one."""
        if self._file is None:
            return
        with contextlib.suppress(OSError):
            self._file.seek(0)
            self._file.truncate()
            self._file.flush()
        self._file.close()
        self._file = None


def stop_leftovers(records: Sequence[ChildRecord], grace: float = 5.0) -> list[str]:
    """Stop the recorded children that still run (SIGTERM, SIGKILL after ``grace`` seconds).

    Returns:
        One description per process stopped, such as ``temporal (pid 4242)``.
    """
    found = [(r, p) for r in records if (p := r.still_running()) is not None]
    if not found:
        return []
    for record, proc in found:
        log.info("stopping leftover", process=record.name, pid=record.pid)
        _signal_group(proc, signal.SIGTERM)
        _signal_group(proc, signal.SIGCONT)
    _, alive = psutil.wait_procs([p for _, p in found], timeout=grace)
    for proc in alive:
        _signal_group(proc, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    return [f"{r.name} (pid {r.pid}{', killed' if p in alive else ''})" for r, p in found]


def _signal_group(proc: psutil.Process, sig: signal.Signals) -> None:
    """Signal the process and, when it leads its own group (as our children do), the group."""
    with contextlib.suppress(psutil.Error, OSError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _valid(row: Any) -> bool:
    return (
        isinstance(row, dict)
        and isinstance(row.get("name"), str)
        and isinstance(row.get("pid"), int)
        and isinstance(row.get("started_at"), int | float)
        and isinstance(row.get("argv"), list)
    )


def _child(row: dict[str, Any]) -> ChildRecord:
    return ChildRecord(
        name=row["name"],
        pid=row["pid"],
        started_at=float(row["started_at"]),
        argv=tuple(str(a) for a in row["argv"]),
    )
