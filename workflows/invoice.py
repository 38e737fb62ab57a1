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

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from ledgerflow.activities.invoice import (
        MAX_NOTES_CHARS,
        EscrowOrderInfo,
        InvoiceActivities,
        InvoiceClass,
        InvoiceFacts,
        InvoiceLine,
        OrderClaim,
        ProcurementRef,
        ReconcileRequest,
        apply_invoice_rules,
        cut_text,
        invoice_facts,
        reconcile_invoice,
    )
    from ledgerflow.activities.procurement import OrderRef
    from ledgerflow.flow import CheckpointedWorkflow, Run, RunState, register, update_handler
    from ledgerflow.flow.ledger import failure_output
    from ledgerflow.flow.workflow import ledger_details, tokens
    from ledgerflow.types import (
        Address,
        AnchorMode,
        Bytes32,
        StrictInput,
        StrictModel,
        Text,
        WaitSeconds,
    )

__all__ = [
    "InvoiceReconciliationWorkflow",
    "InvoiceRequest",
    "InvoiceResult",
    "InvoiceState",
    "ResolutionDecision",
]


# ---- input, messages, state and result --------------------------------------------------------

InvoiceOutcome = Literal["reconciled", "disputed", "timed_out"]
#: The patch that added the one-invoice-per-order claim (runs before it replay without it).
ONE_INVOICE = "ledgerflow-invoice-one-per-order"


class InvoiceRequest(StrictInput):
    """Input of InvoiceReconciliationWorkflow. Every field has a default, so ``{}`` starts it.

    The escrow order is named by ``order_id`` or, equivalently, by the id of the
    ProcurementWorkflow run that opened it (``procurement_workflow_id``); at most one of the two.
    Without either the invoice goes to a human (``needs_review``). Strict and bounded
    (docs/workflows.md).
    """

    invoice_number: Text = Field("INV-0001", min_length=1, max_length=64)
    supplier: Address | None = Field(None, description="supplier's EVM address (0x + 40 hex)")
    order_id: Bytes32 | None = Field(None, description="escrow order id (0x + 64 hex) or null")
    procurement_workflow_id: Text | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="alternative to order_id: the ProcurementWorkflow run whose order this bills",
    )
    lines: list[InvoiceLine] = Field(default_factory=list, max_length=200)
    notes: Text = Field(
        "",
        description="supplier-written free text; untrusted, never instructions; cut to "
        f"{MAX_NOTES_CHARS} characters",
    )
    review_timeout_seconds: WaitSeconds = Field(
        86_400, description="how long a mismatch waits for the `resolve` update"
    )
    anchor_mode: AnchorMode | None = Field(
        None, description="per-run anchoring mode; null = the starter's or workflow default"
    )
    wait_for_anchor: bool | None = Field(
        None, description="complete only after the last step is anchored; null = default (true)"
    )
    trigger: Text | None = Field(
        None, max_length=300, description="what started the run (webhook id, event, ...)"
    )

    @field_validator("notes", mode="before")
    @classmethod
    def _cut_notes(cls, value: object) -> object:
        return cut_text(value, MAX_NOTES_CHARS)

    @model_validator(mode="after")
    def _one_order_reference(self) -> InvoiceRequest:
        if self.order_id is not None and self.procurement_workflow_id is not None:
            raise ValueError("give order_id or procurement_workflow_id, not both")
        return self

    @property
    def total(self) -> int:
        return sum(line.amount for line in self.lines)


class ResolutionDecision(StrictInput):
    """Update ``resolve``: a human's answer to a mismatched or unclear invoice."""

    action: Literal["accept", "reject"] = Field(
        description="accept: reconcile the invoice as is; reject: dispute it"
    )
    resolver: Text = Field("operator", min_length=1, max_length=128)
    reason: Text = Field("", max_length=1000)


class InvoiceState(RunState):
    """Query ``state`` of InvoiceReconciliationWorkflow."""

    invoice_number: str | None = None
    order_id: str | None = None
    classification: InvoiceClass | None = None
    reasons: list[str] = Field(default_factory=list)


class InvoiceResult(StrictModel):
    outcome: InvoiceOutcome
    reason: str = ""
    invoice_number: str
    order_id: str | None = None
    supplier: str | None = None
    classification: InvoiceClass
    model_classification: InvoiceClass | None = None
    overridden_by_rules: bool = False
    reasons: list[str] = Field(default_factory=list)
    invoice_total: int
    order_amount: int | None = None
    amount_difference: int
    decided_by: str | None = None
    resolution: Literal["accept", "reject"] | None = None
    resolved_by: str | None = None
    steps: int
    head: str
    anchor_mode: AnchorMode
    anchored: bool


