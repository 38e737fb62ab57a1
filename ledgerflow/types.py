"""Shared types: workflow inputs and results, activity arguments, checkpoint batches.

One leaf module that workflows, activities, the worker, the SDK, the API and the tests import.
Every workflow and activity takes exactly one of these models, so fields can be added later
without breaking running histories.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ledgerflow.checkpoint.canonical import keccak
from ledgerflow.checkpoint.records import StepKind, StepStatus

__all__ = [
    "AnchorInfo",
    "AnchorMode",
    "ApprovalDecision",
    "CanonicalContent",
    "CheckpointAck",
    "CheckpointBatch",
    "CheckpointStep",
    "ContentCategory",
    "ContentDocument",
    "ContentOutcome",
    "ContentRequest",
    "ContentResult",
    "ContentState",
    "DeliveryConfirmation",
    "EscrowOrderInfo",
    "EscrowRequest",
    "EscrowStatus",
    "GrantRequest",
    "InvoiceClass",
    "InvoiceLine",
    "InvoiceOutcome",
    "InvoiceRequest",
    "InvoiceResult",
    "InvoiceState",
    "OfferList",
    "OrderRef",
    "Outcome",
    "PolicyCheck",
    "PolicyCheckRequest",
    "ProcurementRequest",
    "ProcurementResult",
    "ProcurementState",
    "ResolutionDecision",
    "RestockRequest",
    "ReviewDecision",
    "Shortfall",
    "SkuRequest",
    "TxResult",
]

AnchorMode = Literal["batched", "per-step"]
Outcome = Literal["completed", "compensated", "rejected"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- checkpoints ------------------------------------------------------------------------------


class CheckpointStep(_Model):
    """A step record plus what the store keeps: its hashes and canonical preimages."""

    seq: int
    kind: StepKind
    name: str
    status: StepStatus
    input_hash: str
    output_hash: str
    prev: str
    step_hash: str
    head: str
    input_preimage: str
    output_preimage: str


class CheckpointBatch(_Model):
    workflow_id: str
    run_id: str
    workflow_type: str
    run_key: str
    anchor_mode: AnchorMode
    steps: list[CheckpointStep]
    final_status: str | None = None  # set on the run's last flush
    wait_for_anchor: bool = False


class AnchorInfo(_Model):
    mode: AnchorMode
    tx_hash: str
    block_number: int
    root: str | None = None
    step: int | None = None


class CheckpointAck(_Model):
    """What a flush stored; echoes the step hashes so history can be cross-checked."""

    step_hashes: list[str]
    anchored: bool
    anchors: list[AnchorInfo] = Field(default_factory=list)


# ---- procurement ------------------------------------------------------------------------------


class ProcurementRequest(_Model):
    """Input of ProcurementWorkflow. Every field has a default, so ``{}`` is a valid start."""

    sku: str = Field(
        "WIDGET-42", min_length=1, description="inventory SKU (at most 32 bytes of UTF-8)"
    )
    quantity: int | None = Field(None, gt=0, description="units to buy; default: the shortfall")
    max_lead_time_days: int = Field(14, gt=0)
    approval_timeout_seconds: int = Field(86_400, gt=0)
    delivery_deadline_seconds: int = Field(7 * 86_400, gt=0)
    simulate_delivery_after_seconds: int | None = Field(
        None,
        ge=0,
        description="demo only: a simulated supplier confirms delivery after this many seconds",
    )
    anchor_mode: AnchorMode | None = Field(
        None, description="per-run anchoring mode; null = the starter's or workflow default"
    )
    wait_for_anchor: bool | None = Field(
        None, description="complete only after the last step is anchored; null = default (true)"
    )
    trigger: str | None = Field(None, description="what started the run (webhook id, event, ...)")

    @field_validator("sku")
    @classmethod
    def _sku_fits_bytes32(cls, sku: str) -> str:
        if len(sku.encode("utf-8")) > 32:
            raise ValueError("a SKU is at most 32 bytes of UTF-8 (it is a bytes32 on chain)")
        return sku


class SkuRequest(_Model):
    sku: str


class Shortfall(_Model):
    sku: str
    stock: int
    threshold: int
    target: int
    needed: int


class PolicyCheckRequest(_Model):
    supplier: str
    amount: int
    order_id: str


class PolicyCheck(_Model):
    ok: bool
    error: str | None = None
    details: dict[str, str] = Field(default_factory=dict)
    per_tx_cap: int
    remaining_budget: int


class GrantRequest(_Model):
    order_id: str
    supplier: str
    amount: int
    approver: str


class EscrowRequest(_Model):
    order_id: str
    supplier: str
    amount: int
    deadline: int  # unix seconds


class RestockRequest(_Model):
    sku: str
    quantity: int
    order_id: str


class TxResult(_Model):
    tx_hash: str
    block_number: int
    gas_used: int
    already_done: bool = False


class ApprovalDecision(_Model):
    """Answer to an over-cap escalation (Update ``approve`` / ``reject``)."""

    approver: str = Field("operator", max_length=128)
    reason: str = Field("", max_length=1000)


class DeliveryConfirmation(_Model):
    """Signal ``confirm_delivery`` from the supplier (or its webhook)."""

    reference: str = Field("", max_length=256)
    quantity: int | None = Field(None, gt=0)


class ProcurementState(_Model):
    """Query ``state``: where the run is."""

    phase: str
    order_id: str | None = None
    supplier: str | None = None
    quantity: int | None = None
    total: int | None = None
    steps: int = 0
    head: str | None = None
    awaiting: str | None = None


class ProcurementResult(_Model):
    outcome: Outcome
    reason: str = ""
    sku: str
    order_id: str | None = None
    supplier: str | None = None
    quantity: int | None = None
    unit_price: int | None = None
    total: int | None = None
    decided_by: str | None = None
    approved_by: str | None = None
    compensations: list[str] = Field(default_factory=list)
    steps: int
    head: str
    anchor_mode: AnchorMode
    anchored: bool


class OrderRef(_Model):
    order_id: str


class OfferList(_Model):
    offers: list[Offer]


# ---- invoice reconciliation -------------------------------------------------------------------

#: How an invoice compares with its escrow order (the LLM's answer, bounded by the rules).
InvoiceClass = Literal["match", "mismatch", "needs_review"]
InvoiceOutcome = Literal["reconciled", "disputed", "timed_out"]
EscrowStatus = Literal["None", "Open", "Released", "Refunded"]

_ADDRESS_PATTERN = r"^0x[0-9a-fA-F]{40}$"
_BYTES32_PATTERN = r"^0x[0-9a-fA-F]{64}$"
#: Longer untrusted free text (invoice notes, line descriptions) is cut, not refused.
MAX_NOTES_CHARS = 4000
MAX_LINE_DESCRIPTION_CHARS = 500


def _cut(value: object, limit: int) -> object:
    if isinstance(value, str) and len(value) > limit:
        return value[: limit - 1] + "…"
    return value


def _eip55(address: str) -> str:
    """EIP-55 checksum form of a 0x-prefixed 20-byte hex address.

    A module-level function on purpose: validators run inside the workflow sandbox, where a lazy
    import would re-import modules that touch the file system.
    """
    lower = address[2:].lower()
    digest = keccak(lower.encode("ascii")).hex()
    return "0x" + "".join(
        ch.upper() if ch.isalpha() and int(digest[i], 16) >= 8 else ch for i, ch in enumerate(lower)
    )


class InvoiceLine(_Model):
    """One invoice line. Amounts are integer token units (tUSD: 6 decimals)."""

    description: str = Field("", description="supplier-written text; untrusted")
    quantity: int = Field(1, gt=0)
    unit_price: int = Field(0, ge=0, description="price of one unit, in token units")

    @field_validator("description", mode="before")
    @classmethod
    def _cut_description(cls, value: object) -> object:
        return _cut(value, MAX_LINE_DESCRIPTION_CHARS)

    @property
    def amount(self) -> int:
        return self.quantity * self.unit_price


class InvoiceRequest(_Model):
    """Input of InvoiceReconciliationWorkflow. Every field has a default, so ``{}`` starts it.

    The escrow order is named by ``order_id`` or, equivalently, by the id of the
    ProcurementWorkflow run that opened it (``procurement_workflow_id``); at most one of the two.
    Without either the invoice goes to a human (``needs_review``).
    """

    invoice_number: str = Field("INV-0001", min_length=1, max_length=64)
    supplier: str | None = Field(
        None, pattern=_ADDRESS_PATTERN, description="supplier's EVM address (0x + 40 hex)"
    )
    order_id: str | None = Field(
        None, pattern=_BYTES32_PATTERN, description="escrow order id (0x + 64 hex) or null"
    )
    procurement_workflow_id: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="alternative to order_id: the ProcurementWorkflow run whose order this bills",
    )
    lines: list[InvoiceLine] = Field(default_factory=list, max_length=200)
    notes: str = Field("", description="supplier-written free text; untrusted, never instructions")
    review_timeout_seconds: int = Field(
        86_400, gt=0, description="how long a mismatch waits for the `resolve` update"
    )
    anchor_mode: AnchorMode | None = Field(
        None, description="per-run anchoring mode; null = the starter's or workflow default"
    )
    wait_for_anchor: bool | None = Field(
        None, description="complete only after the last step is anchored; null = default (true)"
    )
    trigger: str | None = Field(None, description="what started the run (webhook id, event, ...)")

    @field_validator("notes", mode="before")
    @classmethod
    def _cut_notes(cls, value: object) -> object:
        return _cut(value, MAX_NOTES_CHARS)

    @field_validator("supplier")
    @classmethod
    def _supplier_checksum(cls, value: str | None) -> str | None:
        if value is None:
            return None
        checksummed = _eip55(value)
        body = value[2:]
        if body not in (body.lower(), body.upper()) and value != checksummed:
            raise ValueError("supplier address has an invalid EIP-55 checksum")
        return checksummed

    @model_validator(mode="after")
    def _one_order_reference(self) -> InvoiceRequest:
        if self.order_id is not None and self.procurement_workflow_id is not None:
            raise ValueError("give order_id or procurement_workflow_id, not both")
        return self

    @property
    def total(self) -> int:
        return sum(line.amount for line in self.lines)


class EscrowOrderInfo(_Model):
    """``Escrow.order(orderId)`` as read from the chain (status ``None``: no such order)."""

    order_id: str
    exists: bool
    status: EscrowStatus
    agent: str | None = None
    supplier: str | None = None
    amount: int = 0
    deadline: int = 0
    opened_by_our_agent: bool = False


class ResolutionDecision(_Model):
    """Update ``resolve``: a human's answer to a mismatched or unclear invoice."""

    action: Literal["accept", "reject"] = Field(
        description="accept: reconcile the invoice as is; reject: dispute it"
    )
    resolver: str = Field("operator", max_length=128)
    reason: str = Field("", max_length=1000)


