"""The off-chain store: runs, step preimages, anchors, proofs, the signer's outbox, and the rows
that coordinate several processes (nonce counters, leases).

SQLite by default, PostgreSQL via ``LEDGERFLOW_DATABASE_URL``. The schema is created and upgraded
by :meth:`Store.migrate` (see docs/operations.md): a ``ledgerflow_schema`` row holds the version and
each upgrade step runs once, in order.

The API is synchronous (SQLAlchemy); async callers use ``asyncio.to_thread``. Database failures
other than constraint violations surface as :class:`~ledgerflow.errors.StoreUnavailable`, whose
message names the failure but never quotes SQL or its parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Table,
    UniqueConstraint,
    bindparam,
    case,
    event,
    func,
    insert,
    inspect,
    text,
    update,
)
from sqlalchemy import (
    select as core_select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Field, Session, SQLModel, col, create_engine, delete, select

from ledgerflow.errors import RecordNotFound, StoreError, StoreUnavailable, bounded
from ledgerflow.log import redact_url

__all__ = [
    "DELIVERY_RETRYABLE",
    "FINAL_STATUSES",
    "SCHEMA_VERSION",
    "AnchorRow",
    "ClaimedStep",
    "FlushRecorded",
    "InvoiceReconciliation",
    "LeaseRow",
    "OutboxAttempt",
    "OutboxClosure",
    "OutboxTx",
    "RunAnchorState",
    "RunRow",
    "SealRow",
    "SenderLock",
    "SignerNonce",
    "StepRow",
    "Store",
    "WebhookDelivery",
]

SCHEMA_VERSION = 3


def _now() -> datetime:
    return datetime.now(UTC)


def _table(model: type[SQLModel]) -> Table:
    """The Core table of a table model (for statements that skip the ORM)."""
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


@dataclasses.dataclass(frozen=True)
class _FlushStatements:
    run_row: Any
    run_status: Any
    insert_run: Any
    stored_steps: Any
    insert_step: Any
    advance_head: Any
    stored_seal: Any
    insert_seal: Any
    set_status: Any
    steps_of_kind: Any


@functools.cache
def _flush_statements() -> _FlushStatements:
    """The statements of :meth:`Store.record_flush`, built once with bind parameters (building
    and cache-keying a statement per execution cost more than running it on SQLite)."""
    runs, steps, seals = _table(RunRow), _table(StepRow), _table(SealRow)
    this_run = (runs.c.workflow_id == bindparam("wf")) & (runs.c.run_id == bindparam("run"))
    these_steps = (steps.c.workflow_id == bindparam("wf")) & (steps.c.run_id == bindparam("run"))
    return _FlushStatements(
        run_row=core_select(runs).where(this_run),
        run_status=core_select(runs.c.status).where(this_run),
        insert_run=insert(runs),
        stored_steps=core_select(steps.c.seq, steps.c.step_hash).where(
            these_steps, steps.c.seq.in_(bindparam("seqs", expanding=True))
        ),
        insert_step=insert(steps),
        advance_head=update(runs)
        .where(this_run, runs.c.steps <= bindparam("seq"))
        .values(head=bindparam("head"), steps=bindparam("steps"), updated_at=bindparam("now")),
        stored_seal=core_select(seals.c.steps, seals.c.head).where(
            (seals.c.workflow_id == bindparam("wf")) & (seals.c.run_id == bindparam("run"))
        ),
        insert_seal=insert(seals),
        set_status=update(runs)
        .where(this_run)
        .values(status=bindparam("status"), updated_at=bindparam("now")),
        steps_of_kind=core_select(steps.c.name, steps.c.status)
        .where(these_steps, steps.c.kind == bindparam("kind"))
        .order_by(steps.c.seq),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class FlushRecorded:
    """What :meth:`Store.record_flush` did."""

    #: Steps and seals stored by this call (0 for a retried flush).
    new: int
    #: Whether this call recorded the run's end (it was running before).
    ended: bool
    #: ``(name, status)`` of the run's steps of the ``count_kind`` asked for, when ``ended``.
    counted: list[tuple[str, str]]


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimedStep:
    """A step put into a batch by :meth:`Store.claim_batch` (no preimages read)."""

    id: int
    workflow_id: str
    run_id: str
    seq: int
    step_hash: str
    created_at: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class StepAnchorRef:
    """A step's sequence number and the anchor it is in (no preimages read)."""

    seq: int
    anchor_id: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class RunAnchorState:
    """How far a run's anchoring has come (:meth:`Store.run_anchor_state`)."""

    #: Steps not in a confirmed anchor yet.
    pending: int
    #: The run's seal, if one is stored.
    seal: SealRow | None
    steps: list[StepAnchorRef]
    anchors: dict[int, AnchorRow]


class SchemaVersion(SQLModel, table=True):
    __tablename__ = "ledgerflow_schema"
    id: int = Field(default=1, primary_key=True)
    version: int


class RunRow(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("workflow_id", "run_id"),)
    id: int | None = Field(default=None, primary_key=True)
    workflow_id: str = Field(index=True, max_length=255)
    run_id: str = Field(max_length=64)
    workflow_type: str = Field(max_length=128)
    run_key: str = Field(max_length=66)
    anchor_mode: str = Field(max_length=16)
    status: str = Field(default="running", max_length=32)
    head: str | None = Field(default=None, max_length=66)
    steps: int = 0
    spec_version: int = 1  # checkpoint spec version the run is recorded under
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)


