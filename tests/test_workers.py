"""Many workers, one set of keys, on the real PostgreSQL server: nonces allocated through the
database (contiguous, no nonce errors, nothing stuck) by several signers with engines of their
own and by real processes, one of them SIGKILLed; gaps a dead process left are rebroadcast by
the others; one anchorer at a time holds a lease that another takes over when its holder is
killed, and no root is anchored twice. On SQLite a second worker is refused, saying who holds
the store."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from eth_account import Account
from sqlalchemy.engine import make_url

from ledgerflow.chain.rpc import connect_async
from ledgerflow.chain.signer import Signer
from ledgerflow.checkpoint.anchorer import ANCHORER_LEASE
from ledgerflow.checkpoint.verify import verify_run
from ledgerflow.errors import ConfigError
from ledgerflow.runtime import SQLITE_WORKER_LEASE, Runtime
from ledgerflow.settings import Settings
from ledgerflow.store import Store
from tests.conftest import Anvil
from tests.support.anvil import LocalAnvil, fund
from tests.test_proofs import close_runtime, deploy_registry
from tests.test_store import make_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[str]:
    """The URL of a fresh, migrated database of this test's own on the PostgreSQL server."""
    url = make_url(pg_url)
    name = f"lf_test_{uuid.uuid4().hex[:12]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = url.set(database=name).render_as_string(hide_password=False)
    s = Store(db)
    s.migrate()
    s.engine.dispose()
    try:
        yield db
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[LocalAnvil]:
    anvil = LocalAnvil(tmp_path).start()
    try:
        yield anvil
    finally:
        anvil.stop()


@pytest.fixture
async def signers() -> AsyncIterator[list[Signer]]:
    made: list[Signer] = []
    yield made
    for s in made:
        await s.w3.provider.disconnect()  # type: ignore[attr-defined]
        s.store.engine.dispose()


def new_signer(made: list[Signer], url: str, key: str, db: str, **kw: Any) -> Signer:
    kw.setdefault("rebroadcast_every", 0.5)
    signer = Signer(connect_async([url]), key, Store(db), 31337, **kw)  # an engine of its own
    made.append(signer)
    return signer


def assert_contiguous(store: Store, chain: LocalAnvil, address: str, expected: int) -> None:
    """Every outbox row of ``address`` is final and mined, their nonces are 0..expected-1, and
    the chain has exactly those (nothing pending, nothing queued)."""
    rows = store.outbox_from_nonce(31337, address, 0)
    assert sorted(r.nonce for r in rows) == list(range(expected))
    assert all(r.status == "mined" for r in rows), [r.status for r in rows if r.status != "mined"]
    for r in rows:
        receipt = chain.call("eth_getTransactionReceipt", r.tx_hash)
        assert receipt is not None and receipt["blockHash"] == r.block_hash
    assert chain.nonce(address) == expected == chain.nonce(address, "pending")
    assert chain.call("txpool_status") == {"pending": "0x0", "queued": "0x0"}


async def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


# ---- nonces through the database ----------------------------------------------------------------


async def test_signers_with_their_own_engines_share_one_key(
    chain: LocalAnvil, pg_db: str, signers: list[Signer]
) -> None:
    key = fund(chain.url)
    group = [new_signer(signers, chain.url, key, pg_db) for _ in range(3)]
    to = Account.create().address

    async def burst(i: int, signer: Signer) -> None:
        await asyncio.gather(
            *(signer.send_tx(f"shared:{i}:{j}", to=to, value=1) for j in range(40))
        )

    await asyncio.wait_for(asyncio.gather(*(burst(i, s) for i, s in enumerate(group))), 120)
    assert chain.balance(to) == 120
    assert sum(s.nonce_errors for s in group) == 0
    assert_contiguous(group[0].store, chain, group[0].address, 120)
    # and a retry of any key, from any of them, signs nothing
    again = await group[2].send_tx("shared:0:5", to=to, value=1)
    assert again.tx_hash == group[0].store.outbox_get("shared:0:5").tx_hash  # type: ignore[union-attr]
    assert chain.nonce(group[0].address) == 120


