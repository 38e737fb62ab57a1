"""The store on SQLite and on the real PostgreSQL server: migrations, idempotent step saving,
atomic batch claiming under concurrency, the outbox's nonce uniqueness, anchoring state, and the
verification of a 10,000-step synthetic run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from ledgerflow.checkpoint.anchorer import build_batch
from ledgerflow.checkpoint.canonical import canonical_bytes, keccak, to_hex
from ledgerflow.checkpoint.merkle import MultiVerifier, verify_proof
from ledgerflow.checkpoint.records import StepRecord, commitment, leaf_hash, next_head, run_key
from ledgerflow.checkpoint.verify import _Findings, verify_steps
from ledgerflow.errors import StoreError
from ledgerflow.store import SCHEMA_VERSION, OutboxTx, SealRow, StepRow, Store
from tests.test_proofs import copy_store

REGISTRY = "0x" + "5f" * 20
CHAIN_ID = 31337


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> Iterator[Store]:
    """A fresh, migrated store: a SQLite file, or a database of its own on the PG server."""
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path}/store.db")
        s.migrate()
        yield s
        s.engine.dispose()
        return
    url = make_url(pg_url)
    name = f"lf_test_{uuid.uuid4().hex[:12]}"
    admin_dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    s = Store(url.set(database=name).render_as_string(hide_password=False))
    try:
        s.migrate()
        yield s
    finally:
        s.engine.dispose()
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_run(
    store: Store,
    n: int,
    *,
    workflow_id: str | None = None,
    mode: str = "batched",
    start: int = 0,
    spec: int = 1,
) -> tuple[str, str, list[StepRow]]:
    """A synthetic run of ``n`` consistent steps (ledgerflow.checkpoint), registered in ``store``
    but not saved; steps ``start..n-1`` are returned. ``spec=2``: salted commitments, and the last
    step is the run's outcome step."""
    wf = workflow_id or f"wf-{uuid.uuid4().hex[:8]}"
    run = str(uuid.uuid4())
    rk = to_hex(run_key(wf, run, spec=spec))
    store.ensure_run(
        workflow_id=wf,
        run_id=run,
        workflow_type="Synthetic",
        run_key=rk,
        anchor_mode=mode,
        spec_version=spec,
    )
    rows: list[StepRow] = []
    head = rk
    for seq in range(n):
        last = spec == 2 and seq == n - 1
        if last:
            kind, name = "outcome", "run.outcome"
            inp = canonical_bytes({"workflow_type": "Synthetic", "status": "completed"})
            out = canonical_bytes({"outcome": "completed", "reason": ""})
        else:
            kind, name = ("activity" if seq % 3 else "llm"), f"step_{seq % 7}"
            inp = canonical_bytes({"seq": seq, "order": f"PO-{seq}", "amount": seq * 1250})
            out = canonical_bytes({"ok": True, "tx": keccak(seq.to_bytes(8, "big"))})
        salt_in = os.urandom(32) if spec == 2 else None
        salt_out = os.urandom(32) if spec == 2 else None
        rec = StepRecord(
            v=spec,  # type: ignore[arg-type]
            run=rk,
            seq=seq,
            kind=kind,  # type: ignore[arg-type]
            name=name,
            input=to_hex(commitment(salt_in, inp)),
            output=to_hex(commitment(salt_out, out)),
            status="ok",
            prev=head,
        )
        sh = rec.hash()
        new_head = to_hex(next_head(bytes.fromhex(head[2:]), sh))
        if seq >= start:
            rows.append(
                StepRow(
                    workflow_id=wf,
                    run_id=run,
                    seq=seq,
                    kind=rec.kind,
                    name=rec.name,
                    status=rec.status,
                    input_hash=rec.input,
                    output_hash=rec.output,
                    prev=head,
                    step_hash=to_hex(sh),
                    head=new_head,
                    input_preimage=inp.decode(),
                    output_preimage=out.decode(),
                    spec_version=spec,
                    input_salt=to_hex(salt_in) if salt_in else None,
                    output_salt=to_hex(salt_out) if salt_out else None,
                    anchor_mode=mode,
                )
            )
        head = new_head
    return wf, run, rows


