"""One logical signer per key: in-order nonces, the signed bytes persisted before broadcast, and
an effect that counts only once it is final.

What :meth:`Signer.send` guarantees for one idempotency key, against the failures of a real
network (each one tested against anvil, see tests/test_signer*.py):

- **exactly once.** The signed raw transaction is in the outbox before it is broadcast. A
  retry, in this process or another, finds it and waits for it (rebroadcasting the same bytes)
  instead of signing anew. The key is signed again only when the chain proves that none of its
  variants can ever be mined (its nonce was taken by another transaction).
- **final, not just mined.** A receipt counts after ``confirmations`` blocks on top of it, and
  only if the block at its height still has the receipt's hash; a transaction that a reorg
  took out is rebroadcast from the same bytes and waited for again.
- **fees.** EIP-1559 fees from ``eth_feeHistory``, never above the per-chain maximum
  (:mod:`ledgerflow.chain.fees`): above it nothing is signed, the send waits and then fails
  with :class:`~ledgerflow.errors.FeeTooHigh`. A transaction pending longer than
  ``replace_after`` seconds, or priced out by the base fee, is replaced at the same nonce with
  both fees raised by at least 10 %; every variant is kept (``outbox_attempts``) and whichever
  is mined counts. They share a nonce, so at most one of them can ever be paid.
- **lost blocks.** :meth:`Signer.check_chain` (at start-up and every ``chain_check_seconds``)
  re-checks the rows at or above the chain's nonce: a ``mined`` row the chain no longer has is
  re-sent from the same bytes, or, when its owner closed the key (:meth:`Signer.close`, e.g. a
  workflow compensated that step), its nonce is filled with a zero-value transfer to itself so
  that later payments are not stuck behind the gap. Nonces with no row at all are filled the
  same way.
- **many processes.** On PostgreSQL every process signing for a key allocates nonces from one
  counter under a lock held across persisting and broadcasting
  (:class:`~ledgerflow.store.SenderLock`), so nonces are contiguous and reach the node in order.
  On SQLite there is one worker per store (the worker lease says so when a second one starts).

Concurrent sends are group-committed: gas is estimated concurrently (a revert surfaces before
anything is signed), then whoever holds the nonce lock takes every send queued so far, signs them
with consecutive nonces, persists all of them in one store transaction and only then broadcasts
them in nonce order (one JSON-RPC batch per 100). Marking final transactions is group-committed
the same way, and concurrent sends share their other requests too: outbox lookups are one store
query, gas estimates, receipt lookups and rebroadcasts go out as JSON-RPC batches (one by one to
a node that refuses batches), and waiting sends share one poll of the sender's mined nonce count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from eth_account import Account
from eth_typing import ChecksumAddress, HexStr
from eth_utils import to_checksum_address
from hexbytes import HexBytes
from sqlalchemy.exc import IntegrityError
from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError, TransactionNotFound
from web3.types import RPCEndpoint

from ledgerflow.chain.fees import FeeOracle, FeePolicy, Fees, gwei
from ledgerflow.chain.keys import LocalKey, SignedTx, TxSigner, decode_signed
from ledgerflow.chain.reverts import revert_from_exception
from ledgerflow.errors import (
    ChainError,
    ContractRevert,
    FeeTooHigh,
    LedgerflowError,
    RPCUnavailable,
    StoreError,
    TxVoided,
    bounded,
    infrastructure_error,
)
from ledgerflow.store import OutboxAttempt, OutboxTx, SenderLock, Store

__all__ = ["LostDecision", "LostTxPolicy", "Receipt", "Signer"]

log = structlog.get_logger(__name__)

_KNOWN = ("already known", "known transaction", "already imported", "already in pool")
_UNDERPRICED = (
    "less than block base fee",
    "fee cap less than",
    "max fee per gas less than",
    "transaction underpriced",
    "fee too low",
    "feecap too low",
)
#: Signed transactions per ``eth_sendRawTransaction`` batch (a node may cap a batch's size).
_BROADCAST_BATCH = 100
#: Gas of a plain transfer: what a no-op that fills a nonce costs.
_TRANSFER_GAS = 21_000

#: What to do with a transaction that the chain lost: send it again, or fill its nonce.
LostDecision = Literal["resend", "void"]
#: The owner's hook: given the lost row, decide (closed keys are always voided).
LostTxPolicy = Callable[[OutboxTx], Awaitable[LostDecision]]


class _DeadTransaction(Exception):
    """No variant of a signed transaction can be mined: another transaction took its nonce."""


class _Underpriced(Exception):
    """The node refused the bytes: their fee is below what the next block needs."""


@dataclass(eq=False)
class _Submission:
    """One send waiting for the nonce lock; resolved with (row, fresh) once broadcast."""

    key: str
    to: str
    data: str
    value: int
    gas: int
    future: asyncio.Future[tuple[OutboxTx, bool]] = field(repr=False)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as retrieved (its submitter may have gone away)."""
    if not fut.cancelled():
        fut.exception()


class _Coalesced:
    """Requests made while earlier ones are in flight go out together: each caller awaits its
    own answer, ``run`` gets every item queued since the last batch left (at most
    ``max_batch``), and at most ``parallel`` batches are in flight at once."""

    def __init__(
        self,
        run: Callable[[list[Any]], Awaitable[list[Any]]],
        *,
        max_batch: int = 100,
        parallel: int = 2,
    ) -> None:
        self._run = run
        self.max_batch = max_batch
        self.parallel = parallel
        self._queue: list[tuple[Any, asyncio.Future[Any]]] = []
        self._drainers: set[asyncio.Task[None]] = set()
        self._active = 0
        #: Batches sent and items answered (what a send costs in requests).
        self.batches = 0
        self.items = 0

    async def __call__(self, item: Any) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._queue.append((item, fut))
        if self._active < self.parallel:
            self._active += 1
            task = asyncio.create_task(self._drain())
            self._drainers.add(task)  # referenced until done
            task.add_done_callback(self._drainers.discard)
        return await fut

    async def _drain(self) -> None:
        try:
            await self._drain_queue()
        finally:
            # No await between the queue found empty and this: an item queued after it
            # starts a drainer of its own.
            self._active -= 1

    async def _drain_queue(self) -> None:
        while self._queue:
            batch = [(i, f) for i, f in self._queue[: self.max_batch] if not f.done()]
            del self._queue[: self.max_batch]
            if not batch:
                continue
            self.batches += 1
            self.items += len(batch)
            try:
                results = await self._run([i for i, _ in batch])
            except BaseException as exc:
                failure = exc if isinstance(exc, Exception) else ChainError("interrupted")
                for _, f in batch:
                    if not f.done():
                        f.set_exception(failure)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, f), result in zip(batch, results, strict=True):
                if not f.done():
                    f.set_result(result)


def _call_of(raw: str) -> tuple[str, str, int, int, Fees]:
    """(to, data, value, gas, fees) of a signed transaction."""
    fields, _ = decode_signed(raw)
    return (
        to_checksum_address(fields["to"]),
        HexBytes(fields["data"]).to_0x_hex(),
        int(fields["value"]),
        int(fields["gas"]),
        Fees(max_fee=int(fields["maxFeePerGas"]), tip=int(fields["maxPriorityFeePerGas"])),
    )


