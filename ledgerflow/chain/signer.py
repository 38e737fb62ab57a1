"""One signer per key: in-order nonces, the signed raw transaction persisted before broadcast,
and retries that find the receipt or rebroadcast the same bytes instead of signing anew.

Run one :class:`Signer` per key per process (the worker). Two processes signing with one key
would hand out the same nonces; give each worker its own key instead.

Concurrent sends are group-committed: gas is estimated concurrently (a revert surfaces before
anything is signed), then whoever holds the nonce lock takes every send queued so far, signs them
with consecutive nonces, persists all of them in one store transaction and only then broadcasts
them in nonce order. Marking mined transactions is group-committed the same way. So a burst of N
sends costs one store write for the batch instead of one per transaction under the lock, and the
per-transaction work left under the lock is signing and one ``eth_sendRawTransaction``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_keys.datatypes import PrivateKey
from eth_typing import ChecksumAddress, HexStr
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col
from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import RPCEndpoint

from ledgerflow.chain.reverts import revert_from_exception
from ledgerflow.errors import ChainError, ContractRevert, StoreError
from ledgerflow.store import OutboxTx, Store

__all__ = ["Receipt", "Signer"]

log = structlog.get_logger(__name__)

_KNOWN = ("already known", "known transaction", "already imported")


class _DeadTransaction(Exception):
    """A signed transaction whose nonce another transaction took: it can never be mined."""


@dataclass(eq=False)
class _Submission:
    """One send waiting for the nonce lock; resolved with (row, fresh) once broadcast."""

    key: str
    call: Any
    to: str
    data: str
    value: int
    gas: int
    future: asyncio.Future[tuple[OutboxTx, bool]] = field(repr=False)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as retrieved (its submitter may have gone away)."""
    if not fut.cancelled():
        fut.exception()


class Receipt(dict[str, Any]):
    """A mined transaction's receipt (web3's AttributeDict, as a plain dict)."""

    @property
    def tx_hash(self) -> str:
        return "0x" + bytes(self["transactionHash"]).hex()

    @property
    def block_number(self) -> int:
        return int(self["blockNumber"])

    @property
    def gas_used(self) -> int:
        return int(self["gasUsed"])


