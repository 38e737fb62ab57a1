"""The batch anchorer against the real CheckpointRegistry v2 on anvil: crash safety (every pending
hash and every seal is anchored exactly once, nothing twice) and the gas of batched vs per-step
anchoring.

Each test uses a registry of its own, written by a fresh key, and a store of its own, so the
session's worker and anchorer (which sign with the deployment's orchestrator key) are untouched.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from ledgerflow.chain.signer import Signer
from ledgerflow.checkpoint.anchorer import Anchorer, build_batch
from ledgerflow.checkpoint.proofs import (
    format_gas_table,
    gas_rows,
    measure_anchor_gas,
    measure_seal_gas,
)
from ledgerflow.checkpoint.verify import verify_run
from ledgerflow.runtime import AnchorEvents, Runtime
from ledgerflow.settings import Settings
from ledgerflow.store import AnchorRow, Store
from tests.conftest import Anvil
from tests.test_proofs import close_runtime, deploy_registry
from tests.test_store import make_run, seal_of


@pytest.fixture(scope="module")
def registry(anvil: Anvil) -> tuple[str, str]:
    """(address, writer key) of a CheckpointRegistry private to this module."""
    return deploy_registry(anvil.rpc_url)


@pytest.fixture
def settings(
    anvil: Anvil, deployment_file: Path, registry: tuple[str, str], tmp_path: Path
) -> Settings:
    address, key = registry
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        home=tmp_path,
        rpc_url=anvil.rpc_url,
        database_url=f"sqlite:///{tmp_path}/store.db",
        deployments_file=deployment_file,
        registry_address=address,
        orchestrator_key=key,
    )


class Processes:
    """Start "processes" (a Runtime: store connection, web3, signer) over one store file."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtimes: list[Runtime] = []

    def start(self) -> Runtime:
        rt = Runtime(self.settings, store=Store(self.settings.database_url))
        rt.store.migrate()
        self.runtimes.append(rt)
        return rt

    async def close(self) -> None:
        for rt in self.runtimes:
            await close_runtime(rt)


@pytest.fixture
async def procs(settings: Settings) -> Any:
    p = Processes(settings)
    yield p
    await p.close()


async def root_anchored_logs(rt: Runtime, root: str) -> list[Any]:
    registry = rt.contract("CheckpointRegistry")
    return list(
        await registry.events.RootAnchored.get_logs(
            argument_filters={"root": bytes.fromhex(root[2:])}, from_block=0
        )
    )


def _anchor(rt: Runtime, anchor_id: int | None) -> AnchorRow:
    assert anchor_id is not None
    return rt.store.get_anchors([anchor_id])[anchor_id]


async def _assert_anchored_once(rt: Runtime, anchor: AnchorRow, wf: str) -> None:
    row = _anchor(rt, anchor.id)
    assert row.status == "confirmed" and row.tx_hash and row.block_number
    assert row.root is not None
    logs = await root_anchored_logs(rt, row.root)
    assert len(logs) == 1, f"root anchored {len(logs)} times"
    assert "0x" + bytes(logs[0]["transactionHash"]).hex() == row.tx_hash
    assert int(logs[0]["blockNumber"]) == row.block_number
    registry = rt.contract("CheckpointRegistry")
    root = bytes.fromhex(row.root[2:])
    assert int(await registry.functions.anchoredAt(root).call()) == row.block_number
    assert rt.store.unfinished_anchors() == []
    await _assert_sealed_once(rt, wf)


async def _assert_sealed_once(rt: Runtime, wf: str) -> None:
    run = rt.store.get_run(wf)
    seal = rt.store.get_seal(run.workflow_id, run.run_id)
    assert seal is not None and seal.status == "confirmed" and seal.tx_hash
    registry = rt.contract("CheckpointRegistry")
    logs = await registry.events.RunSealed.get_logs(
        argument_filters={"run": bytes.fromhex(run.run_key[2:])}, from_block=0
    )
    assert len(logs) == 1, f"run sealed {len(logs)} times"
    assert "0x" + bytes(logs[0]["transactionHash"]).hex() == seal.tx_hash
    report = await verify_run(rt, wf)
    assert report.ok and report.sealed, report.problems


