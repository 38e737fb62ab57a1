"""The signer against real anvils of its own: concurrent sends, reorgs (``anvil_reorg``,
``anvil_rollback``), EIP-1559 fees from ``eth_feeHistory`` with a maximum, replacement of a
stuck transaction at the same nonce (automine off, base-fee spikes) and "whichever variant is
mined counts"."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from hexbytes import HexBytes

from ledgerflow.chain.fees import FeePolicy
from ledgerflow.chain.keys import decode_signed
from ledgerflow.chain.rpc import connect_async
from ledgerflow.chain.signer import Signer
from ledgerflow.errors import FeeTooHigh
from ledgerflow.store import OutboxTx, Store
from tests.support.anvil import LocalAnvil, fund

GWEI = 10**9


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[LocalAnvil]:
    anvil = LocalAnvil(tmp_path).start()
    try:
        yield anvil
    finally:
        anvil.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path}/store.db")
    s.migrate()
    yield s
    s.engine.dispose()


MakeSigner = Callable[..., Signer]


@pytest.fixture
async def make_signer(chain: LocalAnvil, store: Store) -> AsyncIterator[MakeSigner]:
    """Signers on the test's anvil (a fresh funded key unless one is given)."""
    made: list[Signer] = []

    def make(key: str | None = None, **kw: Any) -> Signer:
        w3 = connect_async([chain.url])
        kw.setdefault("timeout", 30.0)
        kw.setdefault("rebroadcast_every", 0.3)
        signer = Signer(w3, key or fund(chain.url), kw.pop("store", store), 31337, **kw)
        made.append(signer)
        return signer

    yield make
    for s in made:
        await s.w3.provider.disconnect()  # type: ignore[attr-defined]


def recipient() -> str:
    return str(Account.create().address)


async def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def receipt_of(chain: LocalAnvil, tx_hash: str) -> dict[str, Any] | None:
    r = chain.call("eth_getTransactionReceipt", tx_hash)
    return r if isinstance(r, dict) else None


def row(store: Store, key: str) -> OutboxTx:
    r = store.outbox_get(key)
    assert r is not None, key
    return r


class Miner:
    """Mines a block every ``every`` seconds in the background (confirmations need blocks)."""

    def __init__(self, chain: LocalAnvil, every: float = 0.1) -> None:
        self.chain, self.every = chain, every
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self.chain.mine)
            await asyncio.sleep(self.every)

    def __enter__(self) -> Miner:
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()


# ---- the basics ---------------------------------------------------------------------------------


async def test_concurrent_sends_contiguous_nonces_final_rows(
    chain: LocalAnvil, store: Store, make_signer: MakeSigner
) -> None:
    signer = make_signer()
    to = recipient()
    receipts = await asyncio.gather(
        *(signer.send_tx(f"basic:{i}", to=to, value=i + 1) for i in range(40))
    )
    assert chain.balance(to) == sum(range(1, 41))
    rows = [row(store, f"basic:{i}") for i in range(40)]
    assert sorted(r.nonce for r in rows) == list(range(40))
    assert chain.nonce(signer.address) == 40 == chain.nonce(signer.address, "pending")
    for r, receipt in zip(rows, receipts, strict=True):
        assert r.status == "mined" and r.tx_hash == receipt.tx_hash
        block = chain.call("eth_getBlockByNumber", hex(receipt.block_number), False)
        assert r.block_hash == block["hash"] == receipt.block_hash
    assert signer.nonce_errors == 0
    # a retry of a key returns the same receipt and signs nothing
    again = await signer.send_tx("basic:7", to=to, value=8)
    assert again.tx_hash == receipts[7].tx_hash and chain.nonce(signer.address) == 40