class Signer:
    """Signs and sends transactions for one key with exactly-once semantics per idempotency key."""

    def __init__(
        self,
        w3: AsyncWeb3,
        private_key: str,
        store: Store,
        chain_id: int,
        *,
        confirmations: int = 0,
        timeout: float = 60.0,
        poll: float = 0.02,
    ) -> None:
        self.w3 = w3
        self._account: LocalAccount = Account.from_key(private_key)
        # Parsed once: signing with the key object skips re-deriving the public key every time.
        self._key = PrivateKey(bytes(self._account.key))
        self.address: ChecksumAddress = self._account.address
        self.store = store
        self.chain_id = chain_id
        self.confirmations = confirmations
        self.timeout = timeout
        self.poll = poll
        self._lock = asyncio.Lock()
        self._nonce: int | None = None
        self._fees: tuple[float, dict[str, int]] | None = None
        self.nonce_errors = 0
        self._pumped = False
        self._queue: list[_Submission] = []
        self._marks: list[tuple[str, int, asyncio.Future[None]]] = []
        self._mark_lock = asyncio.Lock()
        # Bounds this signer's concurrent estimate/receipt requests, so that a burst of sends
        # does not open hundreds of connections to the node at once.
        self._rpc_slots = asyncio.Semaphore(16)
        # Sends waiting for their nonce to be mined, and the one task polling for them.
        self._mined_count = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._watcher: asyncio.Task[None] | None = None

    def owns(self, private_key: str) -> bool:
        """Whether this signer signs for ``private_key`` (one signer per key per process)."""
        return Account.from_key(private_key).address == self.address

    def __repr__(self) -> str:  # never show the key
        return f"Signer(address={self.address}, chain_id={self.chain_id})"

    async def send(
        self, key: str, call: Any, *, value: int = 0, contract: str = "", gas: int | None = None
    ) -> Receipt:
        """Send ``call`` (a web3 contract function) once for ``key``.

        A second call with the same key, from a retried activity or after a crash, does not sign a
        new transaction: it returns the first one's receipt, rebroadcasting its raw bytes if needed.
        Only when the chain proves the first transaction can never be mined (its nonce was taken
        by another transaction of this key, e.g. sent by another tool) is it signed again, under
        the same key, with a fresh nonce.

        Raises:
            ContractRevert: the call reverts (decoded custom error); nothing was signed.
            ChainError: the node refused the transaction or no receipt came in time.
        """
        row = await asyncio.to_thread(self.store.outbox_get, key)
        fresh = False
        if row is None:
            to, data = str(call.address), str(call._encode_transaction_data())  # encoded once
            if gas is None:
                gas = await self._estimate_data(to, data, value, contract)  # outside the lock
            row, fresh = await self._submit(key, call, to, data, value, gas)
        receipt: Receipt | None = None
        try:
            if not fresh:
                # A retry (or a key sent before): find the receipt or rebroadcast the same bytes.
                receipt = await self._receipt(row)
                if receipt is None and not await self._broadcast(row):
                    receipt = await self._mined_or_alive(row)
            return await self._settle(row, contract, receipt)
        except _DeadTransaction:
            # Its nonce is used by another transaction: this one is dead, sign anew.
            async with self._lock:
                self._nonce = None
                row = await self._sign_and_broadcast(key, call, value, contract, gas, row)
            return await self._settle(row, contract, None)

    async def _estimate(self, call: Any, value: int, contract: str) -> int:
        """The gas limit for ``call``: the node's estimate plus a margin. A revert raises."""
        try:
            gas = int(await call.estimate_gas({"from": self.address, "value": value}))
        except ContractLogicError as exc:
            raise revert_from_exception(exc, contract=contract) from None
        return gas + gas // 5 + 10_000

    async def _estimate_data(self, to: str, data: str, value: int, contract: str) -> int:
        """:meth:`_estimate` for pre-encoded call data, as one plain ``eth_estimateGas``.

        Straight to the provider: web3's validation middleware would add an ``eth_chainId``
        request to every estimate, and the call data is encoded once for estimate and signing.
        """
        tx = {"from": self.address, "to": to, "data": data, "value": hex(value)}
        async with self._rpc_slots:
            resp = await self.w3.provider.make_request(RPCEndpoint("eth_estimateGas"), [tx])
        error = resp.get("error")
        if error:
            err = error if isinstance(error, dict) else {"message": str(error)}
            message = str(err.get("message", ""))
            if err.get("data") is not None or "revert" in message.lower():
                exc = ContractLogicError(message, data=err.get("data"))
                raise revert_from_exception(exc, contract=contract) from None
            raise ChainError(f"gas estimation failed for {to}: {message}")
        gas = int(str(resp["result"]), 16)
        return gas + gas // 5 + 10_000

    async def _submit(
        self, key: str, call: Any, to: str, data: str, value: int, gas: int
    ) -> tuple[OutboxTx, bool]:
        """Queue one send for the next batch; returns its persisted, broadcast row and whether
        this call created it (False: the key was in the outbox already)."""
        fut: asyncio.Future[tuple[OutboxTx, bool]] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._queue.append(_Submission(key, call, to, data, value, gas, fut))
        async with self._lock:
            if not fut.done():
                batch, self._queue = self._queue, []
                await self._send_batch(batch)
        return await fut

    async def _send_batch(self, batch: list[_Submission]) -> None:
        """Under the lock: sign with consecutive nonces, persist all, then broadcast in order."""
        try:
            await self._sign_persist_broadcast(batch)
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else ChainError("sending was interrupted")
            for sub in batch:
                if not sub.future.done():
                    sub.future.set_exception(failure)
            raise

    async def _sign_persist_broadcast(self, batch: list[_Submission]) -> None:
        if self._nonce is None:
            await self._init_nonce()
        assert self._nonce is not None
        fees = await self._fee_fields()
        nonce = self._nonce
        signed: list[tuple[_Submission, OutboxTx]] = []
        for sub in batch:
            tx: dict[str, Any] = {
                "type": 2,
                "chainId": self.chain_id,
                "nonce": nonce,
                "to": sub.to,
                "data": sub.data,
                "value": sub.value,
                "gas": sub.gas,
                **fees,
            }
            try:
                sig = Account.sign_transaction(tx, self._key)
            except Exception as exc:
                sub.future.set_exception(exc)
                continue
            row = OutboxTx(
                key=sub.key,
                chain_id=self.chain_id,
                sender=self.address,
                nonce=nonce,
                raw="0x" + bytes(sig.raw_transaction).hex(),
                tx_hash="0x" + bytes(sig.hash).hex(),
            )
            signed.append((sub, row))
            nonce += 1
        if not signed:
            return
        try:
            await asyncio.to_thread(self._persist, [row for _, row in signed])
        except IntegrityError:
            # A key sent already, or a nonce taken: settle each one by one (nothing was stored).
            for sub, _ in signed:
                await self._submit_one(sub)
            return
        # Persisted: these nonces are taken whatever happens to the broadcasts.
        self._nonce = nonce
        for sub, row in signed:
            try:
                ok = await self._broadcast(row)
            except ChainError as exc:
                # Stays in the outbox: a retry of this key rebroadcasts the same bytes.
                sub.future.set_exception(exc)
                continue
            if ok:
                log.info("tx sent", key=row.key, tx_hash=row.tx_hash, nonce=row.nonce)
                sub.future.set_result((row, True))
            else:
                # The node says this nonce is used: our counter drifted (another sender with this
                # key). send() finds the row dead and signs it anew with a fresh nonce.
                self.nonce_errors += 1
                self._nonce = None
                sub.future.set_result((row, False))

    async def _submit_one(self, sub: _Submission) -> None:
        try:
            row = await asyncio.to_thread(self.store.outbox_get, sub.key)
            if row is not None:
                sub.future.set_result((row, False))
                return
            row = await self._sign_and_broadcast(sub.key, sub.call, sub.value, "", sub.gas, None)
            sub.future.set_result((row, True))
        except Exception as exc:
            sub.future.set_exception(exc)

    def _persist(self, rows: list[OutboxTx]) -> None:
        """Store signed transactions in one transaction (all or none)."""
        with self.store.session() as s:
            s.add_all(rows)
            s.commit()

    async def _sign_and_broadcast(
        self,
        key: str,
        call: Any,
        value: int,
        contract: str,
        gas: int | None,
        replacing: OutboxTx | None,
    ) -> OutboxTx:
        params: dict[str, Any] = {"from": self.address, "value": value}
        if gas is None:
            gas = await self._estimate(call, value, contract)
        for _ in range(3):
            if self._nonce is None:
                await self._init_nonce()
            assert self._nonce is not None
            params.update(
                {
                    "nonce": self._nonce,
                    "gas": gas,
                    "chainId": self.chain_id,
                    **(await self._fee_fields()),
                }
            )
            tx = await call.build_transaction(params)
            signed = Account.sign_transaction(tx, self._key)
            raw = "0x" + bytes(signed.raw_transaction).hex()
            tx_hash = "0x" + bytes(signed.hash).hex()
            if replacing is None:
                row = OutboxTx(
                    key=key,
                    chain_id=self.chain_id,
                    sender=self.address,
                    nonce=self._nonce,
                    raw=raw,
                    tx_hash=tx_hash,
                )
                try:
                    await asyncio.to_thread(self.store.outbox_put, row)
                except IntegrityError:
                    self.nonce_errors += 1
                    self._nonce = None
                    continue
            else:
                row = await asyncio.to_thread(
                    self.store.outbox_replace, key, self._nonce, raw, tx_hash
                )
            replacing = row
            if await self._broadcast(row):
                self._nonce += 1
                log.info("tx sent", key=key, tx_hash=row.tx_hash, nonce=row.nonce)
                return row
            # The node says this nonce is used: our counter drifted (another sender with this key).
            self.nonce_errors += 1
            self._nonce = None
        raise ChainError(f"could not find a free nonce for {self.address} after 3 tries")

    async def _init_nonce(self) -> None:
        if self._pumped:
            self._nonce = int(await self.w3.eth.get_transaction_count(self.address, "pending"))
            return
        chain_nonce = int(await self.w3.eth.get_transaction_count(self.address, "pending"))
        stored = await asyncio.to_thread(self.store.outbox_max_nonce, self.chain_id, self.address)
        self._nonce = max(chain_nonce, -1 if stored is None else stored + 1)
        self._pumped = True
        await self.pump()

    async def pump(self) -> int:
        """Rebroadcast, in nonce order, every signed transaction not yet seen mined.

        A crash between persisting and broadcasting would otherwise leave a nonce gap that jams
        every later transaction of this key.
        """
        rows = await asyncio.to_thread(self.store.outbox_unmined, self.chain_id, self.address)
        for row in rows:
            if not await self._broadcast(row) and await self._receipt(row) is None:
                log.warning("outbox tx can no longer be mined", key=row.key, nonce=row.nonce)
        return len(rows)

    async def _broadcast(self, row: OutboxTx) -> bool:
        """Send the raw bytes; False when the node says the nonce is already used."""
        try:
            await self.w3.eth.send_raw_transaction(HexStr(row.raw))
        except Web3RPCError as exc:
            message = str(exc).lower()
            if any(s in message for s in _KNOWN):
                return True  # the node has it already: the receipt lookup settles it
            if "nonce too low" in message:
                return False
            if "nonce too high" in message:
                self.nonce_errors += 1
            raise ChainError(f"node refused transaction {row.tx_hash}: {exc}") from None
        return True

    async def _fee_fields(self) -> dict[str, int]:
        now = time.monotonic()
        if self._fees is None or now - self._fees[0] > 2.0:
            block = await self.w3.eth.get_block("latest")
            base = int(block.get("baseFeePerGas") or 0)
            tip = 1_000_000_000
            self._fees = (now, {"maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip})
        return self._fees[1]

    async def _settle(self, row: OutboxTx, contract: str, receipt: Receipt | None) -> Receipt:
        if receipt is None:
            receipt = await self._wait_receipt(row)
        if int(receipt["status"]) != 1:
            await asyncio.to_thread(
                self.store.outbox_mark, row.key, "reverted", int(receipt["blockNumber"])
            )
            raise await self._explain_revert(row, receipt, contract)
        if row.status != "mined":
            await self._mark_mined(row.key, int(receipt["blockNumber"]))
        if self.confirmations:
            await self._wait_confirmations(int(receipt["blockNumber"]))
        return receipt

    async def _receipt(self, row: OutboxTx) -> Receipt | None:
        try:
            async with self._rpc_slots:
                r = await self.w3.eth.get_transaction_receipt(row.tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return None
        return Receipt(r) if r else None

    async def _wait_receipt(self, row: OutboxTx) -> Receipt:
        """Wait for ``row``'s receipt, rebroadcasting its bytes every 2 s while it is unmined.

        The receipt is asked for once the sender's mined nonce count has passed the row's nonce;
        that count is one request shared by every waiting send (see :meth:`_nonce_mined`).
        """
        deadline = time.monotonic() + self.timeout
        next_rebroadcast = time.monotonic() + 2.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise ChainError(
                    f"no receipt for {row.tx_hash} after {self.timeout:.0f}s (it stays queued)"
                )
            if await self._nonce_mined(row.nonce, min(next_rebroadcast, deadline) - now):
                r = await self._receipt(row)
                if r is None:
                    # Its nonce is used: mined a moment ago, or by another transaction (dead).
                    r = await self._mined_or_alive(row)
                if r is not None:
                    return r
                await asyncio.sleep(self.poll)
            elif time.monotonic() >= next_rebroadcast:
                next_rebroadcast = time.monotonic() + 2.0
                if not await self._broadcast(row):
                    r = await self._mined_or_alive(row)
                    if r is not None:
                        return r

    async def _nonce_mined(self, nonce: int, timeout: float) -> bool:
        """Whether a transaction of this sender with ``nonce`` is mined, waiting up to
        ``timeout`` seconds for it."""
        if self._mined_count > nonce:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((nonce, fut))
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch_nonces())
        try:
            await asyncio.wait_for(asyncio.shield(fut), max(timeout, 0.0))
            return True
        except TimeoutError:
            return False
        finally:
            if not fut.done():
                fut.cancel()  # the watcher forgets it

    async def _watch_nonces(self) -> None:
        """While sends wait: poll the sender's mined nonce count, wake those it has passed."""
        while True:
            self._waiters = [(n, f) for n, f in self._waiters if not f.done()]
            if not self._waiters:
                return
            try:
                count = int(await self.w3.eth.get_transaction_count(self.address, "latest"))
                self._mined_count = max(self._mined_count, count)
            except Exception as exc:  # waiters time out and rebroadcast; keep polling
                log.warning("nonce poll failed", error=type(exc).__name__)
            for n, f in self._waiters:
                if n < self._mined_count and not f.done():
                    f.set_result(None)
            await asyncio.sleep(self.poll)

    async def _mined_or_alive(self, row: OutboxTx) -> Receipt | None:
        """After the node answered "nonce too low" for ``row``: its receipt if it was mined, None
        while the node still holds it, :class:`_DeadTransaction` if another transaction took its
        nonce. The node may count a nonce as used a moment before the receipt is served, so
        both lookups are retried briefly before the transaction is declared dead."""
        for attempt in range(4):
            receipt = await self._receipt(row)
            if receipt is not None:
                return receipt
            try:
                await self.w3.eth.get_transaction(row.tx_hash)  # type: ignore[arg-type]
                return None  # known to the node: pending, its receipt will come
            except TransactionNotFound:
                pass
            await asyncio.sleep(0.05 * (attempt + 1))
        raise _DeadTransaction(row.tx_hash)

    async def _mark_mined(self, key: str, block: int) -> None:
        """Record ``key`` as mined; marks queued meanwhile are written in one transaction."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._marks.append((key, block, fut))
        async with self._mark_lock:
            if not fut.done():
                batch, self._marks = self._marks, []
                try:
                    await asyncio.to_thread(self._store_marks, [(k, b) for k, b, _ in batch])
                except BaseException as exc:
                    failure = exc if isinstance(exc, Exception) else StoreError("interrupted")
                    for *_, f in batch:
                        if not f.done():
                            f.set_exception(failure)
                    raise
                for *_, f in batch:
                    if not f.done():
                        f.set_result(None)
        await fut

    def _store_marks(self, marks: list[tuple[str, int]]) -> None:
        with self.store.session() as s:
            for key, block in marks:
                s.exec(
                    update(OutboxTx)  # type: ignore[call-overload]
                    .where(col(OutboxTx.key) == key)
                    .values(status="mined", block_number=block)
                )
            s.commit()

    async def _wait_confirmations(self, block: int) -> None:
        deadline = time.monotonic() + self.timeout * max(1, self.confirmations)
        while int(await self.w3.eth.block_number) < block + self.confirmations:
            if time.monotonic() > deadline:
                raise ChainError(f"block {block} did not reach {self.confirmations} confirmations")
            await asyncio.sleep(0.5)

    async def _explain_revert(
        self, row: OutboxTx, receipt: Receipt, contract: str
    ) -> ContractRevert:
        tx = await self.w3.eth.get_transaction(row.tx_hash)  # type: ignore[arg-type]
        call = {"from": tx["from"], "to": tx["to"], "data": tx["input"], "value": tx["value"]}
        try:
            await self.w3.eth.call(call, int(receipt["blockNumber"]) - 1)  # type: ignore[arg-type]
        except ContractLogicError as exc:
            return revert_from_exception(exc, contract=contract)
        return ContractRevert("Reverted", {"tx_hash": row.tx_hash}, contract=contract)