class InvoiceState(_Model):
    """Query ``state`` of InvoiceReconciliationWorkflow."""

    phase: str
    invoice_number: str | None = None
    order_id: str | None = None
    classification: InvoiceClass | None = None
    reasons: list[str] = Field(default_factory=list)
    awaiting: str | None = None
    steps: int = 0
    head: str | None = None


class InvoiceResult(_Model):
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


# ---- content provenance -----------------------------------------------------------------------

ContentCategory = Literal["finance", "legal", "health", "technology", "marketing", "news", "other"]
ContentOutcome = Literal["approved", "rejected"]
#: Bodies longer than this are refused: they would bloat workflow history (store a digest of a
#: larger document instead).
MAX_BODY_CHARS = 100_000


class ContentDocument(_Model):
    """The content whose provenance is recorded (what the content hash covers)."""

    title: str = Field("Untitled", max_length=500)
    body: str = Field("", max_length=MAX_BODY_CHARS)
    source_url: str = Field("", max_length=2048, description="recorded as is, never fetched")
    author: str = Field("", max_length=256)


class ContentRequest(ContentDocument):
    """Input of ContentProvenanceWorkflow. Every field has a default, so ``{}`` starts it."""

    require_review: bool = Field(False, description="ask a human even when nothing is flagged")
    review_timeout_seconds: int = Field(
        86_400, gt=0, description="how long flagged content waits for the `review` update"
    )
    on_review_timeout: Literal["approve", "reject"] = Field(
        "reject", description="what an unanswered review means"
    )
    anchor_mode: AnchorMode | None = Field(
        None, description="per-run anchoring mode; null = the starter's or workflow default"
    )
    wait_for_anchor: bool | None = Field(
        None, description="complete only after the last step is anchored; null = default (true)"
    )
    trigger: str | None = Field(None, description="what started the run (webhook id, event, ...)")

    def document(self) -> ContentDocument:
        return ContentDocument(
            title=self.title, body=self.body, source_url=self.source_url, author=self.author
        )


