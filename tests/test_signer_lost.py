"""A chain that lost blocks: anvil killed between two state dumps and restarted from the older
one (what compose's ``restart: unless-stopped`` does after a crash), and ``anvil_rollback``.

The outbox still says ``mined`` for transactions the chain no longer has, and the signer's next
nonce is ahead of the chain's. The signer must notice (at start-up and when checked), send the
lost transactions of open steps again from the same bytes, void those whose owner closed the
key (a compensated order must not be re-opened), and keep later payments from jamming.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import text

from ledgerflow.chain.rpc import connect_async
from ledgerflow.chain.signer import Signer
from ledgerflow.errors import TxVoided
from ledgerflow.store import OutboxTx, Store
from tests.support.anvil import LocalAnvil, fund


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path}/store.db")
    s.migrate()
    yield s
    s.engine.dispose()


@pytest.fixture
async def signers() -> AsyncIterator[list[Signer]]:
    made: list[Signer] = []
    yield made
    for s in made:
        await s.w3.provider.disconnect()  # type: ignore[attr-defined]


def new_signer(made: list[Signer], url: str, key: str, store: Store, **kw: Any) -> Signer:
    kw.setdefault("timeout", 20.0)
    kw.setdefault("rebroadcast_every", 0.3)
    signer = Signer(connect_async([url]), key, store, 31337, **kw)
    made.append(signer)
    return signer


def addr() -> str:
    return str(Account.create().address)


def get(store: Store, key: str) -> OutboxTx:
    row = store.outbox_get(key)
    assert row is not None, key
    return row


def dumped_block(state: Path) -> int:
    try:
        return int(json.loads(state.read_text()).get("best_block_number") or -1)
    except (OSError, ValueError):
        return -1  # not written yet, or being written


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def test_anvil_killed_between_dumps_then_buy_again(
    tmp_path: Path, store: Store, signers: list[Signer]
) -> None:
    state = tmp_path / "anvil-state.json"
    chain = LocalAnvil(tmp_path, extra_args=["--state", str(state), "--state-interval", "1"])
    chain.start()
    try:
        key = fund(chain.url)
        signer = new_signer(signers, chain.url, key, store)
        a, b, c, d = addr(), addr(), addr(), addr()
        r1 = await signer.send_tx("pay:1", to=a, value=1)
        await wait_until(lambda: dumped_block(state) >= r1.block_number)
        older = state.read_bytes()  # the last dump before the crash
        r2 = await signer.send_tx("pay:2", to=b, value=2)
        r3 = await signer.send_tx("escrow.open:order-3", to=c, value=3)
        assert get(store, "pay:2").status == get(store, "escrow.open:order-3").status == "mined"
        # order 3's workflow compensates: its owner closes the key (the effect must not happen
        # any more); the row says the transaction was signed and mined
        closed = await signer.close("escrow.open:order-3", "workflow compensated")
        assert closed is not None and closed.status == "mined"

        # anvil dies before its next dump and comes back from the older state
        chain.kill()
        state.write_bytes(older)
        chain.start()
        assert chain.nonce(signer.address) == 1 and chain.balance(b) == chain.balance(c) == 0
        assert get(store, "pay:2").status == "mined"  # the store does not know yet

        # the worker restarts: a new signer on the same store, and someone buys again
        after = new_signer(signers, chain.url, key, store)
        r4 = await asyncio.wait_for(after.send_tx("pay:4", to=d, value=4), 30)
        assert chain.balance(d) == 4, "a later payment must not sit behind the gap"
        assert after.lost == 2
        # the open step's transaction went out again from the same bytes; the closed one was
        # voided with a no-op at its nonce, so its effect never came back
        again = await after.send_tx("pay:2", to=b, value=2)
        assert again.tx_hash == r2.tx_hash and chain.balance(b) == 2
        with pytest.raises(TxVoided):
            await after.send_tx("escrow.open:order-3", to=c, value=3)
        assert chain.balance(c) == 0
        voided = get(store, "escrow.open:order-3")
        assert voided.status == "voided" and voided.nonce == 2
        variants = {v.kind: v.tx_hash for v in store.outbox_variants(voided)}
        assert variants.keys() == {"original", "void"} and variants["original"] == r3.tx_hash
        assert voided.tx_hash == variants["void"]  # the no-op is what was mined at nonce 2
        # nonces: pay:1, pay:2, the void, pay:4 — contiguous, nothing left pending
        assert chain.nonce(after.address) == chain.nonce(after.address, "pending") == 4
        assert get(store, "pay:4").nonce == 3 and r4.tx_hash == get(store, "pay:4").tx_hash
        await after.check_chain()
        assert store.outbox_unmined(31337, after.address) == []
    finally:
        chain.stop()


async def test_rollback_detected_by_the_periodic_check(
    tmp_path: Path, store: Store, signers: list[Signer]
) -> None:
    chain = LocalAnvil(tmp_path).start()
    try:
        signer = new_signer(signers, chain.url, fund(chain.url), store)
        a = addr()
        first = [await signer.send_tx(f"rb:{i}", to=a, value=1) for i in range(3)]
        chain.call("anvil_rollback", 2)  # the last two blocks are gone
        assert chain.nonce(signer.address) == 1 and chain.balance(a) == 1
        stop = asyncio.Event()
        watch = asyncio.create_task(signer.watch_chain(stop, 0.2))
        try:
            await wait_until(lambda: chain.balance(a) == 3)
            await wait_until(lambda: store.outbox_unmined(31337, signer.address) == [])
        finally:
            stop.set()
            await watch
        assert signer.lost == 2
        for i, receipt in enumerate(first):
            row = get(store, f"rb:{i}")
            assert row.status == "mined" and row.tx_hash == receipt.tx_hash  # same bytes
            block = chain.call("eth_getBlockByNumber", hex(row.block_number or 0), False)
            assert block["hash"] == row.block_hash
        # and the next payment goes straight through
        await asyncio.wait_for(signer.send_tx("rb:next", to=a, value=1), 10)
        assert chain.balance(a) == 4 and chain.nonce(signer.address) == 4
    finally:
        chain.stop()


async def test_nonce_without_a_row_is_filled(
    tmp_path: Path, store: Store, signers: list[Signer]
) -> None:
    """A nonce below the next one that no outbox row holds (the store was restored from an
    older backup) would keep every later transaction queued: it is filled with a no-op."""
    chain = LocalAnvil(tmp_path).start()
    try:
        chain.call("evm_setAutomine", False)
        signer = new_signer(signers, chain.url, fund(chain.url), store)
        a = addr()
        sends = [asyncio.create_task(signer.send_tx(f"gap:{i}", to=a, value=1)) for i in range(3)]
        await wait_until(lambda: len(store.outbox_unmined(31337, signer.address)) == 3)
        lost = get(store, "gap:1")
        chain.call("anvil_dropTransaction", lost.tx_hash)
        with store.engine.begin() as conn:  # the backup did not have it
            conn.execute(text("DELETE FROM outbox WHERE key = 'gap:1'"))
        sends[1].cancel()
        done = await signer.check_chain()
        assert done["gaps"] == 1 and signer.gaps_filled == 1
        chain.call("evm_setAutomine", True)
        chain.mine()
        await asyncio.wait_for(asyncio.gather(sends[0], sends[2]), 20)
        assert chain.balance(a) == 2 and chain.nonce(signer.address) == 3
        filler = store.outbox_get(f"nonce-gap:31337:{signer.address}:{lost.nonce}")
        assert filler is not None and filler.nonce == lost.nonce
    finally:
        chain.stop()


async def test_closing_a_pending_key_voids_its_transaction(
    tmp_path: Path, store: Store, signers: list[Signer]
) -> None:
    """The owner closes a key whose transaction is still pending (its workflow compensated an
    open that had timed out): a no-op outbids it at its nonce, and the waiting send learns that
    the effect did not happen. Closing a key never sent means nothing will be signed for it."""
    chain = LocalAnvil(tmp_path).start()
    try:
        chain.call("evm_setAutomine", False)
        signer = new_signer(signers, chain.url, fund(chain.url), store)
        a = addr()
        task = asyncio.create_task(signer.send_tx("escrow.open:late", to=a, value=5))
        await wait_until(lambda: store.outbox_get("escrow.open:late") is not None)
        closed = await signer.close("escrow.open:late", "compensated")
        assert closed is not None and closed.status == "signed"  # signed: it may still happen
        await wait_until(lambda: get(store, "escrow.open:late").tx_hash != closed.tx_hash)
        chain.mine()
        with pytest.raises(TxVoided):
            await asyncio.wait_for(task, 20)
        assert chain.balance(a) == 0 and chain.nonce(signer.address) == 1
        assert get(store, "escrow.open:late").status == "voided"
        # a key closed before anything was signed for it: nothing ever will be
        assert await signer.close("escrow.open:never") is None
        chain.call("evm_setAutomine", True)
        with pytest.raises(TxVoided, match="closed by its owner"):
            await signer.send_tx("escrow.open:never", to=a, value=5)
        assert store.outbox_get("escrow.open:never") is None and chain.balance(a) == 0
    finally:
        chain.stop()