class StepRow(SQLModel, table=True):
    __tablename__ = "steps"
    __table_args__ = (
        UniqueConstraint("workflow_id", "run_id", "seq"),
        Index("ix_steps_pending", "anchor_id", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    workflow_id: str = Field(max_length=255)
    run_id: str = Field(max_length=64)
    seq: int
    kind: str = Field(max_length=16)
    name: str = Field(max_length=128)
    status: str = Field(max_length=8)
    input_hash: str = Field(max_length=66)
    output_hash: str = Field(max_length=66)
    prev: str = Field(max_length=66)
    step_hash: str = Field(max_length=66)
    head: str = Field(max_length=66)
    input_preimage: str | None = None
    output_preimage: str | None = None
    # Spec v2: the salts of the input and output commitments (0x-hex, 32 bytes); null for v1.
    spec_version: int = 1
    input_salt: str | None = Field(default=None, max_length=66)
    output_salt: str | None = Field(default=None, max_length=66)
    redacted_at: datetime | None = None  # preimages and salts erased (the record stays)
    anchor_mode: str = Field(max_length=16)
    anchor_id: int | None = Field(default=None, foreign_key="anchors.id")
    proof: str | None = None  # JSON list of 0x-hex siblings (batched mode)
    created_at: datetime = Field(default_factory=_now)


class AnchorRow(SQLModel, table=True):
    __tablename__ = "anchors"
    id: int | None = Field(default=None, primary_key=True)
    mode: str = Field(max_length=16)  # "batched" | "per-step"
    root: str | None = Field(default=None, index=True, max_length=66)
    leaf_count: int = 0
    status: str = Field(default="pending", max_length=16)  # pending | confirmed
    tx_hash: str | None = Field(default=None, max_length=66)
    block_number: int | None = None
    chain_id: int | None = None
    registry_address: str | None = Field(default=None, max_length=42)
    created_at: datetime = Field(default_factory=_now)
    anchored_at: datetime | None = None


class SealRow(SQLModel, table=True):
    """The seal of an ended run (spec v2): its step count and final head, anchored once.

    Batched runs: ``pending`` until the anchorer puts it into an anchoring transaction
    (``anchor_id``, status ``claimed``), ``confirmed`` with that transaction's hash and block.
    Per-step runs: written ``confirmed`` by the flush that sent ``sealRun``.
    """

    __tablename__ = "seals"
    __table_args__ = (
        UniqueConstraint("workflow_id", "run_id"),
        Index("ix_seals_pending", "status", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    workflow_id: str = Field(max_length=255)
    run_id: str = Field(max_length=64)
    run_key: str = Field(max_length=66)
    steps: int
    head: str = Field(max_length=66)
    anchor_mode: str = Field(default="batched", max_length=16)
    status: str = Field(default="pending", max_length=16)  # pending | claimed | confirmed
    anchor_id: int | None = Field(default=None, foreign_key="anchors.id")
    tx_hash: str | None = Field(default=None, max_length=66)
    block_number: int | None = None
    created_at: datetime = Field(default_factory=_now)


class OutboxTx(SQLModel, table=True):
    """A signed transaction, persisted before broadcast so that a retry rebroadcasts it.

    One row per idempotency key and per nonce. ``raw``/``tx_hash`` are the variant broadcast now
    (the latest replacement), or the one that was mined once it is final; every other variant
    signed at this nonce is an :class:`OutboxAttempt`. Status: ``signed`` (persisted, not final
    yet), ``mined`` / ``reverted`` (final: enough confirmations at the same block hash), or
    ``voided`` (the chain lost it, its owner closed the key, and a no-op took its nonce).
    """

    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("chain_id", "sender", "nonce"),)
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True, max_length=255)
    chain_id: int
    sender: str = Field(max_length=42)
    nonce: int
    raw: str
    tx_hash: str = Field(max_length=66)
    status: str = Field(default="signed", max_length=16)  # signed | mined | reverted | voided
    block_number: int | None = None
    block_hash: str | None = Field(default=None, max_length=66)
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime | None = Field(default_factory=_now)


class OutboxAttempt(SQLModel, table=True):
    """Every signed variant of an outbox row once there is more than one: the original, its
    fee-bumped replacements at the same nonce, and the no-op that voids it (``kind``). Only one
    of them can ever be mined; whichever is, counts."""

    __tablename__ = "outbox_attempts"
    id: int | None = Field(default=None, primary_key=True)
    outbox_id: int = Field(foreign_key="outbox.id", index=True)
    tx_hash: str = Field(unique=True, max_length=66)
    raw: str
    kind: str = Field(max_length=16)  # original | replacement | void | resigned
    created_at: datetime = Field(default_factory=_now)


class OutboxClosure(SQLModel, table=True):
    """An idempotency key whose owner said its effect must not happen (any more): nothing is
    signed for it from then on, and if the chain loses its transaction it is voided, not
    re-sent (see :meth:`Store.outbox_close`)."""

    __tablename__ = "outbox_closures"
    key: str = Field(primary_key=True, max_length=255)
    reason: str = Field(default="", max_length=255)
    created_at: datetime = Field(default_factory=_now)


class SignerNonce(SQLModel, table=True):
    """The next nonce of a sender on a chain, shared by every process signing for it."""

    __tablename__ = "signer_nonces"
    chain_id: int = Field(primary_key=True)
    sender: str = Field(primary_key=True, max_length=42)
    next_nonce: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime = Field(default_factory=_now)


class LeaseRow(SQLModel, table=True):
    """A named lease: one holder at a time until ``expires_at`` (seconds since the epoch, by
    the database's clock), renewed while the holder lives."""

    __tablename__ = "leases"
    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    host: str = Field(max_length=255)
    pid: int
    epoch: int = 0  # +1 at every change of holder (a fencing number)
    acquired_at: float
    expires_at: float


class WebhookDelivery(SQLModel, table=True):
    """A signed webhook delivery, bound on first use to its route and target run.

    ``workflow_type`` holds the route (``ProcurementWorkflow`` for a start,
    ``ProcurementWorkflow/signal/confirm_delivery`` for a signal), ``workflow_id`` the run it
    steers. ``status``: ``pending`` (being acted on), ``accepted``, ``refused`` (the run or the
    body refused it; ``detail`` says why) or ``failed`` (the workflow engine was unavailable; a
    retry of the same delivery to the same route takes it up again). A webhook-id is never
    accepted for another route or run, whatever its status.
    """

    __tablename__ = "webhook_deliveries"
    id: int | None = Field(default=None, primary_key=True)
    webhook_id: str = Field(unique=True, max_length=255)
    workflow_type: str = Field(max_length=128)
    workflow_id: str = Field(max_length=255)
    run_id: str | None = Field(default=None, max_length=64)
    status: str = Field(default="pending", max_length=16)
    detail: str | None = Field(default=None, max_length=300)
    created_at: datetime = Field(default_factory=_now)


#: Delivery statuses a retry of the same delivery to the same route may take up again.
DELIVERY_RETRYABLE = ("failed", "refused")

_DELIVERIES = WebhookDelivery.__table__  # type: ignore[attr-defined]
#: A start delivery's run, once started: accepted, and the first run id recorded wins.
_SET_RUN = (
    update(_DELIVERIES)
    .where(_DELIVERIES.c.webhook_id == bindparam("b_webhook_id"))
    .values(
        status="accepted",
        detail=None,
        run_id=func.coalesce(_DELIVERIES.c.run_id, bindparam("b_run_id")),
    )
)
_SET_RUN_RETURNING = _SET_RUN.returning(_DELIVERIES.c.run_id)


class InvoiceReconciliation(SQLModel, table=True):
    """The one invoice that reconciled an escrow order (an order is paid for once)."""

    __tablename__ = "invoice_reconciliations"
    id: int | None = Field(default=None, primary_key=True)
    order_id: str = Field(unique=True, max_length=66)
    invoice_number: str = Field(max_length=64)
    workflow_id: str = Field(max_length=255)
    run_id: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=_now)


def _add_missing_columns(table: str, columns: dict[str, str]) -> Callable[[Connection], None]:
    """An upgrade step that adds ``columns`` (name -> SQL type) to ``table`` where missing, so
    that it also runs on a database whose table already has them."""

    def step(conn: Connection) -> None:
        present = {c["name"] for c in inspect(conn).get_columns(table)}
        for name, sql_type in columns.items():
            if name not in present:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))

    return step


#: Upgrade steps: version N -> N+1, each a list of SQL statements or callables taking the
#: connection. Append only; never edit a released step. New tables need no step
#: (``create_all`` makes them before the steps run); new columns of existing tables do.
#: Upgrade steps: version N -> N+1. Append only; never edit a released step. A step is an SQL
#: statement or a function of the connection; new tables come from create_all.
_UPGRADES: dict[int, Sequence[str | Callable[[Connection], None]]] = {
    # 1 -> 2: checkpoint spec v2 (salted commitments, redaction; the seals table is new: existing
    # rows are version 1 runs), and the reorg-safe signer (outbox rows remember their block hash;
    # replacements, closures, shared nonce counters and leases are new tables).
    1: [
        _add_missing_columns("runs", {"spec_version": "INTEGER NOT NULL DEFAULT 1"}),
        _add_missing_columns(
            "steps",
            {
                "spec_version": "INTEGER NOT NULL DEFAULT 1",
                "input_salt": "VARCHAR(66)",
                "output_salt": "VARCHAR(66)",
                "redacted_at": "TIMESTAMP",
            },
        ),
        _add_missing_columns("outbox", {"block_hash": "VARCHAR(66)", "updated_at": "TIMESTAMP"}),
    ],
    # 2 -> 3: webhook deliveries remember refusals (a signed delivery is bound to its route and
    # run even when refused); rows recorded before were accepted deliveries. The
    # invoice_reconciliations table is new.
    2: [
        _add_missing_columns(
            "webhook_deliveries",
            {"status": "VARCHAR(16) NOT NULL DEFAULT 'accepted'", "detail": "VARCHAR(300)"},
        ),
    ],
}

#: Outbox statuses that are final (nothing more will happen to the row unless the chain loses
#: its block).
FINAL_STATUSES = ("mined", "reverted", "voided")


def _describe_db_error(exc: BaseException) -> str:
    """What went wrong with the database, without SQL, parameters or credentials."""
    orig = getattr(exc, "orig", None)
    kind = type(exc).__name__
    driver = type(orig).__name__ if orig is not None else ""
    detail = ""
    if (
        isinstance(exc, DBAPIError)
        and orig is not None
        and kind
        in (
            "OperationalError",
            "InterfaceError",
        )
    ):
        # Connection-level messages (libpq, sqlite3) name the failure, never a parameter.
        detail = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    label = f"{kind} ({driver})" if driver and driver != kind else kind
    return bounded(f"database error: {label}" + (f": {detail}" if detail else ""), 240)