def seal_of(store: Store, rows: list[StepRow], mode: str = "batched") -> SealRow:
    """Store the pending seal of a run whose last stored step is ``rows[-1]``."""
    last = rows[-1]
    run = store.get_run(last.workflow_id, last.run_id)
    return store.save_seal(
        SealRow(
            workflow_id=last.workflow_id,
            run_id=last.run_id,
            run_key=run.run_key,
            steps=last.seq + 1,
            head=last.head,
            anchor_mode=mode,
        )
    )


def _copy(rows: list[StepRow]) -> list[StepRow]:
    """Fresh ORM objects (a saved StepRow is bound to the session that saved it)."""
    return [StepRow.model_validate(r.model_dump(exclude={"id"})) for r in rows]


def _count(store: Store, sql: str, **params: object) -> int:
    with store.engine.connect() as c:
        return int(c.execute(text(sql), params).scalar_one())


# ---- schema -------------------------------------------------------------------------------------


def test_migrate_is_idempotent_and_records_the_version(store: Store) -> None:
    assert store.migrate() == SCHEMA_VERSION
    assert store.migrate() == SCHEMA_VERSION
    tables = set(inspect(store.engine).get_table_names())
    assert {"ledgerflow_schema", "runs", "steps", "anchors", "outbox"} <= tables
    assert _count(store, "SELECT COUNT(*) FROM ledgerflow_schema") == 1
    assert _count(store, "SELECT version FROM ledgerflow_schema") == SCHEMA_VERSION
    # data survives a re-migration
    wf, _, rows = make_run(store, 3)
    store.save_steps(rows)
    assert store.migrate() == SCHEMA_VERSION
    assert _count(store, "SELECT COUNT(*) FROM steps WHERE workflow_id = :wf", wf=wf) == 3
    # an older recorded version is upgraded step by step to the current one
    with store.engine.begin() as c:
        c.execute(text("UPDATE ledgerflow_schema SET version = :v"), {"v": SCHEMA_VERSION - 1})
    assert store.migrate() == SCHEMA_VERSION
    assert _count(store, "SELECT version FROM ledgerflow_schema") == SCHEMA_VERSION


# ---- steps --------------------------------------------------------------------------------------


def test_save_steps_is_idempotent_and_refuses_a_different_hash(store: Store) -> None:
    wf, run, rows = make_run(store, 8)
    saved = store.save_steps(_copy(rows[:5]))
    assert [r.seq for r in saved] == [0, 1, 2, 3, 4]
    again = store.save_steps(_copy(rows[:5]))  # a retried flush
    assert [r.step_hash for r in again] == [r.step_hash for r in rows[:5]]
    overlap = store.save_steps(_copy(rows[3:]))  # a flush that repeats two steps
    assert [r.seq for r in overlap] == [3, 4, 5, 6, 7]
    stored = store.get_steps(wf, run)
    assert [r.seq for r in stored] == list(range(8))
    assert [r.step_hash for r in stored] == [r.step_hash for r in rows]
    info = store.get_run(wf, run)
    assert info.steps == 8 and info.head == rows[-1].head
    # an older flush arriving late does not move the run's head backwards
    store.save_steps(_copy(rows[:2]))
    assert store.get_run(wf, run).head == rows[-1].head

    forged = _copy(rows[6:])
    forged[0].step_hash = to_hex(keccak(b"forged"))
    with pytest.raises(StoreError, match="already stored with another hash"):
        store.save_steps(forged)
    # the refused batch changed nothing, not even its acceptable part
    after = store.get_steps(wf, run)
    assert [r.step_hash for r in after] == [r.step_hash for r in rows]
    with pytest.raises(StoreError):
        store.get_run("no-such-workflow")


