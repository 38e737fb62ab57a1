"""Activities of InvoiceReconciliationWorkflow: read the escrow order, classify the invoice.

``escrow.read_order`` is a read (``eth_call``): it changes nothing, so it needs no idempotency
key. ``llm.reconcile_invoice`` asks the worker's LLM provider (the same one, and the same error
types, as ``llm.choose_supplier``) and applies the rule check before answering.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from temporalio import activity

from ledgerflow.activities.llm import _logger, run_with_provider
from ledgerflow.errors import StoreError
from ledgerflow.flow.errors import mapped_errors
from ledgerflow.llm import decisions
from ledgerflow.llm.decisions import ReconcileRequest, ReconcileResult
from ledgerflow.runtime import Runtime
from ledgerflow.types import EscrowOrderInfo, OrderLookup, OrderRef, ProcurementRef

__all__ = ["InvoiceActivities", "reconcile_invoice"]

_ESCROW_STATUS = ("None", "Open", "Released", "Refunded")


class InvoiceActivities:
    """Chain reads bound to one process's :class:`Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    @activity.defn(name="escrow.read_order")
    @mapped_errors
    async def read_order(self, req: OrderRef) -> EscrowOrderInfo:
        """``Escrow.order(orderId)``; status ``None`` (and ``exists=False``) for no such order."""
        escrow = self.rt.contract("Escrow")
        agent = (await self.rt.signer("agent")).address
        buyer, supplier, amount, deadline, status = await escrow.functions.order(
            bytes.fromhex(req.order_id.removeprefix("0x"))
        ).call()
        status_name = _ESCROW_STATUS[int(status)] if int(status) < len(_ESCROW_STATUS) else "None"
        exists = status_name != "None"
        return EscrowOrderInfo(
            order_id=req.order_id,
            exists=exists,
            status=status_name,  # type: ignore[arg-type]
            agent=str(buyer) if exists else None,
            supplier=str(supplier) if exists else None,
            amount=int(amount),
            deadline=int(deadline),
            opened_by_our_agent=exists and str(buyer).lower() == str(agent).lower(),
        )

    @activity.defn(name="procurement.find_order")
    @mapped_errors
    async def find_order(self, req: ProcurementRef) -> OrderLookup:
        """The order id the latest ProcurementWorkflow run with this id opened: read from its
        checkpointed ``escrow.open`` input, so it is the order that run really paid into."""
        store = self.rt.store
        try:
            run = await asyncio.to_thread(store.get_run, req.workflow_id)
        except StoreError:
            return OrderLookup(workflow_id=req.workflow_id)
        steps = await asyncio.to_thread(store.get_steps, run.workflow_id, run.run_id)
        for step in steps:
            if step.name == "escrow.open" and step.input_preimage:
                order_id = json.loads(step.input_preimage).get("order_id")
                return OrderLookup(
                    workflow_id=run.workflow_id, run_id=run.run_id, order_id=order_id
                )
        return OrderLookup(workflow_id=run.workflow_id, run_id=run.run_id)

    def all(self) -> list[Callable[..., Any]]:
        return [self.read_order, self.find_order, reconcile_invoice]


@activity.defn(name="llm.reconcile_invoice")
async def reconcile_invoice(request: ReconcileRequest) -> ReconcileResult:
    """Classify an invoice against its order with the worker's provider, then apply the rules.

    Raises:
        ApplicationError: typed as in :mod:`activities.llm` (``LLMInvalidOutput`` retries,
            ``LLMRefusal`` does not, ...).
    """
    result = await run_with_provider(
        lambda provider: decisions.reconcile_invoice(request, provider)
    )
    _logger().info(
        "llm.reconcile",
        provider=result.meta.provider,
        model=result.meta.model,
        invoice=request.invoice_number,
        model_status=result.decision.status,
        status=result.status,
        overridden=result.overridden_by_rules,
        prompt_hash=result.meta.prompt_hash,
    )
    return result