async def test_gap_left_by_a_dead_process_is_rebroadcast_by_another(
    chain: LocalAnvil, pg_db: str, signers: list[Signer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Process A persists its batch and dies before broadcasting: B's later nonces would wait
    behind A's forever. B rebroadcasts A's signed rows from the outbox, in nonce order."""
    key = fund(chain.url)
    a, b = new_signer(signers, chain.url, key, pg_db), new_signer(signers, chain.url, key, pg_db)
    to = Account.create().address
    real = Signer._send_raw

    async def dies(self: Signer, rows: Any) -> Any:
        if self is a:
            raise asyncio.CancelledError  # the process is gone: nothing after persisting runs
        return await real(self, rows)

    monkeypatch.setattr(Signer, "_send_raw", dies)
    doomed = [asyncio.create_task(a.send_tx(f"dead:{i}", to=to, value=1)) for i in range(5)]
    await asyncio.gather(*doomed, return_exceptions=True)
    assert len(b.store.outbox_unmined(31337, a.address)) == 5  # persisted, never broadcast
    assert chain.nonce(a.address, "pending") == 0
    await asyncio.wait_for(
        asyncio.gather(*(b.send_tx(f"alive:{i}", to=to, value=1) for i in range(5))), 60
    )
    await b.check_chain()  # settles A's rows, which nobody waits for any more
    assert chain.balance(to) == 10
    assert_contiguous(b.store, chain, b.address, 10)


async def test_worker_processes_share_one_key_and_one_is_killed(
    chain: LocalAnvil, pg_db: str, tmp_path: Path, signers: list[Signer]
) -> None:
    key = fund(chain.url)
    key_file = tmp_path / "agent.key"
    key_file.write_text(key)
    to = Account.create().address
    count = 60

    def start(name: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "tests.support.worker_procs", "send", "--db", pg_db]
        argv += ["--rpc", chain.url, "--key-file", str(key_file), "--prefix", name]
        argv += ["--count", str(count), "--to", to, "--out", str(tmp_path / f"{name}.json")]
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    procs = {name: start(name) for name in ("w1", "w2", "w3")}
    probe = Store(pg_db)
    try:
        # w3 dies (SIGKILL) once it has signed some of its sends
        address = Account.from_key(key).address
        await wait_until(
            lambda: (
                sum(r.key.startswith("w3:") for r in probe.outbox_from_nonce(31337, address, 0))
                >= 10
            ),
            what="w3's first sends",
        )
        procs["w3"].send_signal(signal.SIGKILL)
        for name in ("w1", "w2"):
            assert await asyncio.to_thread(procs[name].wait, 120) == 0, (
                tmp_path / f"{name}.log"
            ).read_text()
        results = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in ("w1", "w2")}
        assert all(r["errors"] == [] and r["nonce_errors"] == 0 for r in results.values()), results
        # a surviving worker's periodic check settles what w3 left behind
        survivor = new_signer(signers, chain.url, key, pg_db)
        await survivor.check_chain()
        rows = probe.outbox_from_nonce(31337, address, 0)
        w3_rows = [r for r in rows if r.key.startswith("w3:")]
        assert 10 <= len(w3_rows) <= count
        assert sum(1 for r in rows if r.key.startswith(("w1:", "w2:"))) == 2 * count
        assert_contiguous(probe, chain, address, len(rows))
        assert chain.balance(to) == len(rows)  # each persisted send paid exactly once
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait(10)
        probe.engine.dispose()


# ---- the anchorer's lease -----------------------------------------------------------------------


def _anchorer_env(
    db: str, anvil: Anvil, deployment_file: Path, registry: tuple[str, str], tmp: Path
) -> dict[str, str]:
    key_file = tmp / "orchestrator.key"
    key_file.write_text(registry[1])
    return {
        **os.environ,
        "LEDGERFLOW_DATABASE_URL": db,
        "LEDGERFLOW_RPC_URL": anvil.rpc_url,
        "LEDGERFLOW_DEPLOYMENTS_FILE": str(deployment_file),
        "LEDGERFLOW_REGISTRY_ADDRESS": registry[0],
        "LEDGERFLOW_ORCHESTRATOR_KEY_FILE": str(key_file),
        "LEDGERFLOW_LEASE_SECONDS": "1.5",
        "LEDGERFLOW_ANCHOR_MAX_WAIT_SECONDS": "0.2",
        "LEDGERFLOW_ANCHOR_BATCH_SIZE": "16",
        "LEDGERFLOW_HOME": str(tmp),
    }


async def test_anchorer_lease_is_taken_over_when_its_holder_is_killed(
    anvil: Anvil, deployment_file: Path, pg_db: str, tmp_path: Path
) -> None:
    registry = await asyncio.to_thread(deploy_registry, anvil.rpc_url)
    env = _anchorer_env(pg_db, anvil, deployment_file, registry, tmp_path)

    def start(name: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.worker_procs", "anchor"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=pg_db,
        rpc_url=anvil.rpc_url,
        deployments_file=deployment_file,
        registry_address=registry[0],
        orchestrator_key=registry[1],
        home=tmp_path,
    )
    rt = Runtime(settings)
    store = rt.store
    runs: list[tuple[str, str]] = []
    stop_feeding = asyncio.Event()

    async def feed() -> None:
        """Runs keep arriving while the anchorers come and go."""
        while not stop_feeding.is_set():
            wf, run, rows = make_run(store, 7)
            await asyncio.to_thread(store.save_steps, rows)
            runs.append((wf, run))
            await asyncio.sleep(0.1)

    first = start("a1")
    procs = [first]
    feeder = asyncio.create_task(feed())
    try:
        holder = await wait_until(
            lambda: (row := store.lease_get(ANCHORER_LEASE)) and row.pid == first.pid and row,
            what="the first anchorer holding the lease",
        )
        second = start("a2")
        procs.append(second)
        await wait_until(  # both running: the lease stays with the first
            lambda: b"standing by" in (tmp_path / "a2.log").read_bytes(),
            what="the second anchorer standing by",
        )
        await asyncio.sleep(1.0)
        row = store.lease_get(ANCHORER_LEASE)
        assert row is not None and row.pid == first.pid and row.epoch == holder.epoch
        first.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        taken = await wait_until(
            lambda: (r := store.lease_get(ANCHORER_LEASE)) and r.pid == second.pid and r,
            what="the second anchorer taking over",
        )
        assert taken.epoch == holder.epoch + 1
        assert time.monotonic() - killed_at < 1.5 + 1.5 / 3 + 2.0  # within a lease lifetime
        await asyncio.sleep(1.0)
        stop_feeding.set()
        await feeder
        await wait_until(
            lambda: all(store.unanchored_count(wf, run) == 0 for wf, run in runs),
            what="every step anchored",
        )
        anchors = {a.id: a for a in store.unfinished_anchors()}
        assert anchors == {}
        roots: dict[str, int] = {}
        registry_c = rt.contract("CheckpointRegistry")
        for log in await registry_c.events.RootAnchored.get_logs(from_block=0):
            root = "0x" + bytes(log["args"]["root"]).hex()
            roots[root] = roots.get(root, 0) + 1
        assert roots and max(roots.values()) == 1, "a root was anchored twice"
        for wf, _run in runs[:: max(1, len(runs) // 5)]:
            # The synthetic runs are written as spec v1 steps, which have no seal.
            report = await verify_run(rt, wf, allow_unsealed_v1=True)
            assert report.ok, report.problems
    finally:
        stop_feeding.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        await close_runtime(rt)


# ---- SQLite: one worker per store ---------------------------------------------------------------


async def test_second_worker_on_a_sqlite_store_is_refused(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/s.db")  # type: ignore[call-arg]
    first, second = Runtime(settings), Runtime(settings)
    first.store.migrate()
    await first.claim_store()
    try:
        with pytest.raises(ConfigError) as info:
            await second.claim_store()
        message = str(info.value)
        assert f"pid {os.getpid()} on host" in message
        assert "SQLite supports one worker per store" in message and "PostgreSQL" in message
    finally:
        await first.aclose()
    # once the first is gone (its lease released), a new worker starts
    await second.claim_store()
    await second.aclose()


async def test_sqlite_lease_of_a_dead_worker_is_taken_at_once(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/s.db")  # type: ignore[call-arg]
    rt = Runtime(settings)
    rt.store.migrate()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    rt.store.lease_acquire(SQLITE_WORKER_LEASE, f"gone:{dead.pid}", 3600)
    with rt.store.engine.begin() as conn:  # the holder was a process of this host that died
        from sqlalchemy import text

        conn.execute(text("UPDATE leases SET pid = :p"), {"p": dead.pid})
    await rt.claim_store()  # its pid is gone: no need to wait an hour
    row = rt.store.lease_get(SQLITE_WORKER_LEASE)
    assert row is not None and row.pid == os.getpid()
    await rt.aclose()


def test_workers_starting_together_migrate_an_empty_database(pg_url: str) -> None:
    """Several workers start at once on an empty PostgreSQL database: they migrate one after
    the other instead of colliding on CREATE TABLE."""
    import threading

    url = make_url(pg_url)
    name = f"lf_test_{uuid.uuid4().hex[:12]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = url.set(database=name).render_as_string(hide_password=False)
    results: list[object] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        store = Store(db)
        barrier.wait()
        try:
            results.append(store.migrate())
        except Exception as exc:
            results.append(exc)
        finally:
            store.engine.dispose()

    try:
        threads = [threading.Thread(target=start) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        from ledgerflow.store import SCHEMA_VERSION

        assert results == [SCHEMA_VERSION] * 6
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_schema_1_store_is_upgraded_in_place(dialect: str, tmp_path: Path, request: Any) -> None:
    """A store created by schema 1 (the outbox without block hashes, none of the new tables)
    keeps its rows and gains what schema 2 adds."""
    from sqlalchemy import inspect, text

    from ledgerflow.store import SCHEMA_VERSION, OutboxTx

    db = f"sqlite:///{tmp_path}/v1.db" if dialect == "sqlite" else request.getfixturevalue("pg_db")
    store = Store(db)
    store.migrate()
    store.outbox_put(
        OutboxTx(key="old:1", chain_id=1, sender="0xA", nonce=0, raw="0x02", tx_hash="0x01")
    )
    with store.engine.begin() as conn:  # back to schema 1
        for table in ("outbox_attempts", "outbox_closures", "signer_nonces", "leases"):
            conn.execute(text(f"DROP TABLE {table}"))
        conn.execute(text("ALTER TABLE outbox DROP COLUMN block_hash"))
        conn.execute(text("ALTER TABLE outbox DROP COLUMN updated_at"))
        conn.execute(text("UPDATE ledgerflow_schema SET version = 1"))
    store.engine.dispose()
    upgraded = Store(db)
    assert upgraded.migrate() == SCHEMA_VERSION
    columns = {c["name"] for c in inspect(upgraded.engine).get_columns("outbox")}
    assert {"block_hash", "updated_at"} <= columns
    assert {"outbox_attempts", "outbox_closures", "signer_nonces", "leases"} <= set(
        inspect(upgraded.engine).get_table_names()
    )
    row = upgraded.outbox_get("old:1")
    assert row is not None and row.status == "signed" and row.block_hash is None
    upgraded.outbox_mark("old:1", "mined", 7, block_hash="0x" + "ab" * 32)
    assert upgraded.outbox_get("old:1").block_hash == "0x" + "ab" * 32  # type: ignore[union-attr]
    upgraded.engine.dispose()


# ---- three real workers on PostgreSQL, one killed mid-run ---------------------------------------


@pytest.mark.slow
async def test_three_workers_on_postgres_sixty_procurements_one_killed(
    temporal_address: str, pg_db: str, tmp_path: Path
) -> None:
    """Issue 13's acceptance test: three `ledgerflow worker` processes share the keys through
    one PostgreSQL store; one is SIGKILLed while 60 procurements run. Every run completes,
    every order is paid exactly once (counted from chain events), no root is anchored twice and
    the runs verify."""
    from ledgerflow.chain.deploy import deploy_all, save_deployment, seed_demo
    from ledgerflow.dev.stack import free_port, start_anvil
    from ledgerflow.sdk.client import LedgerflowClient
    from ledgerflow.settings import ANVIL_DEFAULT_KEYS as DEV
    from tests.support.chain import ChainAdmin

    anvil_port = free_port()
    anvil = start_anvil(anvil_port, log_path=tmp_path / "anvil.log")
    rpc = f"http://127.0.0.1:{anvil_port}"
    d = deploy_all(rpc, DEV[0], agent_key=DEV[1], approver_key=DEV[2])
    seed_demo(rpc, d, DEV[0], DEV[1])
    admin = ChainAdmin(rpc, d)
    admin.set_agent_limits(cap_tusd=5_000, budget_tusd=1_000_000)
    deployments = tmp_path / "deployments.json"
    save_deployment(deployments, d)
    queue = f"three-workers-{uuid.uuid4().hex[:8]}"
    common = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LEDGERFLOW_", "TEMPORAL_"))},
        "LEDGERFLOW_TEMPORAL_ADDRESS": temporal_address,
        "LEDGERFLOW_TASK_QUEUE": queue,
        "LEDGERFLOW_RPC_URL": rpc,
        "LEDGERFLOW_DATABASE_URL": pg_db,
        "LEDGERFLOW_DEPLOYMENTS_FILE": str(deployments),
        "LEDGERFLOW_ANCHOR_MAX_WAIT_SECONDS": "0.3",
        "LEDGERFLOW_LEASE_SECONDS": "2",
        "LEDGERFLOW_LOG_LEVEL": "WARNING",
    }

    def start(name: str) -> subprocess.Popen[bytes]:
        env = {
            **common,
            "LEDGERFLOW_HOME": str(tmp_path / name),
            "LEDGERFLOW_METRICS_PORT": str(free_port()),
        }
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(
            [sys.executable, "-m", "ledgerflow.cli", "worker"],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    procs = {name: start(name) for name in ("w1", "w2", "w3")}
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        home=tmp_path / "client",
        temporal_address=temporal_address,
        task_queue=queue,
        rpc_url=rpc,
        deployments_file=deployments,
        database_url=pg_db,
    )
    count = 60
    request = {"sku": "WIDGET-42", "quantity": 1, "simulate_delivery_after_seconds": 1}
    try:
        async with LedgerflowClient.connect(settings) as lf:
            ids = [f"three-{i:02d}-{uuid.uuid4().hex[:6]}" for i in range(count)]
            await asyncio.gather(
                *(lf.start("ProcurementWorkflow", request, workflow_id=i) for i in ids)
            )
            # w3 dies (SIGKILL) once payments are flowing.
            deadline = time.monotonic() + 120
            escrow = admin.c("Escrow")
            while len(escrow.events.EscrowOpened.get_logs(from_block=0)) < 5:
                assert time.monotonic() < deadline, "no payment within 120 s"
                await asyncio.sleep(0.5)
            procs["w3"].send_signal(signal.SIGKILL)
            results = await asyncio.wait_for(
                asyncio.gather(*(lf.result(i) for i in ids)), timeout=420
            )
            assert [r.outcome for r in results] == ["completed"] * count, [
                (r.outcome, r.reason) for r in results if r.outcome != "completed"
            ]
            for r in results:
                assert admin.escrow_opened_events(r.order_id) == 1, r.order_id
            registry = admin.c("CheckpointRegistry")
            roots = [
                bytes(log["args"]["root"])
                for log in registry.events.RootAnchored.get_logs(from_block=0)
            ]
            assert roots and len(roots) == len(set(roots)), "a root was anchored twice"
            for wf_id in ids[::6]:
                report = await lf.verify(wf_id)
                assert report.ok, (wf_id, report.problems)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        anvil.stop()
    assert procs["w1"].returncode == 0, (tmp_path / "w1.log").read_text()[-3000:]
    assert procs["w2"].returncode == 0, (tmp_path / "w2.log").read_text()[-3000:]
