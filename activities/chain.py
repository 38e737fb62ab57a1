"""Chain activities of the procurement agent: reads, the policy pre-check and transactions.

Every state-changing call has an idempotency key derived from the run's order id, enforced by the
contract (an order id is refused twice) and by the signer's outbox (a retry rebroadcasts the same
signed bytes). A revert is a typed, non-retryable business failure that triggers the saga.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from temporalio import activity
from web3.exceptions import ContractLogicError

from ledgerflow.chain.deploy import bytes32_to_sku, sku_to_bytes32
from ledgerflow.chain.reverts import revert_from_exception
from ledgerflow.chain.signer import Receipt
from ledgerflow.errors import ContractRevert
from ledgerflow.flow.errors import mapped_errors
from ledgerflow.llm.supplier import Offer
from ledgerflow.runtime import Runtime
from ledgerflow.types import (
    EscrowRequest,
    GrantRequest,
    OfferList,
    OrderRef,
    PolicyCheck,
    PolicyCheckRequest,
    RestockRequest,
    Shortfall,
    SkuRequest,
    TxResult,
)

__all__ = ["ChainActivities"]


def _b32(hex_str: str) -> bytes:
    return bytes.fromhex(hex_str.removeprefix("0x"))


def _tx(receipt: Receipt) -> TxResult:
    return TxResult(
        tx_hash=receipt.tx_hash, block_number=receipt.block_number, gas_used=receipt.gas_used
    )


def _already() -> TxResult:
    """The effect happened before (an earlier attempt or run of this order): nothing sent now."""
    return TxResult(tx_hash="", block_number=0, gas_used=0, already_done=True)


class ChainActivities:
    """Activities bound to one process's :class:`Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    @activity.defn(name="inventory.read_shortfall")
    @mapped_errors
    async def read_shortfall(self, req: SkuRequest) -> Shortfall:
        inv = self.rt.contract("InventoryLedger")
        sku = sku_to_bytes32(req.sku)
        try:
            stock, threshold, target = await inv.functions.item(sku).call()
            needed = await inv.functions.shortfall(sku).call()
        except ContractLogicError as exc:
            raise revert_from_exception(exc, contract="InventoryLedger") from None
        return Shortfall(
            sku=req.sku, stock=stock, threshold=threshold, target=target, needed=needed
        )

    @activity.defn(name="marketplace.fetch_offers")
    @mapped_errors
    async def fetch_offers(self, req: SkuRequest) -> OfferList:
        market = self.rt.contract("Marketplace")
        policy = self.rt.contract("AgentPolicy")
        raw = await market.functions.offersFor(sku_to_bytes32(req.sku)).call()
        offers = []
        allowed_cache: dict[str, bool] = {}
        for o in raw:
            offer_id, supplier, sku, unit_price, lead, max_qty, _active, description = o
            if supplier not in allowed_cache:
                allowed_cache[supplier] = bool(
                    await policy.functions.isCounterpartyAllowed(supplier).call()
                )
            offers.append(
                Offer(
                    offer_id=offer_id,
                    supplier=supplier,
                    sku=bytes32_to_sku(sku),
                    unit_price=unit_price,
                    lead_time_days=lead,
                    max_quantity=max_qty,
                    description=description,
                    allow_listed=allowed_cache[supplier],
                )
            )
        return OfferList(offers=offers)

    @activity.defn(name="policy.precheck")
    @mapped_errors
    async def precheck(self, req: PolicyCheckRequest) -> PolicyCheck:
        """eth_call of AgentPolicy.checkSpend: the error a spend would hit, without spending."""
        policy = self.rt.contract("AgentPolicy")
        agent = (await self.rt.signer("agent")).address
        limits = await policy.functions.limits(agent).call()
        remaining = await policy.functions.remainingBudget(agent).call()
        cap = int(limits[0])
        try:
            await policy.functions.checkSpend(
                agent, req.supplier, req.amount, _b32(req.order_id)
            ).call()
        except ContractLogicError as exc:
            revert = revert_from_exception(exc, contract="AgentPolicy")
            return PolicyCheck(
                ok=False,
                error=revert.error,
                details={k: str(v) for k, v in revert.error_args.items()},
                per_tx_cap=cap,
                remaining_budget=remaining,
            )
        return PolicyCheck(ok=True, per_tx_cap=cap, remaining_budget=remaining)

    @activity.defn(name="policy.grant_exception")
    @mapped_errors
    async def grant_exception(self, req: GrantRequest) -> TxResult:
        policy = self.rt.contract("AgentPolicy")
        approver = await self.rt.signer("approver")
        agent = (await self.rt.signer("agent")).address
        call = policy.functions.grantException(_b32(req.order_id), agent, req.supplier, req.amount)
        receipt = await approver.send(f"policy.grant:{req.order_id}", call, contract="AgentPolicy")
        return _tx(receipt)

    @activity.defn(name="escrow.open")
    @mapped_errors
    async def open_escrow(self, req: EscrowRequest) -> TxResult:
        escrow = self.rt.contract("Escrow")
        agent = await self.rt.signer("agent")
        call = escrow.functions.open(_b32(req.order_id), req.supplier, req.amount, req.deadline)
        try:
            receipt = await agent.send(f"escrow.open:{req.order_id}", call, contract="Escrow")
        except ContractRevert as exc:
            if exc.error != "EscrowOrderExists":
                raise
            # Opened before by this run (its outbox row lost?): the same order is success,
            # anything else under this id is a real conflict.
            order = await escrow.functions.order(_b32(req.order_id)).call()
            if order[0] == agent.address and order[1] == req.supplier and order[2] == req.amount:
                return _already()
            raise
        return _tx(receipt)

    @activity.defn(name="escrow.release")
    @mapped_errors
    async def release_escrow(self, req: OrderRef) -> TxResult:
        return await self._settle_order(req, "release", done_status=2)

    @activity.defn(name="escrow.refund")
    @mapped_errors
    async def refund_escrow(self, req: OrderRef) -> TxResult:
        """Compensation: refund the order if it is open. Idempotent: never opened, already
        refunded (or released, which no compensation reaches) are reported as done."""
        escrow = self.rt.contract("Escrow")
        order = await escrow.functions.order(_b32(req.order_id)).call()
        status = int(order[4])
        if status != 1 and not await self._sent_before(f"escrow.refund:{req.order_id}"):
            return _already()
        return await self._settle_order(req, "refund", done_status=3)

    async def _sent_before(self, key: str) -> bool:
        return await asyncio.to_thread(self.rt.store.outbox_get, key) is not None

    async def _settle_order(self, req: OrderRef, action: str, *, done_status: int) -> TxResult:
        escrow = self.rt.contract("Escrow")
        agent = await self.rt.signer("agent")
        call = getattr(escrow.functions, action)(_b32(req.order_id))
        try:
            receipt = await agent.send(f"escrow.{action}:{req.order_id}", call, contract="Escrow")
        except ContractRevert as exc:
            if (
                exc.error == "EscrowNotOpen"
                and int(exc.error_args.get("status", -1)) == done_status
            ):
                return _already()
            raise
        return _tx(receipt)

    @activity.defn(name="inventory.restock")
    @mapped_errors
    async def restock(self, req: RestockRequest) -> TxResult:
        inv = self.rt.contract("InventoryLedger")
        orchestrator = await self.rt.signer("orchestrator")
        call = inv.functions.restock(sku_to_bytes32(req.sku), req.quantity, _b32(req.order_id))
        try:
            receipt = await orchestrator.send(
                f"inventory.restock:{req.order_id}", call, contract="InventoryLedger"
            )
        except ContractRevert as exc:
            if exc.error == "InventoryOrderAlreadyApplied":
                return _already()
            raise
        return _tx(receipt)

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.read_shortfall,
            self.fetch_offers,
            self.precheck,
            self.grant_exception,
            self.open_escrow,
            self.release_escrow,
            self.refund_escrow,
            self.restock,
        ]