def _is_noop(raw: str, sender: str) -> bool:
    """Whether ``raw`` is a zero-value transfer to ``sender`` itself without data: what fills a
    nonce (a void or a gap), never a business transaction."""
    if len(raw) > 2 + 2 * 160:  # a no-op is about 110 bytes; anything longer carries data
        return False
    if sender[2:].lower() not in raw.lower():  # its recipient, us, is in its bytes
        return False
    try:
        from eth_account.typed_transactions import TypedTransaction

        fields = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
    except Exception:
        return False
    return (
        int(fields.get("value", 0)) == 0
        and not HexBytes(fields.get("data") or b"")
        and to_checksum_address(fields["to"]) == sender
    )


def _hb(value: Any) -> HexBytes | None:
    return None if value is None else HexBytes(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value, 16) if isinstance(value, str) else int(value)


def _addr(value: Any) -> str | None:
    return None if value is None else to_checksum_address(value)


def _format_receipt(r: dict[str, Any]) -> dict[str, Any]:
    """A JSON-RPC receipt in web3's format (HexBytes hashes, int quantities, checksummed
    addresses), for the fields nodes return."""
    out: dict[str, Any] = dict(r)
    for k in ("transactionHash", "blockHash", "logsBloom", "root"):
        if k in r:
            out[k] = _hb(r[k])
    for k in (
        "blockNumber",
        "gasUsed",
        "cumulativeGasUsed",
        "effectiveGasPrice",
        "status",
        "transactionIndex",
        "type",
        "blobGasUsed",
        "blobGasPrice",
    ):
        if k in r:
            out[k] = _int(r[k])
    for k in ("from", "to", "contractAddress"):
        if k in r:
            out[k] = _addr(r[k])
    out["logs"] = [
        {
            **log,
            "address": _addr(log.get("address")),
            "topics": [HexBytes(t) for t in log.get("topics", [])],
            "data": HexBytes(log.get("data") or "0x"),
            "blockHash": _hb(log.get("blockHash")),
            "transactionHash": _hb(log.get("transactionHash")),
            "blockNumber": _int(log.get("blockNumber")),
            "logIndex": _int(log.get("logIndex")),
            "transactionIndex": _int(log.get("transactionIndex")),
        }
        for log in r.get("logs", [])
    ]
    return out


def _mapped(exc: Exception) -> Exception:
    """``exc`` as a ledgerflow error when it comes from an infrastructure library (short, no
    secrets, nothing chained); other exceptions (and ledgerflow's own) unchanged."""
    mapped = infrastructure_error(exc)
    if mapped is None or mapped is exc:
        return exc
    return mapped


class Receipt(dict[str, Any]):
    """A mined transaction's receipt (web3's AttributeDict, as a plain dict)."""

    @property
    def tx_hash(self) -> str:
        return "0x" + bytes(self["transactionHash"]).hex()

    @property
    def block_number(self) -> int:
        return int(self["blockNumber"])

    @property
    def block_hash(self) -> str:
        return "0x" + bytes(self["blockHash"]).hex()

    @property
    def gas_used(self) -> int:
        return int(self["gasUsed"])

    @property
    def ok(self) -> bool:
        return int(self["status"]) == 1