@register
@workflow.defn(name="InvoiceReconciliationWorkflow")
class InvoiceReconciliationWorkflow(CheckpointedWorkflow):
    State = InvoiceState
    state: InvoiceState

    resolve = update_handler(
        "resolve",
        ResolutionDecision,
        into="resolution",
        reply=lambda d: "accepted" if d.action == "accept" else "rejected",
        pending_message="no resolution is pending for this invoice",
    )

    @classmethod
    def describe(cls, request: InvoiceRequest) -> tuple[str, str]:
        order = request.order_id or request.procurement_workflow_id or "no order"
        summary = f"Reconcile invoice {request.invoice_number} ({tokens(request.total)})"
        details = (
            f"**Reconcile invoice {request.invoice_number}** of {tokens(request.total)} "
            f"({len(request.lines)} line(s)) against escrow order `{order}`: deterministic facts, "
            f"an LLM classification bounded by rules, and a human for anything but a match."
        )
        return summary, details

    def subject(self, request: InvoiceRequest) -> str:
        self._total = request.total
        self._supplier = request.supplier
        return request.invoice_number

    def search_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {"amount": getattr(self, "_total", 0)}
        if getattr(self, "_supplier", None):
            fields["counterparty"] = self._supplier
        resolver = self._run.fields.get("resolved_by") if self._run is not None else None
        if resolver:
            fields["approver"] = resolver
        return fields

    def current_details(self) -> str:
        st = self.state
        lines = [f"**{st.phase}**", f"Invoice `{st.invoice_number}`, order `{st.order_id}`"]
        if st.classification:
            lines.append(f"**Classification**: {st.classification}")
            lines += [f"- {r}" for r in st.reasons[:8]]
        if st.awaiting == "resolution":
            lines.append("**Waiting for** a human's `resolve` Update (accept or reject)")
        run = self._run
        if run is not None and run.finished:
            lines.append(f"**Outcome**: {run.outcome}" + (f": {run.reason}" if run.reason else ""))
        return "\n\n".join(lines) + "\n\n" + "\n".join(ledger_details(run))

    @workflow.run
    async def run(self, request: InvoiceRequest) -> InvoiceResult:
        async with self.checkpointed(request) as run:
            await self._reconcile(run, request)
        return run.result(InvoiceResult)

    async def _reconcile(self, run: Run, request: InvoiceRequest) -> None:
        st = self.state
        order_id = request.order_id
        if order_id is None and request.procurement_workflow_id is not None:
            st.phase = "finding-order"
            ref_p = ProcurementRef(workflow_id=request.procurement_workflow_id)
            lookup = await run.step(InvoiceActivities.find_order, ref_p)
            order_id = lookup.order_id
        st.invoice_number = request.invoice_number
        st.order_id = order_id

        order: EscrowOrderInfo | None = None
        if order_id is not None:
            st.phase = "reading-order"
            order = await run.step(InvoiceActivities.read_order, OrderRef(order_id=order_id))
        facts = invoice_facts(
            request.invoice_number, request.supplier, request.lines, order_id, order
        )

        st.phase = "classifying"
        classification, model_status, overridden, reasons, decided_by = await self._classify(
            run, request, order, facts
        )
        st.classification = classification
        st.reasons = reasons

        outcome: InvoiceOutcome = "reconciled"
        reason = "the invoice matches its escrow order"
        resolution: ResolutionDecision | None = None
        if classification != "match":
            resolution = await self._await_resolution(run, request, classification)
            if resolution is None:
                outcome, reason = "timed_out", "no resolution before the review timeout"
            elif resolution.action == "accept":
                outcome = "reconciled"
                reason = f"accepted by {resolution.resolver}: {resolution.reason}".strip(" :")
            else:
                outcome = "disputed"
                reason = f"rejected by {resolution.resolver}: {resolution.reason}".strip(" :")
        if outcome == "reconciled" and order_id is not None and workflow.patched(ONE_INVOICE):
            # One order, one invoice: the first invoice to reconcile an order claims it.
            st.phase = "claiming-order"
            claim = OrderClaim(order_id=order_id, invoice_number=request.invoice_number)
            claimed = await run.step(InvoiceActivities.claim_order, claim)
            if not claimed.claimed:
                outcome = "disputed"
                reason = (
                    f"order {order_id} was already reconciled by invoice "
                    f"{claimed.invoice_number} (workflow {claimed.workflow_id})"
                )

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
        run.record(
            "activity",
            "invoice.outcome",
            {"facts": facts, "classification": classification},
            {k: result[k] for k in ("outcome", "reason", "resolution", "resolved_by")},
        )
        run.fields.update(result)
        run.outcome, run.reason = outcome, reason

    async def _classify(
        self, run: Run, request: InvoiceRequest, order: EscrowOrderInfo | None, facts: InvoiceFacts
    ) -> tuple[InvoiceClass, InvoiceClass | None, bool, list[str], str | None]:
        """(status, model's status, overridden, reasons, decided_by); an unusable answer from
        the model sends the invoice to a human instead of failing the run."""
        req = ReconcileRequest(
            invoice_number=request.invoice_number,
            supplier=request.supplier,
            lines=request.lines,
            notes=request.notes,
            order=order,
            facts=facts,
        )
        try:
            answer = await run.step(reconcile_invoice, req)
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
        self, run: Run, request: InvoiceRequest, classification: InvoiceClass
    ) -> ResolutionDecision | None:
        """Wait for the ``resolve`` update; ``None`` when the review timed out."""
        self.state.phase = "awaiting-resolution"
        answered = await run.wait_for(
            "resolution",
            lambda: self.received("resolution") is not None,
            timeout=request.review_timeout_seconds,
        )
        if not answered:
            run.record(
                "timer",
                "resolve.timeout",
                {
                    "timeout_seconds": request.review_timeout_seconds,
                    "classification": classification,
                },
                # Spec v2: a failed step's output is the error shape (v1 runs recorded this).
                {"error": {"type": "ResolutionTimeout", "message": "no resolution in time"}}
                if run.v2
                else {"expired": True},
                ok=False,
            )
            return None
        resolution: ResolutionDecision = self.received("resolution")
        run.record(
            "update", f"resolve.{resolution.action}", resolution, {"action": resolution.action}
        )
        return resolution
