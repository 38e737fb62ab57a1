"""InvoiceReconciliationWorkflow: match a supplier invoice against its escrow order.

escrow order read on chain → facts computed by deterministic code → LLM classification
(``match | mismatch | needs_review``) → rule check (the model may be stricter than the facts,
never laxer) → for anything but a match, a human answers the ``resolve`` update (or the review
times out) → typed outcome (``reconciled | disputed | timed_out``).

No money moves here: the escrow is released by the ProcurementWorkflow that opened it, and no
contract records reconciliations. The outcome is made provable by the ledger instead: every step,
including the final ``invoice.outcome`` step, is checkpointed and anchored.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from ledgerflow.flow.ledger import Ledger, failure_output
    from ledgerflow.llm.decisions import (
        InvoiceFacts,
        ReconcileRequest,
        ReconcileResult,
        apply_invoice_rules,
        invoice_facts,
    )
    from ledgerflow.types import (
        EscrowOrderInfo,
        InvoiceClass,
        InvoiceOutcome,
        InvoiceRequest,
        InvoiceResult,
        InvoiceState,
        OrderLookup,
        OrderRef,
        ProcurementRef,
        ResolutionDecision,
    )

from ledgerflow.flow.policies import (
    CHAIN_READ_START_TO_CLOSE_TIMEOUT,
    CHAIN_RETRY_POLICY,
    LLM_RETRY_POLICY,
    LLM_START_TO_CLOSE_TIMEOUT,
)

__all__ = ["InvoiceReconciliationWorkflow"]


@workflow.defn(name="InvoiceReconciliationWorkflow")
class InvoiceReconciliationWorkflow:
    def __init__(self) -> None:
        self._state = InvoiceState(phase="starting")
        self._resolution: ResolutionDecision | None = None
        self._ledger: Ledger | None = None

    # ---- messages -----------------------------------------------------------------------------

    @workflow.query(name="state")
    def state(self) -> InvoiceState:
        if self._ledger is not None:
            self._state.steps = self._ledger.steps
            self._state.head = self._ledger.head
        return self._state

    @workflow.update(name="resolve")
    async def resolve(self, decision: ResolutionDecision) -> str:
        """Accept (reconcile as is) or reject (dispute) an invoice that did not match."""
        self._resolution = decision
        return "accepted" if decision.action == "accept" else "rejected"

    @resolve.validator
    def _validate_resolve(self, decision: ResolutionDecision) -> None:
        if self._state.awaiting != "resolution" or self._resolution is not None:
            raise ValueError("no resolution is pending for this invoice")

    # ---- the run --------------------------------------------------------------------------

    @workflow.run
    async def run(self, request: InvoiceRequest) -> InvoiceResult:
        ledger = self._ledger = Ledger(
            request.anchor_mode, wait_for_anchor=request.wait_for_anchor is not False
        )
        order_id = request.order_id
        if order_id is None and request.procurement_workflow_id is not None:
            self._state.phase = "finding-order"
            ref_p = ProcurementRef(workflow_id=request.procurement_workflow_id)
            lookup: OrderLookup = await ledger.step(
                "activity",
                "procurement.find_order",
                ref_p,
                lambda: workflow.execute_activity(
                    "procurement.find_order",
                    ref_p,
                    result_type=OrderLookup,
                    start_to_close_timeout=CHAIN_READ_START_TO_CLOSE_TIMEOUT,
                    retry_policy=CHAIN_RETRY_POLICY,
                ),
            )
            order_id = lookup.order_id
        self._state.invoice_number = request.invoice_number
        self._state.order_id = order_id

        order: EscrowOrderInfo | None = None
        if order_id is not None:
            self._state.phase = "reading-order"
            ref = OrderRef(order_id=order_id)
            order = await ledger.step(
                "chain",
                "escrow.read_order",
                ref,
                lambda: workflow.execute_activity(
                    "escrow.read_order",
                    ref,
                    result_type=EscrowOrderInfo,
                    start_to_close_timeout=CHAIN_READ_START_TO_CLOSE_TIMEOUT,
                    retry_policy=CHAIN_RETRY_POLICY,
                ),
            )
        facts = invoice_facts(
            request.invoice_number, request.supplier, request.lines, order_id, order
        )

        self._state.phase = "classifying"
        classification, model_status, overridden, reasons, decided_by = await self._classify(
            request, order, facts
        )
        self._state.classification = classification
        self._state.reasons = reasons

        outcome: InvoiceOutcome = "reconciled"
        reason = "the invoice matches its escrow order"
        resolution: ResolutionDecision | None = None
        if classification != "match":
            resolution = await self._await_resolution(request, classification)
            if resolution is None:
                outcome, reason = "timed_out", "no resolution before the review timeout"
            elif resolution.action == "accept":
                outcome = "reconciled"
                reason = f"accepted by {resolution.resolver}: {resolution.reason}".strip(" :")
            else:
                outcome = "disputed"
                reason = f"rejected by {resolution.resolver}: {resolution.reason}".strip(" :")

        result: dict[str, Any] = {
            "outcome": outcome,
            "reason": reason,
            "invoice_number": request.invoice_number,
            "order_id": order_id,
            "supplier": request.supplier,
            "classification": classification,
            "model_classification": model_status,
            "overridden_by_rules": overridden,
            "reasons": reasons,
            "invoice_total": facts.invoice_total,
            "order_amount": facts.order_amount,
            "amount_difference": facts.amount_difference,
            "decided_by": decided_by,
            "resolution": resolution.action if resolution else None,
            "resolved_by": resolution.resolver if resolution else None,
        }
        # The verdict itself is a step, so it is anchored and can be disclosed on its own.
        ledger.record(
            "activity",
            "invoice.outcome",
            {"facts": facts, "classification": classification},
            {k: result[k] for k in ("outcome", "reason", "resolution", "resolved_by")},
        )
        self._state.phase = outcome
        self._state.awaiting = None
        await ledger.finish(outcome)
        return InvoiceResult(
            **result,
            steps=ledger.steps,
            head=ledger.head,
            anchor_mode=ledger.mode,
            anchored=ledger.anchored,
        )

    async def _classify(
        self, request: InvoiceRequest, order: EscrowOrderInfo | None, facts: InvoiceFacts
    ) -> tuple[InvoiceClass, InvoiceClass | None, bool, list[str], str | None]:
        """(status, model's status, overridden, reasons, decided_by); an unusable answer from
        the model sends the invoice to a human instead of failing the run."""
        ledger = self._ledger
        assert ledger is not None
        req = ReconcileRequest(
            invoice_number=request.invoice_number,
            supplier=request.supplier,
            lines=request.lines,
            notes=request.notes,
            order=order,
            facts=facts,
        )
        try:
            answer: ReconcileResult = await ledger.step(
                "llm",
                "llm.reconcile_invoice",
                req,
                lambda: workflow.execute_activity(
                    "llm.reconcile_invoice",
                    req,
                    result_type=ReconcileResult,
                    start_to_close_timeout=LLM_START_TO_CLOSE_TIMEOUT,
                    retry_policy=LLM_RETRY_POLICY,
                ),
            )
        except ActivityError as err:
            error = failure_output(err)["error"]
            status: InvoiceClass = "mismatch" if facts.rule_status == "mismatch" else "needs_review"
            reasons = [*facts.problems, f"no usable classification: {error['type']}"]
            return status, None, False, reasons, None
        # The activity applied the rule check; apply it again here, in the workflow, so that no
        # activity implementation can turn contradicted facts into a match.
        status, overridden = apply_invoice_rules(facts, answer.status)
        reasons = list(answer.reasons)
        if overridden and not answer.overridden_by_rules:
            reasons.append(f"rule check: the facts say {facts.rule_status!r}")
        decided_by = f"{answer.meta.provider}:{answer.meta.model}"
        return (
            status,
            answer.decision.status,
            overridden or answer.overridden_by_rules,
            reasons,
            decided_by,
        )

    async def _await_resolution(
        self, request: InvoiceRequest, classification: InvoiceClass
    ) -> ResolutionDecision | None:
        """Wait for the ``resolve`` update; ``None`` when the review timed out."""
        ledger = self._ledger
        assert ledger is not None
        self._state.phase = "awaiting-resolution"
        self._state.awaiting = "resolution"
        await ledger.flush()  # anchor what happened so far before waiting on a human
        try:
            await workflow.wait_condition(
                lambda: self._resolution is not None,
                timeout=timedelta(seconds=request.review_timeout_seconds),
            )
        except TimeoutError:
            ledger.record(
                "timer",
                "resolve.timeout",
                {
                    "timeout_seconds": request.review_timeout_seconds,
                    "classification": classification,
                },
                {"expired": True},
                ok=False,
            )
            return None
        finally:
            self._state.awaiting = None
        resolution = self._resolution
        assert resolution is not None
        ledger.record(
            "update", f"resolve.{resolution.action}", resolution, {"action": resolution.action}
        )
        return resolution