def test_record_flush_is_one_idempotent_transaction(store: Store) -> None:
    wf, run, rows = make_run(store, 9, spec=2)
    rk = store.get_run(wf, run).run_key

    def flush(part: list[StepRow], *, final: str | None = None, seal: bool = False) -> Any:
        return store.record_flush(
            workflow_id=wf,
            run_id=run,
            workflow_type="Synthetic",
            run_key=rk,
            anchor_mode="batched",
            spec_version=2,
            steps=_copy(part),
            seal=SealRow(workflow_id=wf, run_id=run, run_key=rk, steps=9, head=rows[-1].head)
            if seal
            else None,
            final_status=final,
            count_kind="llm",
        )

    first = flush(rows[:4])
    assert (first.new, first.ended, first.counted) == (4, False, [])
    last = flush(rows[4:], final="completed", seal=True)
    assert last.new == 5 + 1 and last.ended  # five steps and the seal; the run ended here
    assert last.counted == [(r.name, r.status) for r in rows if r.kind == "llm"]
    again = flush(rows[4:], final="completed", seal=True)  # the retried final flush
    assert (again.new, again.ended, again.counted) == (0, False, [])
    info = store.get_run(wf, run)
    assert (info.status, info.steps, info.head) == ("completed", 9, rows[-1].head)
    seal = store.get_seal(wf, run)
    assert seal is not None and (seal.steps, seal.status) == (9, "pending")

    # A different record for a stored seq, or another seal: refused, and nothing of it is kept.
    wf2, run2, rows2 = make_run(store, 3, spec=2)
    forged = _copy(rows2)
    forged[2].step_hash = to_hex(keccak(b"forged"))
    store.save_steps(_copy(rows2[2:]))
    with pytest.raises(StoreError, match="already stored with another hash"):
        store.record_flush(
            workflow_id=wf2,
            run_id=run2,
            workflow_type="Synthetic",
            run_key=store.get_run(wf2, run2).run_key,
            anchor_mode="batched",
            spec_version=2,
            steps=forged,
            final_status="completed",
        )
    assert [r.seq for r in store.get_steps(wf2, run2)] == [2]
    assert store.get_run(wf2, run2).status == "running"
    with pytest.raises(StoreError, match="already sealed"):
        store.record_flush(
            workflow_id=wf,
            run_id=run,
            workflow_type="Synthetic",
            run_key=rk,
            anchor_mode="batched",
            spec_version=2,
            steps=[],
            seal=SealRow(workflow_id=wf, run_id=run, run_key=rk, steps=8, head=rows[-2].head),
        )

    # A flush of a run the store has not seen yet creates its row.
    wf3, run3 = f"wf-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    made = store.record_flush(
        workflow_id=wf3,
        run_id=run3,
        workflow_type="Synthetic",
        run_key=rk,
        anchor_mode="batched",
        spec_version=2,
        steps=[],
    )
    assert made.new == 0 and store.get_run(wf3, run3).status == "running"


def test_run_anchor_state_reads_the_run_in_one_go(store: Store) -> None:
    wf, run, rows = make_run(store, 6, spec=2)
    store.save_steps(_copy(rows))
    seal_of(store, rows)
    state = store.run_anchor_state(wf, run)
    assert state.pending == 6 and state.anchors == {}
    assert [r.seq for r in state.steps] == list(range(6))
    assert state.seal is not None and state.seal.status == "pending"
    claimed = store.claim_batch(4, build_batch, chain_id=CHAIN_ID, registry=REGISTRY)
    assert claimed is not None
    anchor, steps = claimed
    assert [s.seq for s in steps] == [0, 1, 2, 3] and anchor.id is not None
    assert store.run_anchor_state(wf, run).pending == 6  # claimed is not confirmed
    store.confirm_anchor(anchor.id, tx_hash="0x" + "ab" * 32, block_number=3)
    state = store.run_anchor_state(wf, run)
    assert state.pending == 2 and set(state.anchors) == {anchor.id}
    assert state.seal is not None and state.seal.status == "pending"  # its last steps wait
    second = store.claim_batch(4, build_batch, chain_id=CHAIN_ID, registry=REGISTRY)
    assert second is not None and second[0].id is not None
    assert store.anchor_seals(second[0].id)[0].workflow_id == wf  # the seal rides along
    store.confirm_anchor(second[0].id, tx_hash="0x" + "cd" * 32, block_number=4)
    state = store.run_anchor_state(wf, run)
    assert state.pending == 0 and state.seal is not None and state.seal.status == "confirmed"