# ---- crash safety -------------------------------------------------------------------------------


async def test_crash_after_claim_before_send(procs: Processes) -> None:
    rt = procs.start()
    wf, run, rows = make_run(rt.store, 20, spec=2)
    rt.store.save_steps(rows)
    seal_of(rt.store, rows)
    claimed = rt.store.claim_batch(
        64, build_batch, chain_id=rt.chain_id, registry=rt.address("CheckpointRegistry")
    )
    assert claimed is not None
    anchor, steps = claimed
    assert len(steps) == 20 and anchor.status == "pending"
    assert rt.store.unanchored_count(wf, run) == 20
    # ... the process dies here: nothing was signed or sent
    assert anchor.root is not None and await root_anchored_logs(rt, anchor.root) == []

    rt2 = procs.start()
    anchorer = Anchorer(rt2, batch_size=64, max_wait=0.1)
    assert await anchorer.resume() == 1
    assert anchorer.anchored_roots == 1
    await _assert_anchored_once(rt2, anchor, wf)
    assert rt2.store.unanchored_count(wf, run) == 0
    # resuming again, or a forced tick, finds nothing to do
    assert await anchorer.resume() == 0
    assert await anchorer.tick(force=True) is False
    assert len(await root_anchored_logs(rt2, anchor.root)) == 1