class CanonicalContent(_Model):
    """Result of ``content.canonicalize``: the content's hashes and its canonical short fields.

    ``content_hash`` is keccak-256 of the LCE-1 encoding of
    ``{"v", "title", "body", "source_url", "author"}`` in canonical form (docs/workflows.md).
    """

    version: int
    content_hash: str
    body_hash: str
    title: str
    source_url: str
    author: str
    body_chars: int
    body_bytes: int
    word_count: int


class ReviewDecision(_Model):
    """Update ``review``: a human's verdict on flagged content."""

    action: Literal["approve", "reject"] = Field(description="approve or reject the content")
    reviewer: str = Field("operator", max_length=128)
    reason: str = Field("", max_length=1000)


class ContentState(_Model):
    """Query ``state`` of ContentProvenanceWorkflow."""

    phase: str
    content_hash: str | None = None
    category: ContentCategory | None = None
    flagged: bool | None = None
    policy_terms: list[str] = Field(default_factory=list)
    awaiting: str | None = None
    steps: int = 0
    head: str | None = None


class ContentResult(_Model):
    outcome: ContentOutcome
    reason: str = ""
    content_hash: str
    body_hash: str
    title: str
    category: ContentCategory | None = None
    flagged: bool
    policy_terms: list[str] = Field(default_factory=list)
    overridden_by_rules: bool = False
    decided_by: str | None = None
    review: Literal["approve", "reject", "timeout", "not-required"]
    reviewed_by: str
    steps: int
    head: str
    anchor_mode: AnchorMode
    anchored: bool


class ProcurementRef(_Model):
    workflow_id: str


class OrderLookup(_Model):
    """The escrow order a ProcurementWorkflow opened, from its checkpointed ``escrow.open``."""

    workflow_id: str
    run_id: str | None = None
    order_id: str | None = None


from ledgerflow.llm.supplier import Offer  # noqa: E402  (leaf module: llm imports nothing from here)

OfferList.model_rebuild()