def test_unanchored_count_and_pending_stats(store: Store) -> None:
    wf, run, rows = make_run(store, 10)
    store.save_steps(rows)
    assert store.unanchored_count(wf, run) == 10
    count, oldest = store.pending_stats()
    assert count == 10 and oldest is not None
    claimed = store.claim_batch(4, build_batch, chain_id=CHAIN_ID, registry=REGISTRY)
    assert claimed is not None
    anchor, steps = claimed
    assert [s.seq for s in steps] == [0, 1, 2, 3] and anchor.leaf_count == 4
    assert store.pending_stats()[0] == 6
    assert store.unanchored_count(wf, run) == 10  # claimed but not confirmed is still pending
    assert [a.id for a in store.unfinished_anchors()] == [anchor.id]
    assert anchor.id is not None
    store.confirm_anchor(anchor.id, tx_hash="0x" + "aa" * 32, block_number=7)
    assert store.unanchored_count(wf, run) == 6
    assert store.unfinished_anchors() == []

    # per-step steps are never claimed by the batcher; they are anchored one by one
    pwf, prun, prows = make_run(store, 3, mode="per-step")
    store.save_steps(prows)
    assert store.pending_stats("per-step")[0] == 3
    assert store.unanchored_count(pwf, prun) == 3
    a1 = store.record_step_anchor(
        pwf, prun, 0, tx_hash="0x" + "bb" * 32, block_number=9, chain_id=CHAIN_ID, registry=REGISTRY
    )
    again = store.record_step_anchor(
        pwf,
        prun,
        0,
        tx_hash="0x" + "cc" * 32,
        block_number=10,
        chain_id=CHAIN_ID,
        registry=REGISTRY,
    )
    assert again.id == a1.id and again.tx_hash == "0x" + "bb" * 32  # idempotent
    assert store.unanchored_count(pwf, prun) == 2
    rest = store.claim_batch(100, build_batch, chain_id=CHAIN_ID, registry=REGISTRY)
    assert rest is not None and {s.workflow_id for s in rest[1]} == {wf}
    assert len(rest[1]) == 6


# ---- concurrent claiming ------------------------------------------------------------------------


def test_claim_batch_is_atomic_under_concurrency(
    store: Store, request: pytest.FixtureRequest
) -> None:
    runs = [make_run(store, 60) for _ in range(5)]
    for _, _, rows in runs:
        store.save_steps(rows)
    total = sum(len(rows) for _, _, rows in runs)
    claimers = 8
    barrier = threading.Barrier(claimers)
    claimed: list[list[tuple[int, list[int]]]] = [[] for _ in range(claimers)]
    errors: list[BaseException] = []

    def claim(k: int) -> None:
        try:
            barrier.wait()
            while True:
                got = store.claim_batch(7, build_batch, chain_id=CHAIN_ID, registry=REGISTRY)
                if got is None:
                    return
                anchor, steps = got
                assert anchor.id is not None
                claimed[k].append((anchor.id, [s.id for s in steps if s.id is not None]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(k,)) for k in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    ids = [sid for per in claimed for _, batch in per for sid in batch]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} step claims were shared"
    assert len(ids) == total
    # every step points at the anchor that claimed it, and its proof leads to that root
    by_anchor = {aid: batch for per in claimed for aid, batch in per}
    anchors = store.get_anchors(by_anchor)
    assert sum(a.leaf_count for a in anchors.values()) == total
    for wf, run, _ in runs:
        for row in store.get_steps(wf, run):
            assert row.anchor_id is not None and row.id in by_anchor[row.anchor_id]
            root = anchors[row.anchor_id].root
            assert root is not None
            proof = [bytes.fromhex(p[2:]) for p in json.loads(row.proof or "[]")]
            leaf = leaf_hash(bytes.fromhex(row.step_hash[2:]))
            assert verify_proof(leaf, proof, bytes.fromhex(root[2:]))


# ---- webhook deliveries -------------------------------------------------------------------------