async def test_crash_after_broadcast_before_confirm(
    procs: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = procs.start()
    wf, _, rows = make_run(rt.store, 33, spec=2)
    rt.store.save_steps(rows)
    seal_of(rt.store, rows)
    real_confirm = rt.store.confirm_anchor
    crashes: list[int] = []

    def confirm_once(anchor_id: int, **kw: Any) -> None:
        if not crashes:
            crashes.append(anchor_id)
            raise RuntimeError("simulated crash between broadcast and confirm_anchor")
        real_confirm(anchor_id, **kw)

    monkeypatch.setattr(rt.store, "confirm_anchor", confirm_once)
    with pytest.raises(RuntimeError, match="simulated crash"):
        await Anchorer(rt, batch_size=64, max_wait=0.1).anchor_once()
    (pending,) = rt.store.unfinished_anchors()
    assert pending.id == crashes[0] and pending.root is not None
    sent = rt.store.outbox_get(f"anchor:{pending.root}")
    assert sent is not None, "the signed transaction is in the outbox"
    assert len(await root_anchored_logs(rt, pending.root)) == 1  # it did reach the chain

    # a new process resumes: it finds the transaction through the outbox, signs nothing new
    rt2 = procs.start()
    assert await Anchorer(rt2, batch_size=64, max_wait=0.1).resume() == 1
    await _assert_anchored_once(rt2, pending, wf)
    assert _anchor(rt2, pending.id).tx_hash == sent.tx_hash
    signer = await rt2.signer("orchestrator")
    assert rt2.store.outbox_max_nonce(rt2.chain_id, signer.address) == sent.nonce
    # and the first process, recovering too, does not anchor it again
    assert await Anchorer(rt, batch_size=64, max_wait=0.1).resume() == 0
    assert len(await root_anchored_logs(rt, pending.root)) == 1


async def test_crash_after_signing_before_broadcast(
    procs: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signed transaction was persisted, then the process died before broadcasting it."""
    rt = procs.start()
    wf, _, rows = make_run(rt.store, 5, spec=2)
    rt.store.save_steps(rows)
    seal_of(rt.store, rows)

    async def lost(self: Signer, rows: Any) -> None:
        raise RuntimeError("simulated crash before broadcast")

    with monkeypatch.context() as m:
        m.setattr(Signer, "_send_raw", lost)
        with pytest.raises(RuntimeError, match="before broadcast"):
            await Anchorer(rt, batch_size=64, max_wait=0.1).anchor_once()
    (pending,) = rt.store.unfinished_anchors()
    assert pending.root is not None and await root_anchored_logs(rt, pending.root) == []
    sent = rt.store.outbox_get(f"anchor:{pending.root}")
    assert sent is not None and sent.status == "signed"

    rt2 = procs.start()
    assert await Anchorer(rt2, batch_size=64, max_wait=0.1).resume() == 1
    await _assert_anchored_once(rt2, pending, wf)
    assert _anchor(rt2, pending.id).tx_hash == sent.tx_hash  # the same signed bytes


async def test_running_anchorer_retries_a_failed_batch(
    procs: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transient failure after claiming (RPC hiccup, a store error on confirm) must not leave
    the batch pending while the anchorer keeps running: no hash waits for a restart."""
    rt = procs.start()
    wf, run, rows = make_run(rt.store, 7, spec=2)
    rt.store.save_steps(rows)
    seal_of(rt.store, rows)
    real_confirm = rt.store.confirm_anchor
    failures: list[int] = []

    def confirm_flaky(anchor_id: int, **kw: Any) -> None:
        if not failures:
            failures.append(anchor_id)
            raise RuntimeError("transient failure on confirm_anchor")
        real_confirm(anchor_id, **kw)

    monkeypatch.setattr(rt.store, "confirm_anchor", confirm_flaky)
    stop = asyncio.Event()
    task = asyncio.create_task(Anchorer(rt, batch_size=64, max_wait=0.0, poll=0.02).run(stop))
    try:
        deadline = asyncio.get_running_loop().time() + 4.0
        while asyncio.get_running_loop().time() < deadline:
            if failures and rt.store.unanchored_count(wf, run) == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    assert failures, "the failure was never injected"
    assert rt.store.unanchored_count(wf, run) == 0, "the batch stayed pending"


async def test_root_already_anchored_is_recorded_as_done(procs: Processes) -> None:
    rt = procs.start()
    wf, _, rows = make_run(rt.store, 9, spec=2)
    rt.store.save_steps(rows)
    seal_of(rt.store, rows)
    claimed = rt.store.claim_batch(
        64, build_batch, chain_id=rt.chain_id, registry=rt.address("CheckpointRegistry")
    )
    assert claimed is not None
    anchor, _ = claimed
    assert anchor.root is not None
    # the root reaches the chain by another way (e.g. an outbox row lost with a restored backup)
    registry = rt.contract("CheckpointRegistry")
    signer = await rt.signer("orchestrator")
    receipt = await signer.send(
        f"elsewhere:{anchor.root}",
        registry.functions.anchorRoot(bytes.fromhex(anchor.root[2:]), anchor.leaf_count, []),
        contract="CheckpointRegistry",
    )
    assert await Anchorer(rt, batch_size=64, max_wait=0.1).resume() == 1
    row = _anchor(rt, anchor.id)
    assert row.tx_hash == receipt.tx_hash and row.block_number == receipt.block_number
    assert rt.store.outbox_get(f"anchor:{anchor.root}") is None  # nothing was signed for it
    # that transaction carried no seal: the run's seal waits again and goes out on its own
    run = rt.store.get_run(wf)
    seal = rt.store.get_seal(run.workflow_id, run.run_id)
    assert seal is not None and seal.status == "pending" and seal.anchor_id is None
    anchorer = Anchorer(rt, batch_size=64, max_wait=0.1)
    assert await anchorer.tick() is True  # a seal-only transaction (leafCount 0)
    assert await anchorer.tick() is False
    await _assert_anchored_once(rt, anchor, wf)


async def test_many_runs_some_batches_orphaned(procs: Processes) -> None:
    """Steps of several runs; a process claims two batches and dies; the surviving anchorer
    anchors the rest as they come and the orphaned batches on resume, each root exactly once."""
    rt1, rt2 = procs.start(), procs.start()
    runs = [make_run(rt1.store, 25, spec=2) for _ in range(4)]
    for _, _, rows in runs:
        rt1.store.save_steps(rows)
        seal_of(rt1.store, rows)
    orphaned = [
        rt2.store.claim_batch(
            16, build_batch, chain_id=rt2.chain_id, registry=rt2.address("CheckpointRegistry")
        )
        for _ in range(2)
    ]
    assert all(c is not None for c in orphaned)
    a1 = Anchorer(rt1, batch_size=16, max_wait=0.0)
    ticks = 0
    while await a1.tick(force=True):
        ticks += 1
    assert ticks == -(-(100 - 32) // 16)
    assert await a1.resume() == 2
    anchor_ids: set[int] = set()
    while await a1.tick():  # seals whose last steps were in the orphaned batches
        ticks += 0
    for wf, run, _ in runs:
        assert rt1.store.unanchored_count(wf, run) == 0
        await _assert_sealed_once(rt1, wf)
        anchor_ids |= {s.anchor_id for s in rt1.store.get_steps(wf, run) if s.anchor_id}
    anchors = rt1.store.get_anchors(anchor_ids)
    assert len(anchors) == ticks + 2
    assert sum(a.leaf_count for a in anchors.values()) == 100
    for a in anchors.values():
        assert a.root is not None and len(await root_anchored_logs(rt1, a.root)) == 1


# ---- gas ----------------------------------------------------------------------------------------


async def test_gas_per_step_batched_vs_per_step(procs: Processes) -> None:
    rt = procs.start()
    sizes = (1, 16, 128, 1024)
    anchor_gas: dict[int, int] = {}
    for size in sizes:  # through the real anchorer: claim a batch of `size` steps, anchor it
        wf, _, rows = make_run(rt.store, size)
        rt.store.save_steps(rows)
        anchor = await Anchorer(rt, batch_size=size, max_wait=0.0).anchor_once()
        assert anchor is not None and anchor.leaf_count == size
        row = _anchor(rt, anchor.id)
        receipt = await rt.w3.eth.get_transaction_receipt(row.tx_hash)  # type: ignore[arg-type]
        anchor_gas[size] = int(receipt["gasUsed"])
    # per-step mode: the registry's `checkpoint` transaction for each step of a run
    wf, _, rows = make_run(rt.store, 8, mode="per-step")
    registry = rt.contract("CheckpointRegistry")
    signer = await rt.signer("orchestrator")
    per_step: list[int] = []
    for r in rows:
        call = registry.functions.checkpoint(
            bytes.fromhex(rows[0].prev[2:]),
            r.seq,
            bytes.fromhex(r.prev[2:]),
            bytes.fromhex(r.step_hash[2:]),
        )
        receipt = await signer.send(f"checkpoint:{wf}:{r.seq}", call, contract="CheckpointRegistry")
        per_step.append(receipt.gas_used)
    table = gas_rows(anchor_gas, per_step)
    print("\ngas per step, from receipts (real anchorer; per-step = `checkpoint` tx):")
    print(format_gas_table(table))
    print(f"per-step `checkpoint` gas, step by step: {per_step}")

    batched = [r for r in table if r.mode == "batched"]
    assert [r.steps_per_tx for r in batched] == list(sizes)
    per = [r.gas_per_step for r in batched]
    assert per == sorted(per, reverse=True)
    per_step_row = table[-1]
    assert per_step_row.mode == "per-step" and per_step_row.transactions == 8
    # a batch of one costs a new storage slot per root; from a few steps per batch on it wins
    assert batched[1].gas_per_step * 10 < per_step_row.gas_per_step
    assert batched[-1].gas_per_step * 500 < per_step_row.gas_per_step

    # the reusable measurement (what `ledgerflow bench` runs) agrees with the anchorer's figures
    bench = await measure_anchor_gas(rt, sizes, per_step_steps=8, key_prefix="test-gas")
    for mine, theirs in zip(table, bench, strict=True):
        assert mine.mode == theirs.mode and mine.steps_per_tx == theirs.steps_per_tx
        assert abs(mine.gas_per_tx - theirs.gas_per_tx) <= 0.01 * mine.gas_per_tx


def test_gas_table_formatting() -> None:
    rows = gas_rows({1: 50_000, 16: [50_000, 50_100]}, [70_000, 40_000])
    assert [r.mode for r in rows] == ["batched", "batched", "per-step"]
    assert rows[1].transactions == 2 and rows[1].gas_per_step == pytest.approx(50_050 / 16)
    assert rows[2].gas_per_step == 55_000 and rows[0].vs_per_step == pytest.approx(50 / 55)
    text = format_gas_table(rows)
    assert text.splitlines()[0].split() == [
        "mode",
        "steps/tx",
        "txs",
        "gas/tx",
        "gas/step",
        "vs",
        "per-step",
    ]
    assert len(text.splitlines()) == 5
    assert gas_rows({}, []) == []


# ---- seals --------------------------------------------------------------------------------------


async def test_a_seal_rides_with_its_runs_last_steps(procs: Processes) -> None:
    """A 10-step run in batches of 4: the seal goes out in the transaction of the third batch
    (which holds the run's last steps), not before; a run whose steps are all anchored already
    gets its seal in a seal-only transaction."""
    rt = procs.start()
    wf, run, rows = make_run(rt.store, 10, spec=2)
    rt.store.save_steps(rows)
    seal_of(rt.store, rows)
    anchorer = Anchorer(rt, batch_size=4, max_wait=0.0)
    anchors = [await anchorer.anchor_once() for _ in range(3)]
    assert [a.leaf_count for a in anchors if a] == [4, 4, 2]
    assert [len(rt.store.anchor_seals(a.id)) for a in anchors if a and a.id] == [0, 0, 1]
    await _assert_sealed_once(rt, wf)
    seal = rt.store.get_seal(wf, run)
    assert (
        seal is not None
        and seal.tx_hash == _anchor(rt, anchors[2].id if anchors[2] else None).tx_hash
    )

    # a seal stored after its steps were anchored (no step pending): a seal-only transaction
    wf2, run2, rows2 = make_run(rt.store, 3, spec=2)
    rt.store.save_steps(rows2)
    assert await anchorer.tick(force=True)
    seal_of(rt.store, rows2)
    assert await anchorer.tick() is True
    only = rt.store.get_seal(wf2, run2)
    assert only is not None and only.anchor_id is not None
    assert _anchor(rt, only.anchor_id).leaf_count == 0
    await _assert_sealed_once(rt, wf2)


async def test_seal_gas(procs: Processes) -> None:
    rt = procs.start()
    gas = await measure_seal_gas(rt, key_prefix="test-seal-gas")
    print(f"\nseal gas: {gas.model_dump()}")
    assert 0 < gas.batched_gas_per_seal < 5_000  # an event of two topics and 64 bytes
    assert gas.anchor_root_gas[8] > gas.anchor_root_gas[1] > gas.anchor_root_gas[0]
    assert 0 < gas.seal_run_gas < 40_000  # a slot already written (steps), one event
    assert gas.per_step["batched@64"] < 100


async def test_a_confirmation_wakes_only_the_runs_in_its_batch() -> None:
    """A waiting flush names its run: a batch of other runs does not wake it (so a confirmation
    costs one wake-up per run in it), its own batch and an unnamed notify (a resumed batch) do."""
    events = AnchorEvents()
    a, b = ("wf-a", "run-a"), ("wf-b", "run-b")
    wait_a, wait_b, anyone = events.wait(a), events.wait(b), events.wait()
    events.notify({b})
    await asyncio.sleep(0)
    assert wait_b.done() and anyone.done() and not wait_a.done()
    events.notify(None)
    await asyncio.sleep(0)
    assert wait_a.done()
    again = events.wait(a)
    events.forget(a)  # the waiter gave up (timeout): a later notify finds nobody
    events.notify({a})
    await asyncio.sleep(0)
    assert not again.done()
    again.cancel()