async def test_fees_come_from_fee_history_and_stay_under_the_maximum(
    chain: LocalAnvil, store: Store, make_signer: MakeSigner
) -> None:
    signer = make_signer(fees=FeePolicy(max_fee=40 * GWEI, min_tip=GWEI // 10, max_tip=2 * GWEI))
    to = recipient()
    await signer.send_tx("fees:warm", to=to, value=1)  # a block whose tip history says 0.1 gwei
    chain.call("anvil_setNextBlockBaseFeePerGas", hex(25 * GWEI))
    chain.mine()
    base = int(chain.call("eth_feeHistory", "0x1", "latest", [])["baseFeePerGas"][-1], 16)
    signer.fees._cached = None
    await signer.send_tx("fees:1", to=to, value=1)
    fields, sender = decode_signed(row(store, "fees:1").raw)
    assert sender == signer.address
    tip, max_fee = int(fields["maxPriorityFeePerGas"]), int(fields["maxFeePerGas"])
    assert tip == GWEI // 10  # the median of the tips paid lately, at least the minimum
    assert max_fee == min(2 * base + tip, 40 * GWEI) == 40 * GWEI  # capped by the maximum


async def test_fee_above_the_maximum_is_not_paid(
    chain: LocalAnvil, store: Store, make_signer: MakeSigner
) -> None:
    signer = make_signer(fees=FeePolicy(max_fee=5 * GWEI), timeout=1.5)
    chain.call("anvil_setNextBlockBaseFeePerGas", hex(80 * GWEI))
    chain.mine()
    t0 = time.monotonic()
    with pytest.raises(FeeTooHigh) as info:
        await signer.send_tx("spike:1", to=recipient(), value=1)
    assert time.monotonic() - t0 >= 1.4  # it waited for the fee to fall before failing
    assert info.value.maximum == 5 * GWEI and info.value.needed > 5 * GWEI
    assert "above the maximum of 5 gwei" in str(info.value) and info.value.retryable
    assert store.outbox_get("spike:1") is None  # nothing was signed
    assert chain.nonce(signer.address, "pending") == 0


# ---- reorgs -------------------------------------------------------------------------------------


async def test_reorged_out_transaction_is_rebroadcast_and_counts_only_when_final(
    chain: LocalAnvil, store: Store, make_signer: MakeSigner
) -> None:
    """The v1 bug: after anvil_reorg removed a tx's block and 3 more were mined, send() returned
    success and the outbox said mined while the transaction was gone."""
    signer = make_signer(confirmations=3)
    to = recipient()
    task = asyncio.create_task(signer.send_tx("reorg:1", to=to, value=7))
    first = await wait_for(
        lambda: (r := store.outbox_get("reorg:1")) and receipt_of(chain, r.tx_hash)
    )
    mined_in = int(first["blockNumber"], 16)
    chain.call("anvil_reorg", 1, [])  # the block is replaced by one without the transaction
    assert receipt_of(chain, first["transactionHash"]) is None and chain.balance(to) == 0
    chain.mine(3)  # three confirmations on top of where it was
    await asyncio.sleep(1.0)
    assert not task.done(), "send() reported success for a transaction the chain does not have"
    assert row(store, "reorg:1").status == "signed"
    # The signer rebroadcast the same bytes (automine put them in a new block): it counts only
    # once that block has 3 confirmations.
    again = await wait_for(lambda: receipt_of(chain, first["transactionHash"]), what="re-mined")
    assert int(again["blockNumber"], 16) > mined_in
    await asyncio.sleep(0.5)
    assert not task.done()
    with Miner(chain):
        receipt = await asyncio.wait_for(task, 20)
    assert receipt.tx_hash == first["transactionHash"]  # the same signed bytes
    assert receipt.block_hash == again["blockHash"] != first["blockHash"]
    final = row(store, "reorg:1")
    assert final.status == "mined" and final.block_hash == again["blockHash"]
    assert chain.balance(to) == 7 and chain.nonce(signer.address) == 1
    assert signer.reorgs >= 1 and signer.nonce_errors == 0


async def test_rolled_back_transaction_is_sent_again(
    chain: LocalAnvil, store: Store, make_signer: MakeSigner
) -> None:
    signer = make_signer(confirmations=2)
    to = recipient()
    task = asyncio.create_task(signer.send_tx("rollback:1", to=to, value=3))
    first = await wait_for(
        lambda: (r := store.outbox_get("rollback:1")) and receipt_of(chain, r.tx_hash)
    )
    chain.call("anvil_rollback", 1)  # the block is gone, nothing replaces it
    assert receipt_of(chain, first["transactionHash"]) is None
    with Miner(chain):
        receipt = await asyncio.wait_for(task, 20)
    assert receipt.tx_hash == first["transactionHash"]
    assert chain.balance(to) == 3
    assert row(store, "rollback:1").block_hash == receipt.block_hash


async def test_receipt_in_a_replaced_block_is_followed(
    chain: LocalAnvil, store: Store, make_signer: MakeSigner
) -> None:
    """A reorg that re-includes the transaction in another block at the same height: the
    receipt's new block is the one that counts."""
    signer = make_signer(confirmations=2)
    to = recipient()
    task = asyncio.create_task(signer.send_tx("reinclude:1", to=to, value=5))
    first = await wait_for(
        lambda: (r := store.outbox_get("reinclude:1")) and receipt_of(chain, r.tx_hash)
    )
    raw = row(store, "reinclude:1").raw
    chain.call("anvil_reorg", 1, [[raw, 0]])  # the same transaction, in a new block 0 deep
    moved = receipt_of(chain, first["transactionHash"])
    assert moved is not None and moved["blockHash"] != first["blockHash"]
    with Miner(chain):
        receipt = await asyncio.wait_for(task, 20)
    assert receipt.block_hash == moved["blockHash"]
    assert row(store, "reinclude:1").block_hash == moved["blockHash"]
    assert chain.balance(to) == 5


# ---- stuck transactions: replacement at the same nonce ------------------------------------------


def _fees_of(raw: str) -> tuple[int, int]:
    fields, _ = decode_signed(raw)
    return int(fields["maxFeePerGas"]), int(fields["maxPriorityFeePerGas"])


@pytest.fixture
def manual_mining(chain: LocalAnvil) -> Iterator[None]:
    chain.call("evm_setAutomine", False)
    yield
    chain.call("evm_setAutomine", True)


@pytest.mark.usefixtures("manual_mining")
async def test_priced_out_transaction_is_replaced_with_bumped_fees(
    chain: LocalAnvil, store: Store, make_signer: MakeSigner
) -> None:
    signer = make_signer(
        replace_after=60.0
    )  # replaced because it is priced out, not because of age
    to = recipient()
    task = asyncio.create_task(signer.send_tx("bump:1", to=to, value=11))
    original = await wait_for(lambda: store.outbox_get("bump:1"))
    old_max, old_tip = _fees_of(original.raw)
    # A base-fee spike: the next block needs 50 gwei, far above what the transaction pays.
    chain.call("anvil_setNextBlockBaseFeePerGas", hex(50 * GWEI))
    chain.mine()
    assert receipt_of(chain, original.tx_hash) is None
    replaced = await wait_for(
        lambda: (r := store.outbox_get("bump:1")) and r.tx_hash != original.tx_hash and r,
        what="replacement",
    )
    new_max, new_tip = _fees_of(replaced.raw)
    assert new_max >= old_max * 1.1 and new_tip >= old_tip * 1.1
    assert new_max > 50 * GWEI * 7 // 8  # it pays what the chain asks now
    assert replaced.nonce == original.nonce
    chain.mine()
    receipt = await asyncio.wait_for(task, 20)
    assert receipt.tx_hash == replaced.tx_hash
    variants = store.outbox_variants(row(store, "bump:1"))
    assert {v.tx_hash for v in variants} == {original.tx_hash, replaced.tx_hash}
    assert {v.kind for v in variants} == {"original", "replacement"}
    assert chain.balance(to) == 11 and chain.nonce(signer.address) == 1  # paid once
    assert row(store, "bump:1").status == "mined" and signer.replacements == 1


@pytest.mark.usefixtures("manual_mining")
async def test_transaction_pending_past_the_deadline_is_replaced(
    chain: LocalAnvil, store: Store, make_signer: MakeSigner
) -> None:
    signer = make_signer(replace_after=0.8)
    to = recipient()
    task = asyncio.create_task(signer.send_tx("stuck:1", to=to, value=2))
    original = await wait_for(lambda: store.outbox_get("stuck:1"))
    replaced = await wait_for(
        lambda: (r := store.outbox_get("stuck:1")) and r.tx_hash != original.tx_hash and r,
        what="replacement",
    )
    (old_max, old_tip), (new_max, new_tip) = _fees_of(original.raw), _fees_of(replaced.raw)
    assert new_max >= old_max * 1.1 and new_tip >= old_tip * 1.1
    pool = chain.call("txpool_content")["pending"]
    (only,) = pool[signer.address.lower()].values()  # the node replaced it in its pool
    # On a loaded machine the signer may have replaced it once more meanwhile: the pool holds
    # the latest variant the outbox names, never the original.
    latest = store.outbox_get("stuck:1")
    assert latest is not None and only["hash"] in (replaced.tx_hash, latest.tx_hash)
    assert only["hash"] != original.tx_hash
    chain.mine()
    receipt = await asyncio.wait_for(task, 20)
    assert receipt.tx_hash != original.tx_hash
    assert chain.balance(to) == 2 and chain.nonce(signer.address) == 1


@pytest.mark.usefixtures("manual_mining")
async def test_whichever_variant_is_mined_counts(
    chain: LocalAnvil, store: Store, make_signer: MakeSigner
) -> None:
    """The original is mined after it was replaced (another node still had it): the send
    succeeds with the original's receipt, signs nothing more, and pays once."""
    signer = make_signer(replace_after=0.3, rebroadcast_every=3.0)
    to = recipient()
    task = asyncio.create_task(signer.send_tx("either:1", to=to, value=4))
    original = await wait_for(lambda: store.outbox_get("either:1"))
    replaced = await wait_for(
        lambda: (r := store.outbox_get("either:1")) and r.tx_hash != original.tx_hash and r,
        what="replacement",
    )
    # The next rebroadcast is seconds away: put the original back in the pool and mine it.
    chain.call("anvil_dropTransaction", replaced.tx_hash)
    chain.call("eth_sendRawTransaction", original.raw)
    chain.mine()
    assert receipt_of(chain, original.tx_hash) is not None
    receipt = await asyncio.wait_for(task, 20)
    assert receipt.tx_hash == original.tx_hash
    final = row(store, "either:1")
    assert final.status == "mined" and final.tx_hash == original.tx_hash
    assert HexBytes(final.raw) == HexBytes(original.raw)
    assert chain.balance(to) == 4 and chain.nonce(signer.address) == 1
    # nothing else was signed at another nonce
    assert chain.nonce(signer.address, "pending") == 1 and signer.nonce_errors == 0


@pytest.mark.usefixtures("manual_mining")
async def test_replacement_never_exceeds_the_maximum(
    chain: LocalAnvil, store: Store, make_signer: MakeSigner
) -> None:
    """Priced out under a cap that leaves no room for a bump: no replacement above the cap;
    the send fails with FeeTooHigh and the transaction stays in the outbox."""
    signer = make_signer(fees=FeePolicy(max_fee=3 * GWEI), timeout=2.0)
    task = asyncio.create_task(signer.send_tx("capped:1", to=recipient(), value=1))
    original = await wait_for(lambda: store.outbox_get("capped:1"))
    chain.call("anvil_setNextBlockBaseFeePerGas", hex(50 * GWEI))
    chain.mine()
    with pytest.raises(FeeTooHigh):
        await asyncio.wait_for(task, 20)
    for variant in store.outbox_variants(row(store, "capped:1")):
        assert _fees_of(variant.raw)[0] <= 3 * GWEI
    assert row(store, "capped:1").status == "signed" and original.nonce == 0


# ---- heartbeats ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("manual_mining")
async def test_a_waiting_send_heartbeats_its_activity(
    chain: LocalAnvil, store: Store, make_signer: MakeSigner
) -> None:
    """Inside a Temporal activity the runtime's heartbeat reaches Temporal while a send waits,
    so a worker that dies in a chain step is noticed within the heartbeat timeout."""
    from temporalio.testing import ActivityEnvironment

    from ledgerflow.runtime import _activity_heartbeat

    signer = make_signer(heartbeat=_activity_heartbeat, rebroadcast_every=0.2)
    beats: list[object] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)

    async def activity() -> str:
        receipt = await signer.send_tx("beat:1", to=recipient(), value=1)
        return receipt.tx_hash

    task = asyncio.create_task(env.run(activity))
    await wait_for(lambda: len(beats) >= 3, what="heartbeats while pending")
    chain.mine()
    assert (await asyncio.wait_for(task, 20)).startswith("0x")
    # outside an activity the same signer does not try to heartbeat
    _activity_heartbeat()
