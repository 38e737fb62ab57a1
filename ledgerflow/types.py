"""Shared types: workflow inputs and results, activity arguments, checkpoint batches.

One leaf module that workflows, activities, the worker, the SDK, the API and the tests import.
Every workflow and activity takes exactly one of these models, so fields can be added later
without breaking running histories.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ledgerflow.checkpoint import StepKind, StepStatus

__all__ = [
    "AnchorInfo",
    "AnchorMode",
    "ApprovalDecision",
    "CheckpointAck",
    "CheckpointBatch",
    "CheckpointStep",
    "DeliveryConfirmation",
    "EscrowRequest",
    "GrantRequest",
    "OfferList",
    "OrderRef",
    "Outcome",
    "PolicyCheck",
    "PolicyCheckRequest",
    "ProcurementRequest",
    "ProcurementResult",
    "ProcurementState",
    "RestockRequest",
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

    sku: str = Field("WIDGET-42", description="inventory SKU (at most 32 bytes of UTF-8)")
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


from ledgerflow.llm import Offer  # noqa: E402  (leaf module: llm imports nothing from here)

OfferList.model_rebuild()
