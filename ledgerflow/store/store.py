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

from sqlalchemy import Index, UniqueConstraint, event, func, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from ledgerflow.errors import StoreError

__all__ = [
    "SCHEMA_VERSION",
    "AnchorRow",
    "OutboxTx",
    "RunRow",
    "StepRow",
    "Store",
    "WebhookDelivery",
]

SCHEMA_VERSION = 1


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
_UPGRADES: dict[int, Sequence[str]] = {}


class Store:
    """Access to the store. One instance per process; thread-safe through SQLAlchemy's pool."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        connect_args: dict[str, Any] = {}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
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
        self, *, workflow_id: str, run_id: str, workflow_type: str, run_key: str, anchor_mode: str
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

    def steps_of_kind(self, workflow_id: str, run_id: str, kind: str) -> list[tuple[str, str]]:
        """``(name, status)`` of a run's steps of one kind, in order (no preimages read)."""
        with self.session() as s:
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
        self, limit: int, build: Any, *, chain_id: int, registry: str
    ) -> tuple[AnchorRow, list[StepRow]] | None:
        """Atomically put up to ``limit`` pending batched steps into a new anchor.

        ``build(step_hashes) -> (root, proofs)`` computes the Merkle root and each step's proof;
        the anchor row, the steps' anchor id and their proofs are written in one transaction, so a
        crash leaves either no batch or a complete pending one (resumed by the anchorer).
        """
        with self.session() as s:
            if self.is_sqlite:
                # Take the write lock before reading, so two claimers never read the same steps.
                s.connection().exec_driver_sql("BEGIN IMMEDIATE")
            q = (
                select(StepRow)
                .where(
                    StepRow.anchor_id.is_(None),  # type: ignore[union-attr]
                    StepRow.anchor_mode == "batched",
                )
                .order_by(StepRow.id)  # type: ignore[arg-type]
                .limit(limit)
            )
            if not self.is_sqlite:
                q = q.with_for_update(skip_locked=True)
            steps = list(s.exec(q))
            if not steps:
                return None
            root, proofs = build([st.step_hash for st in steps])
            anchor = AnchorRow(
                mode="batched",
                root=root,
                leaf_count=len(steps),
                chain_id=chain_id,
                registry_address=registry,
            )
            s.add(anchor)
            s.flush()
            for st, proof in zip(steps, proofs, strict=True):
                st.anchor_id = anchor.id
                st.proof = json.dumps(proof)
                s.add(st)
            s.commit()
            return anchor, steps

    def unfinished_anchors(self) -> list[AnchorRow]:
        with self.session() as s:
            q = select(AnchorRow).where(
                col(AnchorRow.status) != "confirmed", col(AnchorRow.mode) == "batched"
            )
            return list(s.exec(q.order_by(AnchorRow.id)))  # type: ignore[arg-type]

    def confirm_anchor(self, anchor_id: int, *, tx_hash: str, block_number: int) -> None:
        with self.session() as s:
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

    # ---- webhook deliveries -----------------------------------------------------------------

    def delivery_get(self, webhook_id: str) -> WebhookDelivery | None:
        """The delivery recorded for ``webhook_id``, if any."""
        with self.session() as s:
            return s.exec(
                select(WebhookDelivery).where(col(WebhookDelivery.webhook_id) == webhook_id)
            ).first()

    def delivery_claim(
        self, webhook_id: str, route: str, workflow_id: str, run_id: str | None
    ) -> WebhookDelivery | None:
        """Record a delivery; ``None`` if this call recorded it, else the row recorded before."""
        existing = self.delivery_get(webhook_id)
        if existing is not None:
            return existing
        with self.session() as s:
            s.add(
                WebhookDelivery(
                    webhook_id=webhook_id,
                    workflow_type=route,
                    workflow_id=workflow_id,
                    run_id=run_id,
                )
            )
            try:
                s.commit()
                return None
            except IntegrityError:
                s.rollback()
        existing = self.delivery_get(webhook_id)
        if existing is None:  # pragma: no cover - deleted in between; treat as ours
            return self.delivery_claim(webhook_id, route, workflow_id, run_id)
        return existing

    def delivery_set_run(self, webhook_id: str, run_id: str) -> str:
        """Fill in the run of a claimed delivery (first writer wins); returns the recorded run."""
        with self.session() as s:
            row = s.exec(
                select(WebhookDelivery).where(col(WebhookDelivery.webhook_id) == webhook_id)
            ).first()
            if row is None:  # pragma: no cover - the claim was removed; nothing to fill in
                return run_id
            if row.run_id is None:
                row.run_id = run_id
                s.add(row)
                s.commit()
            return row.run_id or run_id

    def delivery_release(self, webhook_id: str) -> None:
        """Forget a claim whose action failed, so the sender's retry is tried again."""
        with self.session() as s:
            row = s.exec(
                select(WebhookDelivery).where(col(WebhookDelivery.webhook_id) == webhook_id)
            ).first()
            if row is not None:
                s.delete(row)
                s.commit()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