class Signer:
    """Signs and sends transactions for one key with exactly-once semantics per idempotency key.

    Args:
        w3: the chain (a :class:`~ledgerflow.chain.rpc.FailoverProvider` in the worker).
        key: a 0x-hex private key, or a :class:`~ledgerflow.chain.keys.TxSigner` (e.g. a
            :class:`~ledgerflow.chain.keys.RemoteSigner`).
        store: the outbox.
        chain_id: the chain the transactions are for.
        confirmations: blocks on top of a receipt before it counts (0: at once).
        timeout: seconds one :meth:`send` waits for a final receipt before it fails (the row
            stays; a retry continues where it left off).
        fees: the fee policy (maximum, tips, bump); default: 200 gwei maximum.
        replace_after: seconds a transaction may stay pending before it is replaced.
        rebroadcast_every: seconds between rebroadcasts of a pending transaction.
        heartbeat: called while a send waits (the runtime passes Temporal's activity heartbeat).
        on_lost: decides what to do with a lost transaction whose key is not closed (default:
            send it again).
    """

    def __init__(
        self,
        w3: AsyncWeb3,
        key: str | TxSigner,
        store: Store,
        chain_id: int,
        *,
        confirmations: int = 0,
        timeout: float = 60.0,
        poll: float = 0.02,
        fees: FeePolicy | None = None,
        replace_after: float = 30.0,
        rebroadcast_every: float = 2.0,
        heartbeat: Callable[[], None] | None = None,
        on_lost: LostTxPolicy | None = None,
        lock_timeout: float = 30.0,
    ) -> None:
        self.w3 = w3
        self.account: TxSigner = LocalKey(key) if isinstance(key, str) else key
        self.address: ChecksumAddress = self.account.address
        self.store = store
        self.chain_id = chain_id
        self.confirmations = confirmations
        self.timeout = timeout
        self.poll = poll
        self.fees = FeeOracle(w3, fees or FeePolicy(max_fee=200 * 10**9), chain_id)
        self.replace_after = replace_after
        self.rebroadcast_every = rebroadcast_every
        self.heartbeat = heartbeat
        self.on_lost = on_lost
        self.lock_timeout = lock_timeout
        # Nonces through the database when several processes may sign for this key.
        self.shared = not store.is_sqlite
        self._lock = asyncio.Lock()
        self._nonce: int | None = None
        self._synced = False
        self._ready = False
        self._queue: list[_Submission] = []
        self._marks: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self._mark_lock = asyncio.Lock()
        # Concurrent sends share requests: outbox lookups go to the store in one query, gas
        # estimates and receipt lookups to the node in JSON-RPC batches (a burst of sends costs
        # a few HTTP requests, not three per send, and never hundreds of connections at once).
        self._batch_rpc = True
        self.rpc_requests = 0  # HTTP requests this signer made (a batch counts once)
        self._lookups = _Coalesced(self._lookup_many, max_batch=500, parallel=1)
        self._estimates = _Coalesced(
            lambda txs: self._rpc_many([("eth_estimateGas", [tx]) for tx in txs])
        )
        self._states = _Coalesced(self._states_many, max_batch=500, parallel=1)
        self._rebroadcasts = _Coalesced(self._rebroadcast_many)
        self._variant_lookups = _Coalesced(
            lambda rows: asyncio.to_thread(self.store.outbox_variants_many, rows),
            max_batch=500,
            parallel=1,
        )
        self._receipts = _Coalesced(
            lambda hashes: self._rpc_many([("eth_getTransactionReceipt", [h]) for h in hashes])
        )
        # Sends waiting for their nonce to be mined or for a block height, and the one task
        # polling the chain for them.
        self._mined_count = 0
        self._head = 0
        self._nonce_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._head_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._watcher: asyncio.Task[None] | None = None
        self._last_heal = 0.0
        self._check_lock = asyncio.Lock()
        # What happened, for operators and benchmarks.
        self.nonce_errors = 0
        self.replacements = 0
        self.reorgs = 0
        self.lost = 0
        self.voided = 0
        self.gaps_filled = 0

    def owns(self, private_key: str) -> bool:
        """Whether this signer signs for ``private_key`` (one signer per key per process)."""
        return Account.from_key(private_key).address == self.address

    def __repr__(self) -> str:  # never show the key
        return f"Signer(address={self.address}, chain_id={self.chain_id})"

    # ---- public API ---------------------------------------------------------------------------

    async def send(
        self, key: str, call: Any, *, value: int = 0, contract: str = "", gas: int | None = None
    ) -> Receipt:
        """Send ``call`` (a web3 contract function) once for ``key``; return its final receipt.

        A second call with the same key, from a retried activity or after a crash, does not sign a
        new transaction: it returns the first one's receipt, rebroadcasting its raw bytes if needed.

        Raises:
            ContractRevert: the call reverts (decoded custom error): at estimation (nothing was
                signed) or on chain (final).
            FeeTooHigh: the chain's fee stayed above the maximum for the whole timeout.
            TxVoided: the key was closed by its owner (nothing signed), or the chain lost its
                transaction and it was voided.
            ChainError: the node refused the transaction or it did not become final in time
                (a retry continues with the same bytes).
        """
        try:
            row = await self._lookups(key)
            if row is not None:
                return await self._until_final(row, contract, fresh=False)
            to, data = str(call.address), str(call._encode_transaction_data())  # encoded once
            return await self._send_new(key, to, data, value, gas, contract)
        except Exception as exc:
            mapped = _mapped(exc)
        raise mapped  # outside the handler: the library's exception is not chained

    async def send_tx(
        self,
        key: str,
        *,
        to: str,
        data: str = "0x",
        value: int = 0,
        gas: int | None = None,
        contract: str = "",
    ) -> Receipt:
        """:meth:`send` for a plain transaction (``to``, ``data``, ``value``)."""
        try:
            row = await self._lookups(key)
            if row is not None:
                return await self._until_final(row, contract, fresh=False)
            return await self._send_new(key, to, data, value, gas, contract)
        except Exception as exc:
            mapped = _mapped(exc)
        raise mapped

    async def close(self, key: str, reason: str = "") -> OutboxTx | None:
        """Close ``key``: its effect must not happen (any more). See
        :meth:`ledgerflow.store.Store.outbox_close`; returns the key's row if one was signed."""
        return await asyncio.to_thread(self.store.outbox_close, key, reason)

    async def pump(self) -> int:
        """Rebroadcast, in nonce order, every signed transaction not yet final.

        A crash between persisting and broadcasting would otherwise leave a nonce gap that jams
        every later transaction of this key.
        """
        rows = await asyncio.to_thread(self.store.outbox_unmined, self.chain_id, self.address)
        for row in rows:
            try:
                if not await self._broadcast(row) and await self._find_receipt(row) is None:
                    log.info("outbox tx is not pending any more", key=row.key, nonce=row.nonce)
            except _Underpriced:
                log.info("outbox tx is priced out; replaced when waited for", key=row.key)
            except ChainError as exc:
                log.warning("rebroadcast failed", key=row.key, nonce=row.nonce, error=str(exc))
        return len(rows)

    # ---- sending ------------------------------------------------------------------------------

    async def _send_new(
        self, key: str, to: str, data: str, value: int, gas: int | None, contract: str
    ) -> Receipt:
        if gas is None:
            gas = await self._estimate_data(to, data, value, contract)  # outside the lock
        await self._ready_once()
        await self._wait_for_fees()
        fut: asyncio.Future[tuple[OutboxTx, bool]] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._queue.append(_Submission(key, to, data, value, gas, fut))
        async with self._lock:
            if not fut.done():
                batch, self._queue = self._queue, []
                await self._send_batch(batch)
        row, fresh = await fut
        return await self._until_final(row, contract, fresh=fresh)

    async def _estimate_data(self, to: str, data: str, value: int, contract: str) -> int:
        """The gas limit: one plain ``eth_estimateGas`` plus a margin. A revert raises.

        Straight to the provider: web3's validation middleware would add an ``eth_chainId``
        request to every estimate, and the call data is encoded once for estimate and signing.
        """
        tx = {"from": self.address, "to": to, "data": data, "value": hex(value)}
        resp = await self._estimates(tx)
        error = resp.get("error")
        if error:
            err = error if isinstance(error, dict) else {"message": str(error)}
            message = str(err.get("message", ""))
            if err.get("data") is not None or "revert" in message.lower():
                exc = ContractLogicError(message, data=err.get("data"))
                raise revert_from_exception(exc, contract=contract) from None
            raise ChainError(bounded(f"gas estimation failed for {to}: {message}"))
        gas = int(str(resp["result"]), 16)
        return gas + gas // 5 + 10_000

    async def _wait_for_fees(self) -> None:
        """Return once the chain's fee is within the maximum; raise FeeTooHigh at the timeout."""
        deadline = time.monotonic() + self.timeout
        warned = False
        while True:
            quote = await self.fees.quote()
            too_high = self.fees.too_high_for(quote)
            if too_high is None:
                return
            if time.monotonic() >= deadline:
                raise too_high
            if not warned:
                log.warning(
                    "fee above maximum; waiting",
                    chain_id=self.chain_id,
                    base_fee=gwei(quote.base_fee),
                    maximum=gwei(self.fees.policy.max_fee),
                )
                warned = True
            self._beat()
            await asyncio.sleep(min(self.fees.cache_seconds, max(0.0, deadline - time.monotonic())))

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

    def _tx(
        self, nonce: int, to: str, data: str, value: int, gas: int, fees: Fees
    ) -> dict[str, Any]:
        return {
            "type": 2,
            "chainId": self.chain_id,
            "nonce": nonce,
            "to": to,
            "data": data,
            "value": value,
            "gas": gas,
            **fees.fields(),
        }

    async def _sign_all(self, txs: list[dict[str, Any]]) -> list[SignedTx | BaseException]:
        if not self.account.remote:
            out: list[SignedTx | BaseException] = []
            for tx in txs:
                try:
                    out.append(self.account.sign_now(tx))
                except Exception as exc:
                    out.append(exc)
            return out
        return list(
            await asyncio.gather(*(self.account.sign(tx) for tx in txs), return_exceptions=True)
        )

    async def _acquire(self) -> SenderLock:
        lock = SenderLock(self.store, self.chain_id, self.address, timeout=self.lock_timeout)
        if self.shared:
            await asyncio.to_thread(lock.acquire)
        return lock

    async def _release(self, lock: SenderLock) -> None:
        if lock.conn is not None:
            await asyncio.to_thread(lock.release)

    async def _sign_persist_broadcast(self, batch: list[_Submission]) -> None:
        fees = await self.fees.fees()
        lock = await self._acquire()
        try:
            with lock.session() as session:
                await self._persist_batch(lock, session, batch, fees)
        finally:
            await self._release(lock)

    async def _persist_batch(
        self, lock: SenderLock, session: Any, batch: list[_Submission], fees: Fees
    ) -> None:
        """Sign, persist and broadcast ``batch`` (under the sender lock)."""
        while batch:
            nonce = await self._next_nonce(session)
            txs = [
                self._tx(nonce + i, s.to, s.data, s.value, s.gas, fees) for i, s in enumerate(batch)
            ]
            signed: list[tuple[_Submission, OutboxTx]] = []
            results = await self._sign_all(txs)
            for sub, tx, result in zip(batch, txs, results, strict=True):
                if isinstance(result, BaseException):
                    sub.future.set_exception(result)
                    continue
                row = OutboxTx(
                    key=sub.key,
                    chain_id=self.chain_id,
                    sender=self.address,
                    nonce=tx["nonce"],
                    raw=result.raw,
                    tx_hash=result.tx_hash,
                )
                signed.append((sub, row))
            if len(signed) != len(batch):
                # A signing failure leaves a hole in the numbering: sign the others again.
                batch = [s for s, _ in signed]
                continue
            if not signed:
                return
            try:
                closed = await asyncio.to_thread(
                    self.store.outbox_persist,
                    session,
                    [row for _, row in signed],
                    chain_id=self.chain_id,
                    sender=self.address,
                    next_nonce=nonce + len(signed),
                )
            except IntegrityError:
                # A key sent already (another process), or a nonce taken: one by one.
                self._synced = False
                for sub, _ in signed:
                    await self._persist_one(session, sub, fees)
                return
            if closed:
                for sub, _ in signed:
                    if sub.key in closed:
                        sub.future.set_exception(
                            TxVoided(f"{sub.key} is closed by its owner; nothing was signed")
                        )
                batch = [s for s, _ in signed if s.key not in closed]
                continue
            # Persisted: these nonces are taken whatever happens to the broadcasts.
            self._nonce = nonce + len(signed)
            await self._broadcast_batch(signed)
            return

    async def _broadcast_batch(self, signed: list[tuple[_Submission, OutboxTx]]) -> None:
        """Broadcast persisted rows in nonce order: one JSON-RPC batch per 100 rows (its
        requests in nonce order; a node answers a batch's calls in order), the batches one
        after the other."""
        for start in range(0, len(signed), _BROADCAST_BATCH):
            part = signed[start : start + _BROADCAST_BATCH]
            try:
                answers = await self._send_raw([row for _, row in part])
            except ChainError as exc:  # the node is unreachable: the rows stay for a retry
                for sub, _ in part:
                    if not sub.future.done():
                        sub.future.set_exception(exc)
                continue
            self._settle_broadcasts(part, answers)

    def _settle_broadcasts(
        self, signed: list[tuple[_Submission, OutboxTx]], answers: list[Any]
    ) -> None:
        for (sub, row), resp in zip(signed, answers, strict=True):
            try:
                ok = self._accepted(row, resp)
            except _Underpriced:
                ok = True  # persisted; the wait replaces it with higher fees
            except ChainError as exc:
                # Stays in the outbox: a retry of this key rebroadcasts the same bytes.
                sub.future.set_exception(exc)
                continue
            if ok:
                log.info("tx sent", key=row.key, tx_hash=row.tx_hash, nonce=row.nonce)
                sub.future.set_result((row, True))
            else:
                # The node says this nonce is used: our counter drifted (another sender with this
                # key). The wait finds the row dead and signs it anew with a fresh nonce.
                self.nonce_errors += 1
                self._synced = False
                sub.future.set_result((row, False))

    async def _persist_one(self, session: Any, sub: _Submission, fees: Fees) -> None:
        """After a conflict: the key's row if someone else stored it, else sign it alone."""
        try:
            row = await asyncio.to_thread(self.store.outbox_get, sub.key)
            if row is not None:
                sub.future.set_result((row, False))
                return
            for _ in range(3):
                nonce = await self._next_nonce(session, resync=True)
                signed = await self.account.sign(
                    self._tx(nonce, sub.to, sub.data, sub.value, sub.gas, fees)
                )
                row = OutboxTx(
                    key=sub.key,
                    chain_id=self.chain_id,
                    sender=self.address,
                    nonce=nonce,
                    raw=signed.raw,
                    tx_hash=signed.tx_hash,
                )
                try:
                    closed = await asyncio.to_thread(
                        self.store.outbox_persist,
                        session,
                        [row],
                        chain_id=self.chain_id,
                        sender=self.address,
                        next_nonce=nonce + 1,
                    )
                except IntegrityError:
                    self.nonce_errors += 1
                    existing = await asyncio.to_thread(self.store.outbox_get, sub.key)
                    if existing is not None:
                        sub.future.set_result((existing, False))
                        return
                    continue
                if closed:
                    raise TxVoided(f"{sub.key} is closed by its owner; nothing was signed")
                self._nonce = nonce + 1
                await self._broadcast_batch([(sub, row)])
                return
            raise ChainError(f"could not find a free nonce for {self.address} after 3 tries")
        except Exception as exc:
            if not sub.future.done():
                sub.future.set_exception(exc)

    async def _next_nonce(self, session: Any, *, resync: bool = False) -> int:
        """The next nonce to sign with (under the sender lock).

        Single process (SQLite): a counter in memory. Shared (PostgreSQL): the counter row that
        every process signing for this key advances in the transaction that stores its batch.
        At first use and after a nonce error the counter is reconciled with the chain: raised
        to the chain's pending nonce when the chain is ahead (someone else used the key), never
        lowered (nonces the chain lost are re-sent or filled, see :meth:`check_chain`).
        """
        if not resync and self._synced:
            if not self.shared and self._nonce is not None:
                return self._nonce
            if self.shared:
                stored = await asyncio.to_thread(
                    self.store.next_nonce, session, self.chain_id, self.address
                )
                if stored is not None:
                    return stored
        stored = await asyncio.to_thread(
            self.store.next_nonce, session, self.chain_id, self.address
        )
        pending = int(await self.w3.eth.get_transaction_count(self.address, "pending"))
        highest = await asyncio.to_thread(self.store.outbox_max_nonce, self.chain_id, self.address)
        nonce = max(pending, -1 if highest is None else highest + 1, stored or 0)
        if nonce != stored:
            await asyncio.to_thread(
                self.store.set_next_nonce, session, self.chain_id, self.address, nonce
            )
        self._nonce, self._synced = nonce, True
        return nonce

    async def _ready_once(self) -> None:
        """At first use: rebroadcast what a crash left unsent and check for lost blocks."""
        if self._ready:
            return
        async with self._lock:
            if self._ready:
                return
            await self.pump()
            self._ready = True
        try:
            await self.check_chain()
        except LedgerflowError as exc:
            log.warning("chain check failed", error=str(exc))

    # ---- waiting until final ------------------------------------------------------------------

    def _beat(self) -> None:
        if self.heartbeat is not None:
            try:
                self.heartbeat()
            except Exception:  # a heartbeat must never break a send
                log.debug("heartbeat failed", exc_info=True)

    async def _until_final(self, row: OutboxTx, contract: str, *, fresh: bool) -> Receipt:
        """Wait until one of ``row``'s variants is final; return its receipt.

        While it is not mined: rebroadcast the current bytes every ``rebroadcast_every``
        seconds, rebroadcast the key's earlier nonces that are not mined either (a gap left by
        another process), and replace it with higher fees once it has waited ``replace_after``
        seconds or the node says its fee is too low.
        """
        if row.status == "voided":
            raise TxVoided(f"the transaction of {row.key} was voided after the chain lost it")
        start = time.monotonic()
        deadline = start + self.timeout
        if not fresh:
            # A retry, or a key sent before: usually mined already.
            found = await self._find_receipt(row)
            if found is not None and await self._is_final(found[0], deadline):
                return await self._settle(row, found[1], found[0], contract)
        next_nudge = start + (self.rebroadcast_every if fresh else 0.0)
        variant_since = start
        blocked: FeeTooHigh | None = None
        voiding = False
        while True:
            self._beat()
            now = time.monotonic()
            if now >= deadline:
                if blocked is not None:
                    raise blocked
                raise ChainError(
                    f"no final receipt for {row.tx_hash} (nonce {row.nonce}) after "
                    f"{self.timeout:.0f}s; it stays in the outbox and a retry continues"
                )
            if await self._nonce_mined(row.nonce, min(next_nudge, deadline) - now):
                found = await self._find_receipt(row)
                if found is None:
                    try:
                        found = await self._mined_or_alive(row)
                    except _DeadTransaction:
                        row = await self._resign(row)
                        next_nudge = time.monotonic() + self.rebroadcast_every
                        variant_since = time.monotonic()
                        continue
                if found is None:
                    await asyncio.sleep(self.poll)
                    continue
                receipt, variant = found
                if await self._is_final(receipt, deadline):
                    return await self._settle(row, variant, receipt, contract)
                self.reorgs += 1
                self._mined_count = 0  # from before the reorg: ask again
                log.warning(
                    "receipt reorged out; waiting for the transaction again",
                    key=row.key,
                    tx_hash=receipt.tx_hash,
                    block=receipt.block_number,
                )
                next_nudge = time.monotonic()
                continue
            if time.monotonic() < next_nudge:
                continue
            next_nudge = time.monotonic() + self.rebroadcast_every
            # The row and whether its key is closed, and the rebroadcast: shared with every
            # other send waiting meanwhile (one store query, one JSON-RPC batch).
            stored, closed = await self._states(row.key)
            row = stored if stored is not None else row
            if row.status in ("mined", "reverted", "voided"):
                continue  # another process settled it: the next round finds its receipt
            if not voiding and closed:
                # Its owner closed the key while it is pending: outbid it with a no-op, so that
                # whichever is mined says whether the effect happened.
                voiding = True
                await self._void(row)
                continue
            underpriced = False
            try:
                self._accepted(row, await self._rebroadcasts(row))
            except _Underpriced:
                underpriced = True
            except ChainError as exc:
                log.warning("rebroadcast failed", key=row.key, error=str(exc))
            await self._heal_gaps(row.nonce)
            if voiding:
                continue  # the no-op is the variant now; it is not replaced by the call again
            if underpriced or time.monotonic() - variant_since >= self.replace_after:
                replaced, blocked = await self._replace(row, underpriced=underpriced)
                if replaced is not None:
                    row, variant_since = replaced, time.monotonic()

    async def _is_final(self, receipt: Receipt, deadline: float) -> bool:
        """Whether ``receipt`` has ``confirmations`` blocks on top and is still canonical."""
        if self.confirmations == 0:
            return True
        target = receipt.block_number + self.confirmations
        while not await self._head_reached(target, min(2.0, deadline - time.monotonic())):
            self._beat()
            if time.monotonic() >= deadline:
                raise ChainError(
                    f"{receipt.tx_hash} did not reach {self.confirmations} confirmations in time"
                )
        block = await self.w3.eth.get_block(receipt.block_number)
        if "0x" + bytes(block["hash"]).hex() != receipt.block_hash:
            return False
        again = await self._receipt(receipt.tx_hash)
        return again is not None and again.block_hash == receipt.block_hash

    async def _receipt(self, tx_hash: str) -> Receipt | None:
        """The receipt of ``tx_hash`` (None while it has none), as web3 would format it.

        Straight to the provider: web3's request and result formatters cost more CPU than
        the rest of a send, and a burst of sends asks for hundreds of receipts.
        """
        resp: Any = await self._receipts(tx_hash)
        if resp.get("error"):
            err = resp["error"]
            message = err.get("message", "") if isinstance(err, dict) else str(err)
            raise ChainError(bounded(f"eth_getTransactionReceipt failed: {message}"))
        result = resp.get("result")
        return Receipt(_format_receipt(result)) if isinstance(result, dict) else None

    async def _variants(self, row: OutboxTx) -> list[OutboxAttempt]:
        """Every signed variant of ``row`` (one store query shared with concurrent callers)."""
        variants: list[OutboxAttempt] = await self._variant_lookups(row)
        return variants

    async def _find_receipt(self, row: OutboxTx) -> tuple[Receipt, OutboxAttempt] | None:
        """The receipt of whichever variant of ``row`` is mined (the current one is asked first,
        which is the only one unless the row was replaced)."""
        r = await self._receipt(row.tx_hash)
        if r is not None:
            kind = "void" if _is_noop(row.raw, self.address) else "current"
            return r, OutboxAttempt(
                outbox_id=row.id or 0, tx_hash=row.tx_hash, raw=row.raw, kind=kind
            )
        for variant in (await self._variants(row))[1:]:
            r = await self._receipt(variant.tx_hash)
            if r is not None:
                return r, variant
        return None

    async def _mined_or_alive(self, row: OutboxTx) -> tuple[Receipt, OutboxAttempt] | None:
        """After the chain counted ``row``'s nonce as used: a variant's receipt if one was mined,
        None while the node still holds one or the nonce is not used after all (the count was
        from before a reorg), :class:`_DeadTransaction` if another transaction took the nonce.

        "Dead" is decided only from a fresh nonce count, and the node may count a nonce as used
        a moment before the receipt is served, so the lookups are retried briefly first.
        """
        for attempt in range(4):
            found = await self._find_receipt(row)
            if found is not None:
                return found
            count = int(await self.w3.eth.get_transaction_count(self.address, "latest"))
            self._mined_count = count
            if count <= row.nonce:
                return None  # not used: a reorg or lost blocks took it back; it is rebroadcast
            for variant in await self._variants(row):
                try:
                    await self.w3.eth.get_transaction(HexStr(variant.tx_hash))  # type: ignore[arg-type]
                    return None  # known to the node: pending, its receipt will come
                except TransactionNotFound:
                    pass
            await asyncio.sleep(0.05 * (attempt + 1))
        raise _DeadTransaction(row.tx_hash)

    async def _resign(self, row: OutboxTx) -> OutboxTx:
        """Sign ``row``'s call again with a fresh nonce: none of its variants can be mined."""
        self.nonce_errors += 1
        if await asyncio.to_thread(self.store.outbox_is_closed, row.key):
            raise TxVoided(f"{row.key} is closed by its owner and its transaction is dead")
        to, data, value, gas, _old = _call_of(row.raw)
        fees = await self.fees.fees()
        async with self._lock:
            lock = await self._acquire()
            try:
                with lock.session() as session:
                    nonce = await self._next_nonce(session, resync=True)
                    signed = await self.account.sign(self._tx(nonce, to, data, value, gas, fees))
                    await asyncio.to_thread(
                        self.store.set_next_nonce, session, self.chain_id, self.address, nonce + 1
                    )
                self._nonce = nonce + 1
                row = await asyncio.to_thread(
                    self.store.outbox_replace, row.key, nonce, signed.raw, signed.tx_hash
                )
                log.warning(
                    "tx re-signed: its nonce was taken",
                    key=row.key,
                    nonce=nonce,
                    tx_hash=row.tx_hash,
                )
                try:
                    await self._broadcast(row)
                except (_Underpriced, ChainError) as exc:
                    log.warning("rebroadcast failed", key=row.key, error=str(exc))
            finally:
                await self._release(lock)
        return row

    async def _replace(
        self, row: OutboxTx, *, underpriced: bool
    ) -> tuple[OutboxTx | None, FeeTooHigh | None]:
        """Replace ``row``'s pending variant at the same nonce with higher fees.

        Returns (the updated row or None when not replaced, the FeeTooHigh to raise at the
        deadline when the maximum leaves no room and the node refuses the current fee)."""
        to, data, value, gas, old = _call_of(row.raw)
        quote = await self.fees.quote(fresh=True)
        new = self.fees.replacement(old, quote)
        if new is None:
            blocked = self.fees.too_high_for(quote) if underpriced else None
            if blocked is None and underpriced:
                blocked = FeeTooHigh(
                    f"{row.tx_hash} pays at most {gwei(old.max_fee)} per gas, the node wants "
                    f"more, and the maximum of {gwei(self.fees.policy.max_fee)} leaves no room "
                    "for the 10 % a replacement needs",
                    needed=quote.base_fee,
                    maximum=self.fees.policy.max_fee,
                    chain_id=self.chain_id,
                )
            log.warning(
                "cannot replace: fee maximum reached",
                key=row.key,
                fees=str(old),
                maximum=gwei(self.fees.policy.max_fee),
            )
            return None, blocked
        signed = await self.account.sign(self._tx(row.nonce, to, data, value, gas, new))
        updated = await asyncio.to_thread(
            self.store.outbox_add_variant, row.key, signed.raw, signed.tx_hash, "replacement"
        )
        self.replacements += 1
        log.warning(
            "tx replaced with higher fees",
            key=row.key,
            nonce=row.nonce,
            old_tx_hash=row.tx_hash,
            tx_hash=signed.tx_hash,
            fees=str(new),
            reason="underpriced" if underpriced else "pending too long",
        )
        try:
            await self._broadcast(updated)
        except (_Underpriced, ChainError) as exc:
            log.warning("replacement broadcast failed", key=row.key, error=str(exc))
        return updated, None

    async def _settle(
        self, row: OutboxTx, variant: OutboxAttempt, receipt: Receipt, contract: str
    ) -> Receipt:
        """Record the final state and return the receipt (or raise for a revert or a void)."""
        status = "mined" if receipt.ok else "reverted"
        if variant.kind == "void":
            status = "voided"
        changed = variant.tx_hash != row.tx_hash
        already = row.status == status and row.block_hash == receipt.block_hash and not changed
        if not already:
            await self._mark(
                (
                    row.key,
                    status,
                    receipt.block_number,
                    receipt.block_hash,
                    variant.tx_hash if changed else None,
                    variant.raw if changed else None,
                )
            )
        if status == "voided":
            raise TxVoided(f"the transaction of {row.key} was voided after the chain lost it")
        if status == "reverted":
            raise await self._explain_revert(variant.tx_hash, receipt, contract)
        return receipt

    async def _mark(self, mark: tuple[Any, ...]) -> None:
        """Record a final row; marks queued meanwhile are written in one transaction."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._marks.append((mark, fut))
        async with self._mark_lock:
            if not fut.done():
                batch, self._marks = self._marks, []
                try:
                    await asyncio.to_thread(self.store.outbox_marks, [m for m, _ in batch])
                except BaseException as exc:
                    failure = exc if isinstance(exc, Exception) else StoreError("interrupted")
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(failure)
                    raise
                for _, f in batch:
                    if not f.done():
                        f.set_result(None)
        await fut

    # ---- the shared chain watcher -------------------------------------------------------------

    def _ensure_watcher(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch())

    async def _wait_on(
        self, waiters: list[tuple[int, asyncio.Future[None]]], target: int, timeout: float
    ) -> bool:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append((target, fut))
        self._ensure_watcher()
        try:
            await asyncio.wait_for(asyncio.shield(fut), max(timeout, 0.0))
            return True
        except TimeoutError:
            return False
        finally:
            if not fut.done():
                fut.cancel()  # the watcher forgets it

    async def _nonce_mined(self, nonce: int, timeout: float) -> bool:
        """Whether a transaction of this sender with ``nonce`` is mined, waiting up to
        ``timeout`` seconds for it. (The count can go down: a reorg, lost blocks.)"""
        if self._mined_count > nonce and self._watcher is not None and not self._watcher.done():
            return True
        return await self._wait_on(self._nonce_waiters, nonce + 1, timeout)

    async def _head_reached(self, height: int, timeout: float) -> bool:
        if self._head >= height and self._watcher is not None and not self._watcher.done():
            return True
        return await self._wait_on(self._head_waiters, height, timeout)

    async def _watch(self) -> None:
        """While sends wait: poll the sender's mined nonce count (and the head, when someone
        waits for confirmations), wake those whose target is reached."""
        while True:
            self._nonce_waiters = [(n, f) for n, f in self._nonce_waiters if not f.done()]
            self._head_waiters = [(n, f) for n, f in self._head_waiters if not f.done()]
            if not self._nonce_waiters and not self._head_waiters:
                return
            try:
                if self._nonce_waiters:
                    self._mined_count = await self._mined_nonce_count()
                if self._head_waiters:
                    self._head = int(await self.w3.eth.block_number)
            except Exception as exc:  # waiters time out and rebroadcast; keep polling
                log.warning("chain poll failed", error=bounded(str(exc), 200))
            for waiters, reached in (
                (self._nonce_waiters, self._mined_count),
                (self._head_waiters, self._head),
            ):
                for n, f in waiters:
                    if reached >= n and not f.done():
                        f.set_result(None)
            await asyncio.sleep(self.poll if self._nonce_waiters else max(self.poll, 0.1))

    # ---- broadcasting -------------------------------------------------------------------------

    async def _mined_nonce_count(self) -> int:
        """The sender's transaction count at the latest block (one plain request)."""
        resp = (await self._rpc_many([("eth_getTransactionCount", [self.address, "latest"])]))[0]
        result = resp.get("result")
        if not isinstance(result, str):
            err = resp.get("error")
            message = err.get("message", "") if isinstance(err, dict) else str(err)
            raise ChainError(bounded(f"eth_getTransactionCount failed: {message}"))
        return int(result, 16)

    async def _states_many(self, keys: list[str]) -> list[tuple[OutboxTx | None, bool]]:
        rows, closed = await asyncio.to_thread(self.store.outbox_states, keys)
        return [(rows.get(k), k in closed) for k in keys]

    async def _rebroadcast_many(self, rows: list[OutboxTx]) -> list[Any]:
        """Rebroadcasts of waiting sends, in one batch in nonce order."""
        order = sorted(range(len(rows)), key=lambda i: rows[i].nonce)
        answers = await self._send_raw([rows[i] for i in order])
        out: list[Any] = [None] * len(rows)
        for i, answer in zip(order, answers, strict=True):
            out[i] = answer
        return out

    async def _lookup_many(self, keys: list[str]) -> list[OutboxTx | None]:
        rows = await asyncio.to_thread(self.store.outbox_get_many, keys)
        return [rows.get(k) for k in keys]

    async def _rpc_many(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """The answers to ``calls``, in order: one JSON-RPC batch when there are several (the
        node answers them in one HTTP round trip), one by one if the node refuses batches.

        Straight to the provider: web3's request and result formatters cost more CPU than the
        rest of a send, and its validation middleware adds an ``eth_chainId`` to estimates.
        """
        provider: Any = self.w3.provider
        if len(calls) > 1 and self._batch_rpc:
            self.rpc_requests += 1
            try:
                answer = await provider.make_batch_request([(RPCEndpoint(m), p) for m, p in calls])
            except RPCUnavailable:
                # A gateway may refuse batches at the HTTP level (429, 5xx). If the first call
                # alone is answered, it was the batch; if not, the node is down and that error
                # is raised. Every call batched here is safe to repeat (reads, and signed bytes
                # that a node answers "already known" to).
                self.rpc_requests += 1
                first = await provider.make_request(RPCEndpoint(calls[0][0]), calls[0][1])
                self._batch_rpc = False
                log.info("the node does not answer JSON-RPC batches; sending requests one by one")
                return [first, *await self._rpc_many(calls[1:])]
            if (
                isinstance(answer, list)
                and len(answer) == len(calls)
                and all(isinstance(a, dict) for a in answer)
            ):
                return answer
            # One error object for the whole batch, or a partial answer: no batches here.
            self._batch_rpc = False
            log.info("the node does not answer JSON-RPC batches; sending requests one by one")
        out: list[Any] = []
        for method, params in calls:
            self.rpc_requests += 1
            out.append(await provider.make_request(RPCEndpoint(method), params))
        return out

    async def _broadcast(self, row: OutboxTx) -> bool:
        """Send the row's current raw bytes; False when the node says the nonce is already used.

        Raises:
            _Underpriced: the node wants a higher fee for this nonce.
            ChainError: the node refused the transaction for another reason.
        """
        return self._accepted(row, (await self._send_raw([row]))[0])

    async def _send_raw(self, rows: list[OutboxTx]) -> list[Any]:
        """The node's answers to ``eth_sendRawTransaction`` of each row's current bytes, sent in
        this order in one JSON-RPC batch (the one place where signed bytes leave)."""
        return await self._rpc_many([("eth_sendRawTransaction", [row.raw]) for row in rows])

    def _accepted(self, row: OutboxTx, resp: Any) -> bool:
        """What the node's answer to ``eth_sendRawTransaction`` of ``row`` says (see
        :meth:`_broadcast`)."""
        error = resp.get("error")
        if error:
            message = str(error.get("message", "")) if isinstance(error, dict) else str(error)
            lower = message.lower()
            if any(s in lower for s in _KNOWN) or "replacement transaction underpriced" in lower:
                return True  # the node has it (or a variant): the receipt lookup settles it
            if "nonce too low" in lower:
                return False
            if any(s in lower for s in _UNDERPRICED):
                raise _Underpriced(message)
            if "nonce too high" in lower:
                self.nonce_errors += 1
            raise ChainError(bounded(f"node refused transaction {row.tx_hash}: {message}"))
        return True

    async def _heal_gaps(self, below: int) -> None:
        """Rebroadcast this key's unmined transactions under nonce ``below``, in order: a gap
        (another process died between persisting and broadcasting) would keep ours queued."""
        now = time.monotonic()
        if now - self._last_heal < self.rebroadcast_every:
            return
        self._last_heal = now
        count = int(await self.w3.eth.get_transaction_count(self.address, "latest"))
        if count >= below:
            return
        rows = await asyncio.to_thread(
            self.store.outbox_from_nonce, self.chain_id, self.address, count, below=below
        )
        if any(r.status != "signed" for r in rows) or len(rows) < below - count:
            # A final row above the chain's nonce, or a nonce without a row: lost blocks.
            await self.check_chain()
            return
        for r in rows:
            try:
                await self._broadcast(r)
            except (_Underpriced, ChainError) as exc:
                log.info("gap rebroadcast failed", key=r.key, nonce=r.nonce, error=str(exc))

    # ---- lost blocks, gaps and orphans --------------------------------------------------------

    async def watch_chain(self, stop: asyncio.Event, every: float) -> None:
        """Run :meth:`check_chain` every ``every`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.check_chain()
            except Exception as exc:  # keep watching: the next round retries
                log.warning(
                    "chain check failed", address=self.address, error=bounded(str(exc), 200)
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    async def check_chain(self) -> dict[str, int]:
        """Compare the outbox with the chain and repair what the chain lost.

        - rows at or above the chain's nonce that the outbox holds as final were lost (the
          chain lost blocks: a node restored from an older state, a deep reorg): they become
          pending again; closed keys (and those ``on_lost`` says so for) are voided, the others
          re-sent from the same bytes;
        - every pending row at or above the chain's nonce is rebroadcast in nonce order, and a
          nonce with no row at all (a store restored from an older backup) is filled with a
          zero-value transfer to self, so that later transactions are not stuck behind it;
        - pending rows below the chain's nonce whose send is not waiting (a worker died) are
          settled from their receipts once final.

        Returns counts of what it did.
        """
        async with self._check_lock:
            return await self._check_chain()

    async def _check_chain(self) -> dict[str, int]:
        done = {"lost": 0, "resent": 0, "voided": 0, "gaps": 0, "settled": 0}
        count = int(await self.w3.eth.get_transaction_count(self.address, "latest"))
        above = await asyncio.to_thread(
            self.store.outbox_from_nonce, self.chain_id, self.address, count
        )
        to_void: set[str] = set()
        for row in above:
            closed = await asyncio.to_thread(self.store.outbox_is_closed, row.key)
            if row.status in ("mined", "reverted", "voided"):
                if await self._find_receipt(row) is not None:
                    continue  # the count lags behind the receipts (a node catching up)
                done["lost"] += 1
                self.lost += 1
                decision: LostDecision = "void" if closed or row.status == "voided" else "resend"
                if decision == "resend" and self.on_lost is not None:
                    decision = await self.on_lost(row)
                log.warning(
                    "the chain lost a final transaction",
                    key=row.key,
                    nonce=row.nonce,
                    tx_hash=row.tx_hash,
                    status=row.status,
                    decision=decision,
                )
                await asyncio.to_thread(self.store.outbox_reopen, row.key)
                row.status = "signed"
                if decision == "void":
                    to_void.add(row.key)
            elif closed:
                to_void.add(row.key)
        if above or count < (self._nonce or 0):
            await self._repair(count, above, to_void, done)
        done["settled"] = await self._settle_orphans(count)
        if any(done.values()):
            log.info("chain checked", address=self.address, nonce=count, **done)
        return done

    async def _repair(
        self, count: int, rows: list[OutboxTx], to_void: set[str], done: dict[str, int]
    ) -> None:
        """Under the sender lock: re-send or void ``rows`` (nonce order) and fill nonces that
        have no row, from ``count`` up to the next nonce."""
        async with self._lock:
            lock = await self._acquire()
            try:
                with lock.session() as session:
                    next_nonce = await self._next_nonce(session, resync=True)
                    by_nonce = {r.nonce: r for r in rows}
                    for nonce in range(count, next_nonce):
                        row = by_nonce.get(nonce)
                        if row is None:
                            await self._fill_gap(session, nonce)
                            done["gaps"] += 1
                        elif row.key in to_void:
                            await self._void(row)
                            done["voided"] += 1
                        elif row.status == "signed":
                            try:
                                if await self._broadcast(row):
                                    done["resent"] += 1
                            except _Underpriced:
                                await self._replace(row, underpriced=True)
                                done["resent"] += 1
                            except ChainError as exc:
                                log.warning("rebroadcast failed", key=row.key, error=str(exc))
            finally:
                await self._release(lock)

    async def _noop_fees(self, row: OutboxTx | None) -> Fees:
        """Fees for a no-op at a nonce: current ones, and above every variant already signed
        there (a copy of one may still sit in some node's pool)."""
        fees = await self.fees.fees()
        if row is None:
            return fees
        for variant in await self._variants(row):
            old = _call_of(variant.raw)[4]
            bumped = self.fees.replacement(old, await self.fees.quote())
            if bumped is None:
                raise FeeTooHigh(
                    f"cannot void {row.key}: outbidding its signed fees ({old}) would exceed the "
                    f"maximum of {gwei(self.fees.policy.max_fee)}",
                    needed=old.max_fee,
                    maximum=self.fees.policy.max_fee,
                    chain_id=self.chain_id,
                )
            fees = Fees(max(fees.max_fee, bumped.max_fee), max(fees.tip, bumped.tip))
        return fees

    async def _void(self, row: OutboxTx) -> None:
        """Fill ``row``'s nonce with a zero-value transfer to self (its effect never happens)."""
        variants = await self._variants(row)
        if any(v.kind == "void" for v in variants):
            current = row
        else:
            fees = await self._noop_fees(row)
            signed = await self.account.sign(
                self._tx(row.nonce, self.address, "0x", 0, _TRANSFER_GAS, fees)
            )
            current = await asyncio.to_thread(
                self.store.outbox_add_variant, row.key, signed.raw, signed.tx_hash, "void"
            )
            self.voided += 1
            log.warning(
                "lost tx voided: its nonce is filled with a no-op",
                key=row.key,
                nonce=row.nonce,
                tx_hash=signed.tx_hash,
            )
        try:
            await self._broadcast(current)
        except (_Underpriced, ChainError) as exc:
            log.warning("void broadcast failed", key=row.key, error=str(exc))

    async def _fill_gap(self, session: Any, nonce: int) -> None:
        """A nonce below the next one with no row (lost with a store backup): fill it."""
        fees = await self.fees.fees()
        signed = await self.account.sign(
            self._tx(nonce, self.address, "0x", 0, _TRANSFER_GAS, fees)
        )
        row = OutboxTx(
            key=f"nonce-gap:{self.chain_id}:{self.address}:{nonce}",
            chain_id=self.chain_id,
            sender=self.address,
            nonce=nonce,
            raw=signed.raw,
            tx_hash=signed.tx_hash,
        )
        try:
            await asyncio.to_thread(
                self.store.outbox_persist,
                session,
                [row],
                chain_id=self.chain_id,
                sender=self.address,
                next_nonce=max(nonce + 1, self._nonce or 0),
            )
        except IntegrityError:
            return  # another process filled it
        self.gaps_filled += 1
        log.warning("nonce gap filled with a no-op", nonce=nonce, tx_hash=row.tx_hash)
        try:
            await self._broadcast(row)
        except (_Underpriced, ChainError) as exc:
            log.warning("gap filler broadcast failed", nonce=nonce, error=str(exc))

    async def _settle_orphans(self, count: int) -> int:
        """Settle pending rows below the chain's nonce whose send nobody waits for."""
        rows = await asyncio.to_thread(self.store.outbox_unmined, self.chain_id, self.address)
        settled = 0
        head: int | None = None
        for row in rows:
            if row.nonce >= count:
                break
            found = await self._find_receipt(row)
            if found is None:
                continue
            receipt, variant = found
            if self.confirmations:
                head = head if head is not None else int(await self.w3.eth.block_number)
                if head < receipt.block_number + self.confirmations:
                    continue
                block = await self.w3.eth.get_block(receipt.block_number)
                if "0x" + bytes(block["hash"]).hex() != receipt.block_hash:
                    continue
            status = "voided" if variant.kind == "void" else ("mined" if receipt.ok else "reverted")
            changed = variant.tx_hash != row.tx_hash
            await asyncio.to_thread(
                self.store.outbox_mark,
                row.key,
                status,
                receipt.block_number,
                block_hash=receipt.block_hash,
                tx_hash=variant.tx_hash if changed else None,
                raw=variant.raw if changed else None,
            )
            settled += 1
        return settled

    # ---- reverts ------------------------------------------------------------------------------

    async def _explain_revert(
        self, tx_hash: str, receipt: Receipt, contract: str
    ) -> ContractRevert:
        """The reason a mined transaction reverted, by replaying its call with ``eth_call``.

        The exact state it ran in is the parent block's plus the transactions before it in its
        block, which ``eth_call`` cannot name. The first of a block is replayed on the parent
        block (exact). A later one is replayed on its own block first: that state includes the
        transactions before it, which are what usually made a call that passed its gas estimate
        revert (another run spent the budget; a block holds many transactions on a real chain,
        and anvil puts concurrent sends into one block). The parent block comes second.
        """
        tx = await self.w3.eth.get_transaction(HexStr(tx_hash))  # type: ignore[arg-type]
        call = {"from": tx["from"], "to": tx["to"], "data": tx["input"], "value": tx["value"]}
        block = int(receipt["blockNumber"])
        blocks = [block - 1] if int(receipt.get("transactionIndex", 0)) == 0 else [block, block - 1]
        for at in blocks:
            try:
                await self.w3.eth.call(call, at)  # type: ignore[arg-type]
            except ContractLogicError as exc:
                return revert_from_exception(exc, contract=contract)
        return ContractRevert("Reverted", {"tx_hash": tx_hash}, contract=contract)
