"""The checkpoint records that workflow code hands to the store and the chain (flush batches)."""

from __future__ import annotations

from pydantic import Field

from ledgerflow.checkpoint.records import StepKind, StepStatus
from ledgerflow.types import AnchorMode, StrictModel

__all__ = ["AnchorInfo", "CheckpointAck", "CheckpointBatch", "CheckpointStep"]


class CheckpointStep(StrictModel):
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


class CheckpointBatch(StrictModel):
    workflow_id: str
    run_id: str
    workflow_type: str
    run_key: str
    anchor_mode: AnchorMode
    steps: list[CheckpointStep]
    final_status: str | None = None  # set on the run's last flush
    wait_for_anchor: bool = False


class AnchorInfo(StrictModel):
    mode: AnchorMode
    tx_hash: str
    block_number: int
    root: str | None = None
    step: int | None = None


class CheckpointAck(StrictModel):
    """What a flush stored; echoes the step hashes so history can be cross-checked."""

    step_hashes: list[str]
    anchored: bool
    anchors: list[AnchorInfo] = Field(default_factory=list)