def test_delivery_bind_binds_once_to_one_route_and_run(store: Store) -> None:
    wid = f"msg_{uuid.uuid4().hex}"
    row, mine = store.delivery_bind(wid, "Wf", "wf-1")
    assert mine and (row.webhook_id, row.workflow_type, row.workflow_id) == (wid, "Wf", "wf-1")
    assert (row.status, row.run_id) == ("pending", None)
    # A duplicate of a pending delivery is not this caller's; another route or run is refused.
    assert store.delivery_bind(wid, "Wf", "wf-1")[1] is False
    other, mine = store.delivery_bind(wid, "Wf/signal/x", "wf-1")
    assert not mine and other.workflow_type == "Wf"
    assert store.delivery_bind(wid, "Wf", "wf-2")[1] is False
    # The run: first writer wins, and the delivery is accepted.
    assert store.delivery_set_run(wid, "run-a") == "run-a"
    assert store.delivery_set_run(wid, "run-b") == "run-a"
    got = store.delivery_get(wid)
    assert got is not None and (got.status, got.run_id) == ("accepted", "run-a")
    assert store.delivery_bind(wid, "Wf", "wf-1")[1] is False  # an accepted one is not retried
    # A failed (or refused) delivery is taken up again by a retry to the same route and run.
    wid2 = f"msg_{uuid.uuid4().hex}"
    store.delivery_bind(wid2, "Wf", "wf-3")
    store.delivery_finish(wid2, "failed", detail="engine down")
    assert store.delivery_bind(wid2, "Wf", "wf-4")[1] is False
    again, mine = store.delivery_bind(wid2, "Wf", "wf-3")
    assert mine and (again.status, again.detail) == ("pending", None)
    assert store.delivery_bind(wid2, "Wf", "wf-3")[1] is False


def test_delivery_bind_is_mine_for_exactly_one_of_many(store: Store) -> None:
    """Concurrent binds of one webhook-id (and concurrent retries of a failed one): one wins."""
    wid = f"msg_{uuid.uuid4().hex}"
    n = 8

    def race() -> list[bool]:
        barrier = threading.Barrier(n)
        results: list[bool] = []
        errors: list[BaseException] = []

        def bind() -> None:
            try:
                barrier.wait()
                results.append(store.delivery_bind(wid, "Wf", "wf-1")[1])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=bind) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        return results

    for attempt in range(2):
        results = race()
        assert sorted(results) == [False] * (n - 1) + [True], (attempt, results)
        store.delivery_finish(wid, "failed")  # the second round: retries of a failed delivery


# ---- the signer's outbox ------------------------------------------------------------------------


def _tx(key: str, nonce: int, *, chain_id: int = CHAIN_ID, sender: str = "0xA") -> OutboxTx:
    return OutboxTx(
        key=key,
        chain_id=chain_id,
        sender=sender,
        nonce=nonce,
        raw="0x02",
        tx_hash=to_hex(keccak(f"{key}:{nonce}".encode())),
    )


def test_outbox_nonce_and_key_uniqueness(store: Store) -> None:
    assert store.outbox_max_nonce(CHAIN_ID, "0xA") is None
    store.outbox_put(_tx("anchor:1", 0))
    store.outbox_put(_tx("anchor:2", 1))
    with pytest.raises(IntegrityError):
        store.outbox_put(_tx("anchor:3", 1))  # a nonce is signed once per sender and chain
    with pytest.raises(IntegrityError):
        store.outbox_put(_tx("anchor:1", 5))  # a key is signed once
    store.outbox_put(_tx("anchor:3", 1, chain_id=1))  # another chain has its own nonces
    store.outbox_put(_tx("anchor:4", 1, sender="0xB"))  # and so has another sender
    store.outbox_put(_tx("anchor:5", 3))
    assert store.outbox_max_nonce(CHAIN_ID, "0xA") == 3
    assert [t.nonce for t in store.outbox_unmined(CHAIN_ID, "0xA")] == [0, 1, 3]
    store.outbox_mark("anchor:2", "mined", 12)
    assert [t.key for t in store.outbox_unmined(CHAIN_ID, "0xA")] == ["anchor:1", "anchor:5"]
    row = store.outbox_get("anchor:2")
    assert row is not None and row.status == "mined" and row.block_number == 12
    assert store.outbox_get("anchor:404") is None