def _clean(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Re-raise a :class:`StoreUnavailable` without the driver's exception chained to it
    (SQLAlchemy chains the DBAPI error, whose text can quote the values of a statement)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StoreUnavailable as exc:
            if exc.__cause__ is None and exc.__context__ is None:
                raise
            clean = StoreUnavailable(str(exc))
        raise clean  # outside the handler: nothing chained

    return wrapper


def _cleaned(cls: type) -> type:
    """Apply :func:`_clean` to every public method of ``cls``."""
    for name, value in list(vars(cls).items()):
        if callable(value) and not name.startswith("_") and name != "session":
            setattr(cls, name, _clean(value))
    return cls


def _handle_db_error(context: Any) -> None:
    """SQLAlchemy ``handle_error`` hook: infrastructure failures become StoreUnavailable."""
    exc = context.sqlalchemy_exception
    if isinstance(exc, IntegrityError) or exc is None:
        return  # constraint violations are the callers' business (idempotent inserts)
    raise StoreUnavailable(_describe_db_error(exc)) from None


def _advisory_key(*parts: object) -> int:
    """A signed 64-bit key for ``pg_advisory_lock`` from ``parts``."""
    from ledgerflow.checkpoint.canonical import keccak  # not at import: the CLI starts faster

    digest = keccak(":".join(str(p) for p in ("ledgerflow", *parts)).encode("utf-8"))
    return int.from_bytes(digest[:8], "big", signed=True)


@_cleaned
class SenderLock:
    """The lock that serialises nonce allocation and broadcasting for one sender on one chain
    across processes.

    On PostgreSQL it is a session-level advisory lock held on a connection of its own, so the
    database releases it if the holder dies; the holder persists its batch on that connection
    and broadcasts before releasing, so transactions reach the node in nonce order whichever
    process signed them. On SQLite it is a no-op: one worker per store (see
    docs/operations.md), which the worker lease enforces.
    """

    def __init__(self, store: Store, chain_id: int, sender: str, *, timeout: float = 30.0) -> None:
        self.store = store
        self.key = _advisory_key("nonce", chain_id, sender.lower())
        self.timeout = timeout
        self.conn: Connection | None = None

    def acquire(self) -> None:
        if self.store.is_sqlite:
            return
        conn = self.store.engine.connect()
        try:
            conn.execute(text(f"SET lock_timeout = '{int(self.timeout * 1000)}ms'"))
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            conn.rollback()
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            conn.execute(text("RESET lock_timeout"))
            conn.commit()
        finally:
            conn.close()  # closing also releases a session lock the unlock did not reach

    def session(self) -> Session:
        """A session on the lock's connection (PostgreSQL) or a fresh one (SQLite)."""
        if self.conn is not None:
            return Session(bind=self.conn, expire_on_commit=False)
        return self.store.session()


@_cleaned
class Store:
    """Access to the store. One instance per process; thread-safe through SQLAlchemy's pool."""

    def __init__(self, url: str, *, echo: bool = False, create: bool = True) -> None:
        """Open the store at ``url``.

        With ``create`` False (readers such as ``verify`` and ``export``) a SQLite file must exist
        already: nothing is created, and the error names the URL tried.

        Raises:
            StoreError: ``create`` is False and there is no SQLite file at ``url``.
        """
        self.url = url
        connect_args: dict[str, Any] = {}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1].split("?", 1)[0]
            # A URI filename (``sqlite:///file:...?uri=true``) names its own file: leave it be.
            if path and path != ":memory:" and "://" not in path and not path.startswith("file:"):
                if not create and not Path(path).is_file():
                    raise StoreError(
                        f"no store at {url} (from LEDGERFLOW_DATABASE_URL or the default, "
                        f"relative to {Path.cwd()}); run this where the store is, or set "
                        "LEDGERFLOW_DATABASE_URL"
                    )
                if create:
                    # Readable by the owner only: SQLite gives the -wal and -shm files the mode
                    # of the database file, so creating it 0600 covers all three.
                    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    _create_private_file(path)
            connect_args = {"check_same_thread": False, "timeout": 30}
        # A pooled SQLite connection is a file handle that cannot go stale: pinging it before
        # every checkout only costs a round trip (measured: ~5 % of a batched run's worker CPU).
        self.engine: Engine = create_engine(
            url,
            echo=echo,
            connect_args=connect_args,
            hide_parameters=True,
            pool_pre_ping=not url.startswith("sqlite"),
        )
        event.listen(self.engine, "handle_error", _handle_db_error)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)

    def __repr__(self) -> str:
        if self.is_sqlite:
            return f"Store({self.url})"  # a file path: nothing secret in it
        return f"Store({redact_url(self.url)})"

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def migrate(self) -> int:
        """Create missing tables and run pending upgrade steps; returns the schema version.

        On PostgreSQL, processes starting together migrate one after the other (an advisory
        lock), so many workers can start at once on an empty database.
        """
        if self.is_sqlite:
            return self._migrate()
        with self.engine.connect() as conn:
            key = _advisory_key("migrate")
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                return self._migrate()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()

    def _migrate(self) -> int:
        SQLModel.metadata.create_all(self.engine)
        with Session(self.engine) as s:
            row = s.get(SchemaVersion, 1)
            if row is None:
                s.add(SchemaVersion(id=1, version=SCHEMA_VERSION))
                s.commit()
                return SCHEMA_VERSION
            while row.version < SCHEMA_VERSION:
                for stmt in _UPGRADES.get(row.version, ()):
                    if callable(stmt):
                        stmt(s.connection())
                    else:
                        s.exec(text(stmt))  # type: ignore[call-overload]
                row.version += 1
                s.add(row)
                s.commit()
            return row.version

    def drop_all(self) -> None:
        """Drop every table (tests only)."""
        SQLModel.metadata.drop_all(self.engine)

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # ---- runs and steps -------------------------------------------------------------------

    def ensure_run(
        self,
        *,
        workflow_id: str,
        run_id: str,
        workflow_type: str,
        run_key: str,
        anchor_mode: str,
        spec_version: int = 1,
    ) -> RunRow:
        """The run's row, created if it is not stored yet (every v2 run asks at its start)."""
        q = _flush_statements()
        key = {"wf": workflow_id, "run": run_id}
        for attempt in (0, 1):
            try:
                with self.engine.begin() as conn:
                    found = conn.execute(q.run_row, key).first()
                    if found is not None:
                        return RunRow.model_validate(dict(found._mapping))
                    row = RunRow(
                        workflow_id=workflow_id,
                        run_id=run_id,
                        workflow_type=workflow_type,
                        run_key=run_key,
                        anchor_mode=anchor_mode,
                        spec_version=spec_version,
                    )
                    conn.execute(q.insert_run, row.model_dump(exclude={"id"}))
                    return row
            except IntegrityError:
                if attempt:  # created at the same moment by another process: read it again
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def save_steps(self, steps: Iterable[StepRow]) -> list[StepRow]:
        """Insert steps that are not stored yet (idempotent by workflow id, run id and seq).

        A retried flush sends the same records again; a record that differs from the stored one
        for the same seq is refused, because the chain of hashes would no longer be unique.

        Raises:
            StoreError: a different record is already stored for the same step.
        """
        steps = list(steps)
        if not steps:
            return []
        with self.session() as s:
            out, _new = self._save_steps(s, steps)
            s.commit()
            return out

    @staticmethod
    def _save_steps(s: Session, steps: list[StepRow]) -> tuple[list[StepRow], int]:
        """:meth:`save_steps` inside session ``s`` (not committed); also how many were new."""
        wf, run = steps[0].workflow_id, steps[0].run_id
        existing = {
            r.seq: r
            for r in s.exec(
                select(StepRow).where(
                    StepRow.workflow_id == wf,
                    StepRow.run_id == run,
                    StepRow.seq.in_([st.seq for st in steps]),  # type: ignore[attr-defined]
                )
            )
        }
        out: list[StepRow] = []
        new = 0
        for st in steps:
            old = existing.get(st.seq)
            if old is None:
                s.add(st)
                out.append(st)
                new += 1
            elif old.step_hash != st.step_hash:
                raise StoreError(f"step {st.seq} of {wf}/{run} is already stored with another hash")
            else:
                out.append(old)
        last = max(steps, key=lambda r: r.seq)
        s.exec(
            update(RunRow)  # type: ignore[call-overload]
            .where(
                col(RunRow.workflow_id) == wf,
                col(RunRow.run_id) == run,
                col(RunRow.steps) <= last.seq,
            )
            .values(head=last.head, steps=last.seq + 1, updated_at=_now())
        )
        return out, new

    def record_flush(
        self,
        *,
        workflow_id: str,
        run_id: str,
        workflow_type: str,
        run_key: str,
        anchor_mode: str,
        spec_version: int,
        steps: Sequence[StepRow],
        seal: SealRow | None = None,
        final_status: str | None = None,
        count_kind: str | None = None,
    ) -> FlushRecorded:
        """One flush of a run in one transaction: the run row (created if new), its new steps,
        its seal and its final status. Idempotent like :meth:`save_steps` and :meth:`save_seal`
        (a retried flush changes nothing and reports ``new == 0``).

        With ``count_kind``, the first time the run's end is recorded also returns the
        ``(name, status)`` of the run's steps of that kind (all of them, earlier flushes too).

        Raises:
            StoreError: a different record or seal is already stored for the run.
        """
        for attempt in (0, 1):
            try:
                return self._record_flush(
                    workflow_id=workflow_id,
                    run_id=run_id,
                    workflow_type=workflow_type,
                    run_key=run_key,
                    anchor_mode=anchor_mode,
                    spec_version=spec_version,
                    steps=list(steps),
                    seal=seal,
                    final_status=final_status,
                    count_kind=count_kind,
                )
            except IntegrityError:
                # Another process stored the same flush at the same moment: read it again.
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _record_flush(
        self,
        *,
        workflow_id: str,
        run_id: str,
        workflow_type: str,
        run_key: str,
        anchor_mode: str,
        spec_version: int,
        steps: list[StepRow],
        seal: SealRow | None,
        final_status: str | None,
        count_kind: str | None,
    ) -> FlushRecorded:
        # SQLAlchemy Core with statements built once (_flush_statements), not the ORM's unit of
        # work: this runs for every flush of every run (the ORM version cost about 5 ms of CPU
        # per 9-step flush).
        q = _flush_statements()
        run = {"wf": workflow_id, "run": run_id}
        with self.engine.begin() as conn:
            status = conn.execute(q.run_status, run).scalar()
            if status is None:
                row = RunRow(
                    workflow_id=workflow_id,
                    run_id=run_id,
                    workflow_type=workflow_type,
                    run_key=run_key,
                    anchor_mode=anchor_mode,
                    spec_version=spec_version,
                )
                conn.execute(q.insert_run, row.model_dump(exclude={"id"}))
                status = row.status
            new = 0
            if steps:
                stored: dict[int, str] = dict(
                    conn.execute(q.stored_steps, {**run, "seqs": [st.seq for st in steps]}).all()
                )
                fresh = []
                for st in steps:
                    old = stored.get(st.seq)
                    if old is None:
                        fresh.append(st.model_dump(exclude={"id"}))
                    elif old != st.step_hash:
                        raise StoreError(
                            f"step {st.seq} of {workflow_id}/{run_id} is already stored with "
                            "another hash"
                        )
                if fresh:
                    conn.execute(q.insert_step, fresh)
                    new += len(fresh)
                last = max(steps, key=lambda r: r.seq)
                conn.execute(
                    q.advance_head,
                    {
                        **run,
                        "seq": last.seq,
                        "head": last.head,
                        "steps": last.seq + 1,
                        "now": _now(),
                    },
                )
            if seal is not None:
                old_seal = conn.execute(q.stored_seal, run).first()
                if old_seal is None:
                    conn.execute(q.insert_seal, seal.model_dump(exclude={"id"}))
                    new += 1
                elif (old_seal.steps, old_seal.head) != (seal.steps, seal.head):
                    raise StoreError(
                        f"run {workflow_id}/{run_id} is already sealed at {old_seal.steps} steps"
                    )
            ended = final_status is not None and status == "running"
            counted: list[tuple[str, str]] = []
            if final_status is not None:
                conn.execute(q.set_status, {**run, "status": final_status, "now": _now()})
                if ended and count_kind is not None:
                    counted = [
                        (str(name), str(st_status))
                        for name, st_status in conn.execute(
                            q.steps_of_kind, {**run, "kind": count_kind}
                        )
                    ]
        return FlushRecorded(new=new, ended=ended, counted=counted)

    def finish_run(self, workflow_id: str, run_id: str, status: str) -> None:
        with self.session() as s:
            s.exec(
                update(RunRow)  # type: ignore[call-overload]
                .where(col(RunRow.workflow_id) == workflow_id, col(RunRow.run_id) == run_id)
                .values(status=status, updated_at=_now())
            )
            s.commit()

    def get_run(self, workflow_id: str, run_id: str | None = None) -> RunRow:
        """The run (the latest one of the workflow id when ``run_id`` is None).

        Raises:
            StoreError: no such run is stored.
        """
        with self.session() as s:
            q = select(RunRow).where(col(RunRow.workflow_id) == workflow_id)
            if run_id:
                q = q.where(col(RunRow.run_id) == run_id)
            row = s.exec(q.order_by(RunRow.id.desc())).first()  # type: ignore[union-attr]
            if row is None:
                raise StoreError(f"no checkpointed run for workflow {workflow_id!r}")
            return row

    def redact_step(self, workflow_id: str, seq: int, run_id: str | None = None) -> StepRow:
        """Erase one step's preimages and salts (a data-subject request); the record stays.

        The step's hashes, its anchor and its proof are kept, so the run still verifies, with
        the step reported ``redacted`` (checkpoint spec, section 10). Redacting a redacted step
        again changes nothing. The run is the latest of ``workflow_id`` unless ``run_id`` is
        given.

        Raises:
            RecordNotFound: no such run, or the run has no step ``seq``.
        """
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise RecordNotFound(f"a step is named by its seq (0, 1, ...), got {seq!r}")
        try:
            run = self.get_run(workflow_id, run_id)
        except StoreError:
            which = f"run {run_id!r} of workflow" if run_id else "checkpointed run for workflow"
            raise RecordNotFound(f"no {which} {workflow_id!r}") from None
        with self.session() as s:
            row = s.exec(
                select(StepRow).where(
                    col(StepRow.workflow_id) == run.workflow_id,
                    col(StepRow.run_id) == run.run_id,
                    col(StepRow.seq) == seq,
                )
            ).first()
            if row is None:
                raise RecordNotFound(
                    f"run {run.workflow_id}/{run.run_id} has no step {seq} "
                    f"(it has {run.steps} step(s), numbered from 0)"
                )
            if row.redacted_at is None:
                row.input_preimage = row.output_preimage = None
                row.input_salt = row.output_salt = None
                row.redacted_at = _now()
                s.add(row)
                s.commit()
                s.refresh(row)
            return row

    def list_runs(self, limit: int = 50) -> list[RunRow]:
        with self.session() as s:
            q = select(RunRow).order_by(RunRow.id.desc()).limit(limit)  # type: ignore[union-attr]
            return list(s.exec(q))

    def get_steps(self, workflow_id: str, run_id: str) -> list[StepRow]:
        with self.session() as s:
            q = (
                select(StepRow)
                .where(col(StepRow.workflow_id) == workflow_id, col(StepRow.run_id) == run_id)
                .order_by(StepRow.id)  # type: ignore[arg-type]
            )
            return list(s.exec(q))

    #: The columns :meth:`step_tuples` reads, in its tuples' order.
    STEP_TUPLE_COLUMNS = (
        "seq",
        "kind",
        "name",
        "status",
        "input_hash",
        "output_hash",
        "prev",
        "spec_version",
        "input_preimage",
        "output_preimage",
        "input_salt",
        "output_salt",
        "redacted_at",
        "anchor_id",
        "proof",
    )

    def step_tuples(self, workflow_id: str, run_id: str) -> list[tuple[Any, ...]]:
        """A run's steps as plain tuples of :data:`STEP_TUPLE_COLUMNS`, ordered by seq: one SQL
        query and no ORM objects (what export and verification read, about 10x cheaper than
        :meth:`get_steps` for long runs)."""
        cols = [getattr(StepRow, c) for c in self.STEP_TUPLE_COLUMNS]
        q = (
            select(*cols)
            .where(col(StepRow.workflow_id) == workflow_id, col(StepRow.run_id) == run_id)
            .order_by(col(StepRow.seq))
        )
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(q).all()]

    def steps_of_kind(self, workflow_id: str, run_id: str, kind: str) -> list[tuple[str, str]]:
        """``(name, status)`` of a run's steps of one kind, in order (no preimages read)."""
        with self.session() as s:
            return self._steps_of_kind(s, workflow_id, run_id, kind)

    @staticmethod
    def _steps_of_kind(
        s: Session, workflow_id: str, run_id: str, kind: str
    ) -> list[tuple[str, str]]:
        q = (
            select(StepRow.name, StepRow.status)
            .where(
                col(StepRow.workflow_id) == workflow_id,
                col(StepRow.run_id) == run_id,
                col(StepRow.kind) == kind,
            )
            .order_by(col(StepRow.seq))
        )
        return [(str(name), str(status)) for name, status in s.exec(q)]

    def get_anchors(self, ids: Iterable[int]) -> dict[int, AnchorRow]:
        ids = list(set(ids))
        if not ids:
            return {}
        with self.session() as s:
            rows = s.exec(select(AnchorRow).where(AnchorRow.id.in_(ids)))  # type: ignore[union-attr]
            return {r.id: r for r in rows if r.id is not None}

    def run_anchor_state(self, workflow_id: str, run_id: str) -> RunAnchorState:
        """A run's steps' anchors, how many are not confirmed yet and its seal: one read."""
        with self.session() as s:
            refs = [
                StepAnchorRef(int(seq), None if aid is None else int(aid))
                for seq, aid in s.exec(
                    select(StepRow.seq, StepRow.anchor_id)
                    .where(col(StepRow.workflow_id) == workflow_id, col(StepRow.run_id) == run_id)
                    .order_by(StepRow.id)  # type: ignore[arg-type]
                )
            ]
            ids = {r.anchor_id for r in refs if r.anchor_id is not None}
            anchors: dict[int, AnchorRow] = {}
            if ids:
                rows = s.exec(select(AnchorRow).where(col(AnchorRow.id).in_(ids)))
                anchors = {r.id: r for r in rows if r.id is not None}
            seal = s.exec(
                select(SealRow).where(
                    col(SealRow.workflow_id) == workflow_id, col(SealRow.run_id) == run_id
                )
            ).first()
        pending = sum(
            1
            for r in refs
            if r.anchor_id is None
            or r.anchor_id not in anchors
            or anchors[r.anchor_id].status != "confirmed"
        )
        return RunAnchorState(pending=pending, seal=seal, steps=refs, anchors=anchors)

    def unanchored_count(self, workflow_id: str, run_id: str) -> int:
        with self.session() as s:
            q = select(func.count()).where(
                StepRow.workflow_id == workflow_id,
                StepRow.run_id == run_id,
                (StepRow.anchor_id.is_(None))  # type: ignore[union-attr]
                | StepRow.anchor_id.in_(  # type: ignore[union-attr]
                    select(AnchorRow.id).where(col(AnchorRow.status) != "confirmed")
                ),
            )
            return int(s.exec(q).one())

    # ---- anchoring ------------------------------------------------------------------------

    def pending_stats(self, mode: str = "batched") -> tuple[int, datetime | None]:
        """How many steps wait for a batch, and when the oldest of them was stored."""
        with self.session() as s:
            q = select(func.count(), func.min(StepRow.created_at)).where(
                StepRow.anchor_id.is_(None),  # type: ignore[union-attr]
                StepRow.anchor_mode == mode,
            )
            count, oldest = s.exec(q).one()
            return int(count), oldest

    def claim_batch(
        self,
        limit: int,
        build: Any,
        *,
        chain_id: int,
        registry: str,
        max_seals: int = 256,
        seal_only_root: Any = None,
    ) -> tuple[AnchorRow, list[ClaimedStep]] | None:
        """Atomically put up to ``limit`` pending batched steps into a new anchor, together with
        the pending seals that become anchorable with it.

        The steps of one batch share a spec version (that of the oldest pending step):
        ``build(step_hashes, spec_version) -> (root, proofs)`` computes the version's Merkle root
        and each step's proof. A pending seal of a batched run joins the batch when every step of
        its run is in this batch or in a confirmed one (so a seal's transaction never precedes its
        steps' anchors). When no step is pending but such seals are, and ``seal_only_root`` is
        given, ``seal_only_root(seals) -> root`` makes a seal-only anchor (``leaf_count`` 0).
        The anchor row, the steps' anchor id and proofs and the seals' anchor id are written in
        one transaction, so a crash leaves either no batch or a complete pending one.
        """
        # SQLAlchemy Core: a batch is up to a few thousand rows, and the ORM's unit of work
        # (loading every step with its preimages, one UPDATE per step) cost tens of ms per claim.
        steps_t, anchors_t, seals_t = _table(StepRow), _table(AnchorRow), _table(SealRow)
        with self.engine.begin() as conn:
            if self.is_sqlite:
                # Take the write lock before reading, so two claimers never read the same steps.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            waiting = (steps_t.c.anchor_id.is_(None)) & (steps_t.c.anchor_mode == "batched")
            oldest = conn.execute(
                core_select(steps_t.c.spec_version).where(waiting).order_by(steps_t.c.id).limit(1)
            ).scalar()
            steps: list[ClaimedStep] = []
            if oldest is not None:
                q = (
                    core_select(
                        steps_t.c.id,
                        steps_t.c.workflow_id,
                        steps_t.c.run_id,
                        steps_t.c.seq,
                        steps_t.c.step_hash,
                        steps_t.c.created_at,
                    )
                    .where(waiting, steps_t.c.spec_version == oldest)
                    .order_by(steps_t.c.id)
                    .limit(limit)
                )
                if not self.is_sqlite:
                    q = q.with_for_update(skip_locked=True)
                steps = [ClaimedStep(*row) for row in conn.execute(q)]
            if not steps and seal_only_root is None:
                return None
            anchor = AnchorRow(
                mode="batched", leaf_count=len(steps), chain_id=chain_id, registry_address=registry
            )
            inserted = conn.execute(insert(anchors_t).values(anchor.model_dump(exclude={"id"})))
            anchor.id = int(inserted.inserted_primary_key[0])  # type: ignore[index]
            assert anchor.id is not None
            seals = self._anchorable_seals(
                conn, anchor.id, max_seals, claiming=[s.id for s in steps]
            )
            if not steps and not seals:
                conn.rollback()
                return None
            if steps:
                root, proofs = build([st.step_hash for st in steps], oldest)
                conn.execute(
                    update(steps_t)
                    .where(steps_t.c.id == bindparam("claimed_id"))
                    .values(anchor_id=anchor.id, proof=bindparam("claimed_proof")),
                    [
                        {"claimed_id": st.id, "claimed_proof": json.dumps(proof)}
                        for st, proof in zip(steps, proofs, strict=True)
                    ],
                )
            else:
                root = seal_only_root(seals)
            anchor.root = root
            conn.execute(update(anchors_t).where(anchors_t.c.id == anchor.id).values(root=root))
            if seals:
                conn.execute(
                    update(seals_t)
                    .where(seals_t.c.id.in_([x.id for x in seals]))
                    .values(anchor_id=anchor.id, status="claimed")
                )
                for seal in seals:
                    seal.anchor_id, seal.status = anchor.id, "claimed"
            return anchor, steps

    def _anchorable_seals(
        self, conn: Connection, anchor_id: int, limit: int, *, claiming: Sequence[int]
    ) -> list[SealRow]:
        """Pending seals whose every step is in this batch (``claiming``, step ids) or in a
        confirmed anchor: one read for the seals, one grouped read for their runs' steps."""
        seals_t, steps_t, anchors_t = _table(SealRow), _table(StepRow), _table(AnchorRow)
        pending = [
            SealRow.model_validate(dict(row._mapping))
            for row in conn.execute(
                core_select(seals_t)
                .where(seals_t.c.status == "pending", seals_t.c.anchor_mode == "batched")
                .order_by(seals_t.c.id)
                .limit(limit * 4)
            )
        ]
        if not pending:
            return []
        claimed = set(claiming)
        unconfirmed = core_select(anchors_t.c.id).where(anchors_t.c.status != "confirmed")
        counts: dict[tuple[str, str], list[int]] = {}
        for wf, run, step_id, anchor in conn.execute(
            core_select(
                steps_t.c.workflow_id, steps_t.c.run_id, steps_t.c.id, steps_t.c.anchor_id
            ).where(
                steps_t.c.workflow_id.in_({x.workflow_id for x in pending}),
                steps_t.c.anchor_id.is_(None) | steps_t.c.anchor_id.in_(unconfirmed),
            )
        ):
            # A step not yet anchored, or in an anchor not confirmed: it holds its seal back
            # unless this batch is claiming it.
            entry = counts.setdefault((str(wf), str(run)), [0])
            if anchor is not None or step_id not in claimed:
                entry[0] += 1
        stored = dict(
            ((str(wf), str(run)), int(n))
            for wf, run, n in conn.execute(
                core_select(steps_t.c.workflow_id, steps_t.c.run_id, func.count())
                .where(steps_t.c.workflow_id.in_({x.workflow_id for x in pending}))
                .group_by(steps_t.c.workflow_id, steps_t.c.run_id)
            )
        )
        out: list[SealRow] = []
        for seal in pending:
            key = (seal.workflow_id, seal.run_id)
            if stored.get(key, 0) == seal.steps and counts.get(key, [0])[0] == 0:
                out.append(seal)
                if len(out) >= limit:
                    break
        return out

    def anchor_seals(self, anchor_id: int) -> list[SealRow]:
        """The seals that ride in an anchor's transaction, in the order they are sent."""
        with self.session() as s:
            q = select(SealRow).where(col(SealRow.anchor_id) == anchor_id)
            return list(s.exec(q.order_by(SealRow.id)))  # type: ignore[arg-type]

    def pending_seal_count(self) -> int:
        with self.session() as s:
            q = select(func.count()).where(
                col(SealRow.status) == "pending", col(SealRow.anchor_mode) == "batched"
            )
            return int(s.exec(q).one())

    def save_seal(self, seal: SealRow) -> SealRow:
        """Store a run's seal once (idempotent: the same seal again returns the stored one).

        Raises:
            StoreError: another seal is stored for the run.
        """
        with self.session() as s:
            row, new = self._save_seal(s, seal)
            if new:
                s.commit()
            return row

    @staticmethod
    def _save_seal(s: Session, seal: SealRow) -> tuple[SealRow, int]:
        """:meth:`save_seal` inside session ``s`` (not committed); 1 if the seal is new."""
        old = s.exec(
            select(SealRow).where(
                col(SealRow.workflow_id) == seal.workflow_id,
                col(SealRow.run_id) == seal.run_id,
            )
        ).first()
        if old is not None:
            if (old.steps, old.head) != (seal.steps, seal.head):
                raise StoreError(
                    f"run {seal.workflow_id}/{seal.run_id} is already sealed at {old.steps} steps"
                )
            return old, 0
        s.add(seal)
        return seal, 1

    def confirm_seal(self, seal: SealRow) -> SealRow:
        """Record a per-step run's seal as confirmed by its ``sealRun`` transaction (idempotent).

        Raises:
            StoreError: another seal is stored for the run.
        """
        with self.session() as s:
            old = s.exec(
                select(SealRow).where(
                    col(SealRow.workflow_id) == seal.workflow_id,
                    col(SealRow.run_id) == seal.run_id,
                )
            ).first()
            if old is None:
                s.add(seal)
                s.commit()
                return seal
            if (old.steps, old.head) != (seal.steps, seal.head):
                raise StoreError(
                    f"run {seal.workflow_id}/{seal.run_id} is already sealed at {old.steps} steps"
                )
            old.status, old.tx_hash, old.block_number = "confirmed", seal.tx_hash, seal.block_number
            s.add(old)
            s.commit()
            return old

    def get_seal(self, workflow_id: str, run_id: str) -> SealRow | None:
        with self.session() as s:
            return s.exec(
                select(SealRow).where(
                    col(SealRow.workflow_id) == workflow_id, col(SealRow.run_id) == run_id
                )
            ).first()

    def unfinished_anchors(self) -> list[AnchorRow]:
        with self.session() as s:
            q = select(AnchorRow).where(
                col(AnchorRow.status) != "confirmed", col(AnchorRow.mode) == "batched"
            )
            return list(s.exec(q.order_by(AnchorRow.id)))  # type: ignore[arg-type]

    def confirm_anchor(
        self,
        anchor_id: int,
        *,
        tx_hash: str,
        block_number: int,
        requeue_seals: Sequence[int] = (),
    ) -> None:
        """Mark an anchor (and the seals in its transaction) confirmed; ``requeue_seals`` are
        seals that transaction turned out not to carry: they wait for a later one."""
        with self.session() as s:
            if requeue_seals:
                s.exec(
                    update(SealRow)  # type: ignore[call-overload]
                    .where(col(SealRow.id).in_(list(requeue_seals)))
                    .values(status="pending", anchor_id=None)
                )
            s.exec(
                update(AnchorRow)  # type: ignore[call-overload]
                .where(col(AnchorRow.id) == anchor_id)
                .values(
                    status="confirmed",
                    tx_hash=tx_hash,
                    block_number=block_number,
                    anchored_at=_now(),
                )
            )
            s.exec(
                update(SealRow)  # type: ignore[call-overload]
                .where(col(SealRow.anchor_id) == anchor_id)
                .values(status="confirmed", tx_hash=tx_hash, block_number=block_number)
            )
            s.commit()

    def record_step_anchor(
        self,
        workflow_id: str,
        run_id: str,
        seq: int,
        *,
        tx_hash: str,
        block_number: int,
        chain_id: int,
        registry: str,
    ) -> AnchorRow:
        """Record that a per-step checkpoint transaction is confirmed (idempotent)."""
        with self.session() as s:
            step = s.exec(
                select(StepRow).where(
                    col(StepRow.workflow_id) == workflow_id,
                    col(StepRow.run_id) == run_id,
                    col(StepRow.seq) == seq,
                )
            ).one()
            if step.anchor_id is not None:
                existing = s.get(AnchorRow, step.anchor_id)
                if existing is not None:
                    return existing
            anchor = AnchorRow(
                mode="per-step",
                leaf_count=1,
                status="confirmed",
                tx_hash=tx_hash,
                block_number=block_number,
                chain_id=chain_id,
                registry_address=registry,
                anchored_at=_now(),
            )
            s.add(anchor)
            s.flush()
            step.anchor_id = anchor.id
            s.add(step)
            s.commit()
            return anchor

    # ---- signer outbox --------------------------------------------------------------------

    def outbox_get(self, key: str) -> OutboxTx | None:
        with self.session() as s:
            return s.exec(select(OutboxTx).where(col(OutboxTx.key) == key)).first()

    def outbox_get_many(self, keys: Sequence[str]) -> dict[str, OutboxTx]:
        """The rows of those of ``keys`` that have one, by key (one query per 500 keys)."""
        out: dict[str, OutboxTx] = {}
        unique = list(dict.fromkeys(keys))
        with self.session() as s:
            for i in range(0, len(unique), 500):
                part = unique[i : i + 500]
                for row in s.exec(select(OutboxTx).where(col(OutboxTx.key).in_(part))):
                    out[row.key] = row
        return out

    def outbox_put(self, tx: OutboxTx) -> OutboxTx:
        """Persist a signed transaction; raises IntegrityError if the key or nonce is taken."""
        with self.session() as s:
            s.add(tx)
            s.commit()
            return tx

    def outbox_persist(
        self,
        session: Session,
        rows: Sequence[OutboxTx],
        *,
        chain_id: int,
        sender: str,
        next_nonce: int,
    ) -> list[str]:
        """Insert freshly signed ``rows`` and record ``next_nonce`` as the sender's next nonce,
        in one transaction on ``session`` (a :meth:`SenderLock.session`), unless one of their
        keys is closed: then nothing is stored and the closed keys are returned.

        Raises:
            IntegrityError: a key or a nonce is taken already (nothing is stored).
        """
        try:
            session.add_all(rows)
            session.flush()
            closed = self._closed_among(session, [r.key for r in rows])
            if closed:
                session.rollback()
                return sorted(closed)
            self._set_next_nonce(session, chain_id, sender, next_nonce)
            session.commit()
        except BaseException:
            session.rollback()
            raise
        return []

    @staticmethod
    def _closed_among(session: Session, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        q = select(OutboxClosure.key).where(col(OutboxClosure.key).in_(list(keys)))
        return set(session.exec(q))

    @staticmethod
    def _set_next_nonce(session: Session, chain_id: int, sender: str, next_nonce: int) -> None:
        # The counter only grows: a value below it (a stale cache) leaves it as it is.
        grown = case(
            (col(SignerNonce.next_nonce) < next_nonce, next_nonce), else_=SignerNonce.next_nonce
        )
        done = session.exec(
            update(SignerNonce)  # type: ignore[call-overload]
            .where(col(SignerNonce.chain_id) == chain_id, col(SignerNonce.sender) == sender)
            .values(next_nonce=grown, updated_at=_now())
        )
        if done.rowcount == 0:
            session.add(SignerNonce(chain_id=chain_id, sender=sender, next_nonce=next_nonce))
            session.flush()

    def next_nonce(self, session: Session, chain_id: int, sender: str) -> int | None:
        """The sender's next nonce as the processes sharing its key recorded it (None: never)."""
        row = session.get(SignerNonce, (chain_id, sender), populate_existing=True)
        return None if row is None else int(row.next_nonce)

    def set_next_nonce(self, session: Session, chain_id: int, sender: str, value: int) -> None:
        """Record ``value`` as the sender's next nonce (under its :class:`SenderLock`)."""
        self._set_next_nonce(session, chain_id, sender, value)
        session.commit()

    def outbox_replace(self, key: str, nonce: int, raw: str, tx_hash: str) -> OutboxTx:
        """Re-sign a dead transaction (its nonce taken by another) under the same key: the row
        moves to a new nonce; the dead variants stay as attempts (kind ``resigned``)."""
        with self.session() as s:
            row = s.exec(select(OutboxTx).where(col(OutboxTx.key) == key)).one()
            assert row.id is not None
            if not s.exec(select(OutboxAttempt).where(OutboxAttempt.outbox_id == row.id)).first():
                s.add(
                    OutboxAttempt(
                        outbox_id=row.id, tx_hash=row.tx_hash, raw=row.raw, kind="original"
                    )
                )
            s.add(OutboxAttempt(outbox_id=row.id, tx_hash=tx_hash, raw=raw, kind="resigned"))
            row.nonce, row.raw, row.tx_hash, row.status = nonce, raw, tx_hash, "signed"
            row.block_number = row.block_hash = None
            row.updated_at = _now()
            s.add(row)
            s.commit()
            return row

    def outbox_add_variant(self, key: str, raw: str, tx_hash: str, kind: str) -> OutboxTx:
        """Record another signed variant at the row's nonce (a fee-bumped replacement, or the
        no-op that voids it) before it is broadcast; it becomes the row's current variant."""
        with self.session() as s:
            row = s.exec(select(OutboxTx).where(col(OutboxTx.key) == key)).one()
            assert row.id is not None
            known = {
                a.tx_hash
                for a in s.exec(select(OutboxAttempt).where(OutboxAttempt.outbox_id == row.id))
            }
            if row.tx_hash not in known:
                s.add(
                    OutboxAttempt(
                        outbox_id=row.id,
                        tx_hash=row.tx_hash,
                        raw=row.raw,
                        kind="original" if not known else "replacement",
                    )
                )
            if tx_hash not in known:
                s.add(OutboxAttempt(outbox_id=row.id, tx_hash=tx_hash, raw=raw, kind=kind))
            row.raw, row.tx_hash, row.updated_at = raw, tx_hash, _now()
            s.add(row)
            s.commit()
            return row

    def outbox_variants(self, row: OutboxTx) -> list[OutboxAttempt]:
        """Every signed variant of ``row`` at its nonce, the current one first."""
        return self.outbox_variants_many([row])[0]

    def outbox_variants_many(self, rows: Sequence[OutboxTx]) -> list[list[OutboxAttempt]]:
        """:meth:`outbox_variants` of each of ``rows``, in one query per 500 rows."""
        by_id: dict[int | None, list[OutboxAttempt]] = {}
        ids = list(dict.fromkeys(r.id for r in rows if r.id is not None))
        with self.session() as s:
            for i in range(0, len(ids), 500):
                found = s.exec(
                    select(OutboxAttempt)
                    .where(col(OutboxAttempt.outbox_id).in_(ids[i : i + 500]))
                    .order_by(col(OutboxAttempt.id).desc())
                )
                for a in found:
                    by_id.setdefault(a.outbox_id, []).append(a)
        return [self._variants_of(row, by_id.get(row.id, [])) for row in rows]

    @staticmethod
    def _variants_of(row: OutboxTx, attempts: list[OutboxAttempt]) -> list[OutboxAttempt]:
        current = [a for a in attempts if a.tx_hash == row.tx_hash]
        if not current:
            current = [
                OutboxAttempt(
                    outbox_id=row.id or 0, tx_hash=row.tx_hash, raw=row.raw, kind="original"
                )
            ]
        return current + [a for a in attempts if a.tx_hash != row.tx_hash]

    def outbox_mark(
        self,
        key: str,
        status: str,
        block_number: int | None,
        *,
        block_hash: str | None = None,
        tx_hash: str | None = None,
        raw: str | None = None,
    ) -> None:
        self.outbox_marks([(key, status, block_number, block_hash, tx_hash, raw)])

    def outbox_marks(
        self, marks: Sequence[tuple[str, str, int | None, str | None, str | None, str | None]]
    ) -> None:
        """Set (key, status, block number, block hash, mined tx hash, its raw bytes) of several
        rows in one transaction; a None hash or raw leaves the row's current variant."""
        table = OutboxTx.__table__  # type: ignore[attr-defined]
        now = _now()
        same: list[dict[str, Any]] = []
        moved: list[dict[str, Any]] = []
        for key, status, block, block_hash, tx_hash, raw in marks:
            params = {"k": key, "st": status, "bn": block, "bh": block_hash, "at": now}
            if tx_hash is not None and raw is not None:
                moved.append(params | {"th": tx_hash, "rw": raw})
            else:
                same.append(params)
        values: dict[str, Any] = {
            "status": bindparam("st"),
            "block_number": bindparam("bn"),
            "block_hash": bindparam("bh"),
            "updated_at": bindparam("at"),
        }
        with self.session() as s:
            conn = s.connection()
            if same:  # one statement, executed for every row
                conn.execute(
                    update(table).where(table.c.key == bindparam("k")).values(values), same
                )
            if moved:
                stmt = update(table).where(table.c.key == bindparam("k"))
                conn.execute(
                    stmt.values(values | {"tx_hash": bindparam("th"), "raw": bindparam("rw")}),
                    moved,
                )
            s.commit()

    def outbox_max_nonce(self, chain_id: int, sender: str) -> int | None:
        with self.session() as s:
            q = select(func.max(OutboxTx.nonce)).where(
                col(OutboxTx.chain_id) == chain_id, col(OutboxTx.sender) == sender
            )
            value = s.exec(q).one()
            return None if value is None else int(value)

    def outbox_unmined(self, chain_id: int, sender: str) -> list[OutboxTx]:
        with self.session() as s:
            q = select(OutboxTx).where(
                col(OutboxTx.chain_id) == chain_id,
                col(OutboxTx.sender) == sender,
                col(OutboxTx.status) == "signed",
            )
            return list(s.exec(q.order_by(OutboxTx.nonce)))  # type: ignore[arg-type]

    # ---- webhook deliveries -----------------------------------------------------------------

    def delivery_get(self, webhook_id: str) -> WebhookDelivery | None:
        """The delivery recorded for ``webhook_id``, if any."""
        with self.session() as s:
            return s.exec(
                select(WebhookDelivery).where(col(WebhookDelivery.webhook_id) == webhook_id)
            ).first()

    def delivery_bind(
        self, webhook_id: str, route: str, workflow_id: str, run_id: str | None = None
    ) -> tuple[WebhookDelivery, bool]:
        """Bind ``webhook_id`` to ``route`` and ``workflow_id`` on its first use.

        Returns ``(row, mine)``. ``mine`` is True when this call recorded the delivery, or took
        up again a ``failed`` or ``refused`` delivery of the same route and run (a sender's
        retry), so the caller acts on it; False when the row belongs to another route or run
        (the caller refuses) or is ``pending``/``accepted`` (a duplicate). Atomic under
        concurrency: of many equal calls exactly one gets ``mine``.

        One transaction on one connection: an ``INSERT ... ON CONFLICT DO NOTHING`` (a first
        delivery ends there), then, for a webhook-id seen before, the row and a conditional
        take-over of a retryable one.
        """
        table = WebhookDelivery.__table__  # type: ignore[attr-defined]
        values: dict[str, Any] = {
            "webhook_id": webhook_id,
            "workflow_type": route,
            "workflow_id": workflow_id,
            "run_id": run_id,
            "status": "pending",
            "detail": None,
            "created_at": _now(),
        }
        with self.engine.begin() as conn:
            if _insert_if_absent(conn, table, values, "webhook_id"):
                return WebhookDelivery(**values), True
            found = (
                conn.execute(core_select(table).where(table.c.webhook_id == webhook_id))
                .mappings()
                .first()
            )
            if found is None:  # pragma: no cover - deleted in between; bind it again
                row = None
            else:
                row = WebhookDelivery(**found)
                if row.workflow_type != route or row.workflow_id != workflow_id:
                    return row, False
                if row.status not in DELIVERY_RETRYABLE:
                    return row, False
                taken = conn.execute(
                    update(table)
                    .where(table.c.webhook_id == webhook_id, table.c.status == row.status)
                    .values(status="pending", detail=None)
                )
                if taken.rowcount == 1:
                    row.status, row.detail = "pending", None
                    return row, True
        if row is None:  # pragma: no cover
            return self.delivery_bind(webhook_id, route, workflow_id, run_id)
        fresh = self.delivery_get(webhook_id)  # another retry took it up first
        return (fresh or row), False

    def delivery_finish(
        self,
        webhook_id: str,
        status: str,
        *,
        run_id: str | None = None,
        detail: str | None = None,
    ) -> WebhookDelivery | None:
        """Record what became of a bound delivery: ``accepted``, ``refused`` or ``failed``.

        ``run_id`` is filled in only if none is recorded yet (first writer wins); ``detail`` is
        cut to 300 characters.
        """
        if status not in ("accepted", "refused", "failed"):
            raise ValueError(f"unknown delivery status {status!r}")
        with self.session() as s:
            row = s.exec(
                select(WebhookDelivery).where(col(WebhookDelivery.webhook_id) == webhook_id)
            ).first()
            if row is None:
                return None
            row.status = status
            row.detail = bounded(detail, 300) if detail else None
            if run_id is not None and row.run_id is None:
                row.run_id = run_id
            s.add(row)
            s.commit()
            return row

    def delivery_set_run(self, webhook_id: str, run_id: str) -> str:
        """Fill in the run of a bound start delivery (first writer wins) and mark it accepted;
        returns the recorded run. One statement (``UPDATE ... RETURNING``) where the database
        has it."""
        table = WebhookDelivery.__table__  # type: ignore[attr-defined]
        params = {"b_webhook_id": webhook_id, "b_run_id": run_id}
        with self.engine.begin() as conn:
            if conn.dialect.update_returning:
                recorded = conn.execute(_SET_RUN_RETURNING, params).scalar()
            else:  # pragma: no cover - SQLite >= 3.35 and PostgreSQL have RETURNING
                conn.execute(_SET_RUN, params)
                recorded = conn.execute(
                    core_select(table.c.run_id).where(table.c.webhook_id == webhook_id)
                ).scalar()
        return recorded or run_id

    # ---- invoice reconciliations ------------------------------------------------------------

    def reconcile_claim(
        self, order_id: str, invoice_number: str, workflow_id: str, run_id: str
    ) -> InvoiceReconciliation:
        """Record that an invoice reconciled ``order_id``; the first invoice wins.

        Returns the row in force: this call's, or the earlier one (another invoice, or this run's
        own earlier attempt) when the order was reconciled before.
        """
        with self.session() as s:
            s.add(
                InvoiceReconciliation(
                    order_id=order_id.lower(),
                    invoice_number=invoice_number,
                    workflow_id=workflow_id,
                    run_id=run_id,
                )
            )
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
        row = self.reconciliation_of(order_id)
        assert row is not None
        return row

    def reconciliation_of(self, order_id: str) -> InvoiceReconciliation | None:
        """The invoice that reconciled ``order_id``, if any."""
        with self.session() as s:
            return s.exec(
                select(InvoiceReconciliation).where(
                    col(InvoiceReconciliation.order_id) == order_id.lower()
                )
            ).first()

    def outbox_from_nonce(
        self, chain_id: int, sender: str, nonce: int, *, below: int | None = None
    ) -> list[OutboxTx]:
        """The sender's rows with ``nonce <= row.nonce (< below)``, in nonce order."""
        with self.session() as s:
            q = select(OutboxTx).where(
                col(OutboxTx.chain_id) == chain_id,
                col(OutboxTx.sender) == sender,
                col(OutboxTx.nonce) >= nonce,
            )
            if below is not None:
                q = q.where(col(OutboxTx.nonce) < below)
            return list(s.exec(q.order_by(OutboxTx.nonce)))  # type: ignore[arg-type]

    def outbox_reopen(self, key: str) -> None:
        """The chain lost the row's transaction: it is ``signed`` again (not final)."""
        self.outbox_marks([(key, "signed", None, None, None, None)])

    def outbox_close(self, key: str, reason: str = "") -> OutboxTx | None:
        """Close ``key``: its owner says the effect must not happen (any more), e.g. a
        workflow compensated the step. Nothing is signed for the key afterwards, and a
        transaction of it that the chain loses is voided instead of re-sent.

        Returns the key's outbox row as it is once the closure is committed: None means no
        transaction was ever signed for it and none ever will be; a row means one was (look
        at its status). A send racing with the closure either committed first (and is
        returned) or sees the closure and signs nothing.
        """
        with self.session() as s:
            if self.is_sqlite:
                s.connection().exec_driver_sql("BEGIN IMMEDIATE")
            else:
                # Waits for a send persisting right now (it holds ROW EXCLUSIVE on outbox), so
                # its row is visible below, or it sees the closure first.
                s.exec(text("LOCK TABLE outbox IN SHARE MODE"))  # type: ignore[call-overload]
            if s.get(OutboxClosure, key) is None:
                s.add(OutboxClosure(key=key, reason=reason[:255]))
                try:
                    s.flush()
                except IntegrityError:
                    s.rollback()
                    return self.outbox_get(key)
            row = s.exec(select(OutboxTx).where(col(OutboxTx.key) == key)).first()
            s.commit()
            return row

    def outbox_states(self, keys: Sequence[str]) -> tuple[dict[str, OutboxTx], set[str]]:
        """The rows of ``keys`` (by key) and which of them are closed, in one session: what
        many waiting sends check at once."""
        unique = list(dict.fromkeys(keys))
        rows: dict[str, OutboxTx] = {}
        closed: set[str] = set()
        with self.session() as s:
            for i in range(0, len(unique), 500):
                part = unique[i : i + 500]
                for row in s.exec(select(OutboxTx).where(col(OutboxTx.key).in_(part))):
                    rows[row.key] = row
                closed |= self._closed_among(s, part)
        return rows, closed

    def outbox_is_closed(self, key: str) -> bool:
        with self.session() as s:
            return s.get(OutboxClosure, key) is not None

    # ---- leases ---------------------------------------------------------------------------

    def _db_now(self) -> Any:
        """The database's clock in seconds since the epoch (one clock for every host)."""
        if self.is_sqlite:
            return text("(julianday('now') - 2440587.5) * 86400.0")
        return text("extract(epoch from clock_timestamp())")

    def lease_acquire(
        self, name: str, holder: str, ttl: float, *, steal_from: str | None = None
    ) -> tuple[bool, LeaseRow | None]:
        """Take or renew lease ``name`` for ``ttl`` seconds of the database's clock.

        Succeeds when nobody holds it, ``holder`` holds it already, its holder's time ran out,
        or ``steal_from`` names the current holder (known to be dead). Returns (acquired, the
        lease as it is now).
        """
        for _ in range(2):
            with self.session() as s:
                if self.is_sqlite:
                    s.connection().exec_driver_sql("BEGIN IMMEDIATE")
                now = float(s.exec(select(self._db_now())).one())  # type: ignore[call-overload]
                q = select(LeaseRow).where(col(LeaseRow.name) == name)
                if not self.is_sqlite:
                    q = q.with_for_update()
                row = s.exec(q).first()
                host, pid = socket.gethostname(), os.getpid()
                if row is None:
                    row = LeaseRow(
                        name=name,
                        holder=holder,
                        host=host,
                        pid=pid,
                        epoch=1,
                        acquired_at=now,
                        expires_at=now + ttl,
                    )
                    s.add(row)
                    try:
                        s.commit()
                    except IntegrityError:
                        continue  # someone created it meanwhile: decide again
                    return True, row
                if row.holder == holder:
                    row.expires_at = now + ttl
                elif row.expires_at < now or (steal_from is not None and row.holder == steal_from):
                    row.holder, row.host, row.pid = holder, host, pid
                    row.epoch += 1
                    row.acquired_at, row.expires_at = now, now + ttl
                else:
                    s.expunge(row)  # keep its loaded values; closing the session ends the txn
                    return False, row
                s.add(row)
                s.commit()
                return True, row
        return False, self.lease_get(name)

    def lease_release(self, name: str, holder: str) -> None:
        with self.session() as s:
            s.exec(
                update(LeaseRow)  # type: ignore[call-overload]
                .where(col(LeaseRow.name) == name, col(LeaseRow.holder) == holder)
                .values(expires_at=0.0)
            )
            s.commit()

    def lease_get(self, name: str) -> LeaseRow | None:
        with self.session() as s:
            return s.get(LeaseRow, name)

    def lease_delete(self, name: str) -> None:
        """Forget a lease (tests and operators)."""
        with self.session() as s:
            s.exec(delete(LeaseRow).where(col(LeaseRow.name) == name))  # type: ignore[call-overload]
            s.commit()


#: Prepared ``INSERT ... ON CONFLICT DO NOTHING`` statements: (dialect, table, columns, key) →
#: statement. Built once, so each execution only binds its values (SQLAlchemy caches the SQL).
_INSERT_IF_ABSENT: dict[tuple[str, str, tuple[str, ...], str], Any] = {}


def _insert_if_absent(conn: Connection, table: Any, values: dict[str, Any], key: str) -> bool:
    """Insert ``values`` unless a row with the same unique ``key`` exists; True if inserted.

    SQLite and PostgreSQL: one ``INSERT ... ON CONFLICT (key) DO NOTHING RETURNING``. Others: a
    plain insert in a savepoint, a unique violation meaning "already there".
    """
    name = conn.dialect.name
    if name not in ("sqlite", "postgresql"):  # pragma: no cover - not a supported store
        try:
            with conn.begin_nested():
                conn.execute(table.insert().values(**values))
        except IntegrityError:
            return False
        return True
    cache_key = (name, table.name, tuple(values), key)
    stmt = _INSERT_IF_ABSENT.get(cache_key)
    if stmt is None:
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            base: Any = sqlite_insert(table)
        else:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            base = pg_insert(table)
        # RETURNING says whether a row went in (a driver's rowcount need not, once the dialect
        # adds its own RETURNING for the primary key).
        stmt = (
            base.values({c: bindparam(c) for c in values})
            .on_conflict_do_nothing(index_elements=[key])
            .returning(table.c[key])
        )
        _INSERT_IF_ABSENT[cache_key] = stmt
    return conn.execute(stmt, values).first() is not None


def _create_private_file(path: str) -> None:
    """Create the SQLite file ``path`` (mode 0600) if it is absent; never open it if it exists.

    Opening and closing a file descriptor of a database this process already has open would
    release every POSIX lock the process holds on it (``fcntl`` locks belong to the process,
    not to the descriptor). SQLite's own connections keep a shared lock to tell other processes
    they are there; without it, another process closing its last connection believes it is the
    last one, checkpoints and deletes the WAL under this process's live connections (seen as
    ``SQLITE_IOERR_SHORT_READ``, and a path to a corrupt store). So a second ``Store`` on the
    same file in one process must not touch the file: ``O_EXCL`` creates it only when absent.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
