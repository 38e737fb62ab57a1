"""One signer per key: in-order nonces, the signed raw transaction persisted before broadcast,
and retries that find the receipt or rebroadcast the same bytes instead of signing anew.

Run one :class:`Signer` per key per process (the worker). Two processes signing with one key
would hand out the same nonces; give each worker its own key instead.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexStr
from sqlalchemy.exc import IntegrityError
from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError

from ledgerflow.chain.reverts import revert_from_exception
from ledgerflow.errors import ChainError, ContractRevert
from ledgerflow.store import OutboxTx, Store

__all__ = ["Receipt", "Signer"]

log = structlog.get_logger(__name__)

_KNOWN = ("already known", "known transaction", "already imported")


class _DeadTransaction(Exception):
    """A signed transaction whose nonce another transaction took: it can never be mined."""


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
        if row is None:
            async with self._lock:
                row = await asyncio.to_thread(self.store.outbox_get, key)
                if row is None:
                    row = await self._sign_and_broadcast(key, call, value, contract, gas, None)
        receipt = await self._receipt(row)
        if receipt is None and not await self._broadcast(row):
            receipt = await self._receipt(row)
            if receipt is None:
                # Its nonce is used by another transaction: this one is dead, sign anew.
                async with self._lock:
                    self._nonce = None
                    row = await self._sign_and_broadcast(key, call, value, contract, gas, row)
        try:
            return await self._settle(row, contract, receipt)
        except _DeadTransaction:
            async with self._lock:
                self._nonce = None
                row = await self._sign_and_broadcast(key, call, value, contract, gas, row)
            return await self._settle(row, contract, None)

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
            try:
                gas = int(await call.estimate_gas(params))
            except ContractLogicError as exc:
                raise revert_from_exception(exc, contract=contract) from None
            gas = gas + gas // 5 + 10_000
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
            signed = self._account.sign_transaction(tx)
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
            await asyncio.to_thread(
                self.store.outbox_mark, row.key, "mined", int(receipt["blockNumber"])
            )
        if self.confirmations:
            await self._wait_confirmations(int(receipt["blockNumber"]))
        return receipt

    async def _receipt(self, row: OutboxTx) -> Receipt | None:
        try:
            r = await self.w3.eth.get_transaction_receipt(row.tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return None
        return Receipt(r) if r else None

    async def _wait_receipt(self, row: OutboxTx) -> Receipt:
        deadline = time.monotonic() + self.timeout
        delay = self.poll
        next_rebroadcast = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            r = await self._receipt(row)
            if r is not None:
                return r
            if time.monotonic() > next_rebroadcast:
                next_rebroadcast = time.monotonic() + 2.0
                if not await self._broadcast(row) and await self._receipt(row) is None:
                    raise _DeadTransaction(row.tx_hash)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        raise ChainError(
            f"no receipt for {row.tx_hash} after {self.timeout:.0f}s (it stays queued)"
        )

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
