"""Leases: one holder at a time for a named job, renewed while the holder lives.

A lease is a row in the ``leases`` table (holder, host, pid, expiry by the database's clock, and
an epoch that grows at every change of holder). Its holder renews it every third of its
lifetime; when the holder dies, another process takes it over once it has expired, or at once
when the holder was on the same host and its pid is gone. Used for the batch anchorer (one
anchorer at a time among many workers) and, on SQLite, for the single-worker rule.

The lease is about who does the work, not about safety: what the anchorer sends is idempotent
through the outbox and the registry, so two holders at once (a paused process that comes back
after its lease was taken over) anchor nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid

import structlog

from ledgerflow.store.store import LeaseRow, Store

__all__ = ["Lease", "holder_id"]

log = structlog.get_logger(__name__)


def holder_id() -> str:
    """A holder name unique to this process and call: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _dead_here(row: LeaseRow) -> bool:
    """Whether ``row``'s holder ran on this host and its process is gone."""
    if row.host != socket.gethostname() or row.pid <= 0 or row.pid == os.getpid():
        return False
    try:
        os.kill(row.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Lease:
    """A named lease on the store.

    Args:
        store: where the lease row lives.
        name: the job (``anchorer``, ``worker:sqlite``).
        ttl: seconds a renewal lasts.
    """

    def __init__(self, store: Store, name: str, *, ttl: float, holder: str | None = None) -> None:
        self.store = store
        self.name = name
        self.ttl = ttl
        self.holder = holder or holder_id()
        self.held = False
        self.current: LeaseRow | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Lease({self.name!r}, holder={self.holder!r}, held={self.held})"

    async def acquire(self) -> bool:
        """Take (or renew) the lease; False while someone else holds it."""
        ok, row = await asyncio.to_thread(
            self.store.lease_acquire, self.name, self.holder, self.ttl
        )
        if not ok and row is not None and _dead_here(row):
            ok, row = await asyncio.to_thread(
                self.store.lease_acquire, self.name, self.holder, self.ttl, steal_from=row.holder
            )
        was = self.held
        self.held, self.current = ok, row
        if ok and not was:
            log.info(
                "lease acquired",
                lease=self.name,
                holder=self.holder,
                epoch=row.epoch if row else None,
            )
        elif was and not ok:
            log.warning(
                "lease lost",
                lease=self.name,
                holder=self.holder,
                taken_by=row.holder if row else None,
            )
        return ok

    async def release(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.held:
            self.held = False
            await asyncio.to_thread(self.store.lease_release, self.name, self.holder)
            log.info("lease released", lease=self.name, holder=self.holder)

    def keep(self) -> None:
        """Renew the lease in the background every ``ttl / 3`` seconds (and take it when it
        becomes free) until :meth:`release`."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._renew(), name=f"lease:{self.name}")

    async def _renew(self) -> None:
        while True:
            try:
                await self.acquire()
            except Exception as exc:  # the store is down: the lease runs out, someone takes over
                if self.held:
                    log.warning("lease renewal failed", lease=self.name, error=str(exc))
                self.held = False
            await asyncio.sleep(self.ttl / 3)
