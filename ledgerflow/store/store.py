"""The off-chain store: runs, step preimages, anchors, proofs and the signer's outbox.

SQLite by default, PostgreSQL via ``LEDGERFLOW_DATABASE_URL``. The schema is created and upgraded
by :meth:`Store.migrate` (see docs/operations.md): a ``ledgerflow_schema`` row holds the version and
each upgrade step runs once, in order.

The API is synchronous (SQLAlchemy); async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Index, UniqueConstraint, event, func, inspect, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from ledgerflow.errors import StoreError

__all__ = [
    "SCHEMA_VERSION",
    "AnchorRow",
    "OutboxTx",
    "RunRow",
    "SealRow",
    "StepRow",
    "Store",
    "WebhookDelivery",
]

SCHEMA_VERSION = 2


def _now() -> datetime:
    return datetime.now(UTC)


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
    """A signed transaction, persisted before broadcast so that a retry rebroadcasts it."""

    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("chain_id", "sender", "nonce"),)
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True, max_length=255)
    chain_id: int
    sender: str = Field(max_length=42)
    nonce: int
    raw: str
    tx_hash: str = Field(max_length=66)
    status: str = Field(default="signed", max_length=16)  # signed | mined | reverted
    block_number: int | None = None
    created_at: datetime = Field(default_factory=_now)


class WebhookDelivery(SQLModel, table=True):
    """A webhook delivery accepted once; replays map back to the same run."""

    __tablename__ = "webhook_deliveries"
    id: int | None = Field(default=None, primary_key=True)
    webhook_id: str = Field(unique=True, max_length=255)
    workflow_type: str = Field(max_length=128)
    workflow_id: str = Field(max_length=255)
    run_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=_now)


#: Upgrade steps: version N -> N+1. Append only; never edit a released step.
#: A step is an SQL statement, or ``(table, column, type)``: add that column unless it exists.
_UPGRADES: dict[int, Sequence[str | tuple[str, str, str]]] = {
    # 1 -> 2: checkpoint spec v2 (salted commitments, redaction, seals). The seals table is
    # created by create_all; existing rows are version 1 runs.
    1: (
        ("runs", "spec_version", "INTEGER NOT NULL DEFAULT 1"),
        ("steps", "spec_version", "INTEGER NOT NULL DEFAULT 1"),
        ("steps", "input_salt", "VARCHAR(66)"),
        ("steps", "output_salt", "VARCHAR(66)"),
        ("steps", "redacted_at", "TIMESTAMP"),
    ),
}


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
            if path and path != ":memory:":
                if not create and not Path(path).is_file():
                    raise StoreError(
                        f"no store at {url} (from LEDGERFLOW_DATABASE_URL or the default, "
                        f"relative to {Path.cwd()}); run this where the store is, or set "
                        "LEDGERFLOW_DATABASE_URL"
                    )
                if create:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
            connect_args = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(url, echo=echo, connect_args=connect_args)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def migrate(self) -> int:
        """Create missing tables and run pending upgrade steps; returns the schema version."""
        SQLModel.metadata.create_all(self.engine)
        with Session(self.engine) as s:
            row = s.get(SchemaVersion, 1)
            if row is None:
                s.add(SchemaVersion(id=1, version=SCHEMA_VERSION))
                s.commit()
                return SCHEMA_VERSION
            while row.version < SCHEMA_VERSION:
                for stmt in _UPGRADES.get(row.version, ()):
                    if isinstance(stmt, tuple):
                        table, column, ddl = stmt
                        have = {c["name"] for c in inspect(s.connection()).get_columns(table)}
                        if column in have:
                            continue
                        stmt = f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"
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
        with self.session() as s:
            row = s.exec(
                select(RunRow).where(
                    col(RunRow.workflow_id) == workflow_id, col(RunRow.run_id) == run_id
                )
            ).first()
            if row is not None:
                return row
            row = RunRow(
                workflow_id=workflow_id,
                run_id=run_id,
                workflow_type=workflow_type,
                run_key=run_key,
                anchor_mode=anchor_mode,
                spec_version=spec_version,
            )
            s.add(row)
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                return self.ensure_run(
                    workflow_id=workflow_id,
                    run_id=run_id,
                    workflow_type=workflow_type,
                    run_key=run_key,
                    anchor_mode=anchor_mode,
                    spec_version=spec_version,
                )
            return row

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
        wf, run = steps[0].workflow_id, steps[0].run_id
        with self.session() as s:
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
            for st in steps:
                old = existing.get(st.seq)
                if old is None:
                    s.add(st)
                    out.append(st)
                elif old.step_hash != st.step_hash:
                    raise StoreError(
                        f"step {st.seq} of {wf}/{run} is already stored with another hash"
                    )
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
            s.commit()
            return out

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

    def get_anchors(self, ids: Iterable[int]) -> dict[int, AnchorRow]:
        ids = list(set(ids))
        if not ids:
            return {}
        with self.session() as s:
            rows = s.exec(select(AnchorRow).where(AnchorRow.id.in_(ids)))  # type: ignore[union-attr]
            return {r.id: r for r in rows if r.id is not None}

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
    ) -> tuple[AnchorRow, list[StepRow]] | None:
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
        with self.session() as s:
            if self.is_sqlite:
                # Take the write lock before reading, so two claimers never read the same steps.
                s.connection().exec_driver_sql("BEGIN IMMEDIATE")
            oldest = s.exec(
                select(StepRow.spec_version)
                .where(
                    StepRow.anchor_id.is_(None),  # type: ignore[union-attr]
                    StepRow.anchor_mode == "batched",
                )
                .order_by(StepRow.id)  # type: ignore[arg-type]
                .limit(1)
            ).first()
            steps: list[StepRow] = []
            if oldest is not None:
                q = (
                    select(StepRow)
                    .where(
                        StepRow.anchor_id.is_(None),  # type: ignore[union-attr]
                        StepRow.anchor_mode == "batched",
                        StepRow.spec_version == oldest,
                    )
                    .order_by(StepRow.id)  # type: ignore[arg-type]
                    .limit(limit)
                )
                if not self.is_sqlite:
                    q = q.with_for_update(skip_locked=True)
                steps = list(s.exec(q))
            if not steps and seal_only_root is None:
                return None
            anchor = AnchorRow(
                mode="batched", leaf_count=len(steps), chain_id=chain_id, registry_address=registry
            )
            s.add(anchor)
            s.flush()
            for st in steps:
                st.anchor_id = anchor.id
                s.add(st)
            s.flush()
            seals = self._anchorable_seals(s, anchor.id, max_seals)  # type: ignore[arg-type]
            if not steps and not seals:
                s.rollback()
                return None
            if steps:
                root, proofs = build([st.step_hash for st in steps], oldest)
                for st, proof in zip(steps, proofs, strict=True):
                    st.proof = json.dumps(proof)
                    s.add(st)
            else:
                root = seal_only_root(seals)
            anchor.root = root
            s.add(anchor)
            for seal in seals:
                seal.anchor_id = anchor.id
                seal.status = "claimed"
                s.add(seal)
            s.commit()
            return anchor, steps

    def _anchorable_seals(self, s: Session, anchor_id: int, limit: int) -> list[SealRow]:
        pending = list(
            s.exec(
                select(SealRow)
                .where(col(SealRow.status) == "pending", col(SealRow.anchor_mode) == "batched")
                .order_by(SealRow.id)  # type: ignore[arg-type]
                .limit(limit * 4)
            )
        )
        out: list[SealRow] = []
        for seal in pending:
            stored, waiting = s.exec(
                select(
                    func.count(),
                    func.count().filter(
                        StepRow.anchor_id.is_(None)  # type: ignore[union-attr]
                        | (
                            (StepRow.anchor_id != anchor_id)
                            & StepRow.anchor_id.in_(  # type: ignore[union-attr]
                                select(AnchorRow.id).where(col(AnchorRow.status) != "confirmed")
                            )
                        )
                    ),
                ).where(StepRow.workflow_id == seal.workflow_id, StepRow.run_id == seal.run_id)
            ).one()
            if int(stored) == seal.steps and int(waiting) == 0:
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
            old = s.exec(
                select(SealRow).where(
                    col(SealRow.workflow_id) == seal.workflow_id,
                    col(SealRow.run_id) == seal.run_id,
                )
            ).first()
            if old is not None:
                if (old.steps, old.head) != (seal.steps, seal.head):
                    raise StoreError(
                        f"run {seal.workflow_id}/{seal.run_id} is already sealed at "
                        f"{old.steps} steps"
                    )
                return old
            s.add(seal)
            s.commit()
            return seal

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

    def outbox_put(self, tx: OutboxTx) -> OutboxTx:
        """Persist a signed transaction; raises IntegrityError if the key or nonce is taken."""
        with self.session() as s:
            s.add(tx)
            s.commit()
            return tx

    def outbox_replace(self, key: str, nonce: int, raw: str, tx_hash: str) -> OutboxTx:
        """Re-sign a dead transaction (its nonce taken by another) under the same key."""
        with self.session() as s:
            row = s.exec(select(OutboxTx).where(col(OutboxTx.key) == key)).one()
            row.nonce, row.raw, row.tx_hash, row.status = nonce, raw, tx_hash, "signed"
            s.add(row)
            s.commit()
            return row

    def outbox_mark(self, key: str, status: str, block_number: int | None) -> None:
        with self.session() as s:
            s.exec(
                update(OutboxTx)  # type: ignore[call-overload]
                .where(col(OutboxTx.key) == key)
                .values(status=status, block_number=block_number)
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


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