def test_outbox_concurrent_nonce_race(store: Store) -> None:
    """Two writers racing for the same nonce: exactly one wins."""
    barrier = threading.Barrier(6)
    results: list[str] = []

    def put(k: int) -> None:
        barrier.wait()
        try:
            store.outbox_put(_tx(f"race:{k}", 42))
            results.append("ok")
        except IntegrityError:
            results.append("refused")

    threads = [threading.Thread(target=put, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["ok"] + ["refused"] * 5


# ---- 10,000 steps -------------------------------------------------------------------------------


def test_verify_ten_thousand_steps(store: Store) -> None:
    n, batch = 10_000, 1024
    t0 = time.perf_counter()
    wf, run, rows = make_run(store, n)
    store.save_steps(rows)
    anchors = 0
    while got := store.claim_batch(batch, build_batch, chain_id=CHAIN_ID, registry=REGISTRY):
        anchor, _ = got
        assert anchor.id is not None and anchor.root is not None
        store.confirm_anchor(
            anchor.id, tx_hash=to_hex(keccak(anchor.root.encode())), block_number=100 + anchors
        )
        anchors += 1
    assert anchors == -(-n // batch)
    build_s = time.perf_counter() - t0

    wall0, cpu0 = time.perf_counter(), time.process_time()
    stored = store.get_steps(wf, run)
    roots = {i: a.root for i, a in store.get_anchors({r.anchor_id for r in stored}).items()}
    load_cpu = time.process_time() - cpu0
    cpu1 = time.process_time()
    findings = _Findings()
    hashes, head = verify_steps(wf, run, stored, findings)
    verifier = MultiVerifier()
    triples = [
        (
            leaf_hash(sh),
            [bytes.fromhex(p[2:]) for p in json.loads(row.proof or "[]")],
            bytes.fromhex(roots[row.anchor_id][2:]),  # type: ignore[index]
        )
        for row, sh in zip(stored, hashes, strict=True)
    ]
    proofs_ok = verifier.verify_many(triples)
    verify_cpu = time.process_time() - cpu1
    wall = time.perf_counter() - wall0

    assert findings.problems == [] and findings.first_bad is None
    assert all(proofs_ok) and len(proofs_ok) == n
    assert to_hex(head) == rows[-1].head == store.get_run(wf, run).head
    backend = "sqlite" if store.is_sqlite else "postgres"
    print(
        f"\n[{backend}] 10,000-step run: built+stored+claimed in {build_s:.2f}s; "
        f"verify: load {load_cpu:.2f}s CPU, recompute+proofs {verify_cpu:.2f}s CPU "
        f"({n / verify_cpu:,.0f} steps/s), total {wall:.2f}s wall "
        f"({n / wall:,.0f} steps/s end to end)"
    )

    # one altered byte among the 10,000 is found and named
    stored[6_543].output_preimage = stored[6_543].output_preimage.replace("true", "tru3")  # type: ignore[union-attr]
    findings = _Findings()
    verify_steps(wf, run, stored, findings)
    assert findings.first_bad == 6_543


def test_a_second_store_on_the_file_keeps_the_processs_locks(tmp_path: Path) -> None:
    """Another ``Store`` on the same SQLite file in a process with live connections must not
    release their locks (closing any descriptor of a file drops the process's POSIX locks on
    it): otherwise a reader in another process (``ledgerflow verify``), closing its last
    connection, takes itself for the last one and deletes the WAL under the live writer."""
    path = tmp_path / "store.db"
    live = Store(f"sqlite:///{path}")
    live.migrate()
    with live.engine.connect() as conn:  # the pool keeps this connection open afterwards
        conn.execute(text("SELECT count(*) FROM runs")).all()
    wal = Path(f"{path}-wal")
    assert wal.exists()

    second = Store(f"sqlite:///{path}")  # as a second Runtime in the worker's process does
    reader = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute('SELECT count(*) FROM runs').fetchall(); c.close()"
    )
    subprocess.run([sys.executable, "-c", reader, str(path)], check=True, timeout=60)
    assert wal.exists(), "a reader in another process deleted the live store's WAL"
    wf, run, rows = make_run(live, 3)  # the live store still writes; a new connection reads
    live.save_steps(rows)
    assert len(second.get_steps(wf, run)) == 3
    # SQLite's backup API: SQLITE_IOERR_SHORT_READ when the WAL was deleted under the writer
    copy_store(live, tmp_path / "copy.db").engine.dispose()
    second.engine.dispose()
    live.engine.dispose()
