"""The checkpoint records that workflow code hands to the store and the chain (flush batches)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from pydantic import Field

from ledgerflow.checkpoint.records import StepKind, StepStatus
from ledgerflow.types import AnchorMode, StrictModel

if TYPE_CHECKING:
    from ledgerflow.store import AnchorRow

__all__ = [
    "AnchorInfo",
    "CheckpointAck",
    "CheckpointBatch",
    "CheckpointStep",
    "OpenRun",
    "RunOpened",
    "SealInfo",
    "anchor_infos",
]


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
    #: Spec version 2: the 32-byte salts (0x-hex) of the input and output commitments.
    spec_version: int = 1
    input_salt: str | None = None
    output_salt: str | None = None


class SealInfo(StrictModel):
    """The seal a run's last flush carries: its step count and final head (spec v2)."""

    steps: int
    head: str


class OpenRun(StrictModel):
    """Argument of ``checkpoint.open_run``: a version 2 run asks for its salt seed."""

    workflow_id: str
    run_id: str
    workflow_type: str
    run_key: str
    anchor_mode: AnchorMode


class RunOpened(StrictModel):
    """Result of ``checkpoint.open_run``: 32 random bytes (0x-hex) the run's salts derive from.

    Recorded in the workflow's history (so replay derives the same salts); never stored.
    """

    salt_seed: str


class CheckpointBatch(StrictModel):
    workflow_id: str
    run_id: str
    workflow_type: str
    run_key: str
    anchor_mode: AnchorMode
    steps: list[CheckpointStep]
    final_status: str | None = None  # set on the run's last flush
    wait_for_anchor: bool = False
    spec_version: int = 1
    seal: SealInfo | None = None  # spec v2: set on the run's last flush


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


class _StepRef(Protocol):
    """What :func:`anchor_infos` reads of a step (a ``StepRow`` or a ``StepAnchorRef``)."""

    @property
    def seq(self) -> int: ...

    @property
    def anchor_id(self) -> int | None: ...


def anchor_infos(steps: Sequence[_StepRef], anchors: dict[int, AnchorRow]) -> list[AnchorInfo]:
    """One entry per distinct confirmed anchor of ``steps`` (per-step anchors name their step)."""
    out: list[AnchorInfo] = []
    seen: set[int] = set()
    for st in steps:
        a = anchors.get(st.anchor_id) if st.anchor_id is not None else None
        if a is None or a.status != "confirmed" or a.id in seen or a.tx_hash is None:
            continue
        seen.add(a.id)  # type: ignore[arg-type]
        out.append(
            AnchorInfo(
                mode=a.mode,  # type: ignore[arg-type]
                tx_hash=a.tx_hash,
                block_number=a.block_number or 0,
                root=a.root,
                step=st.seq if a.mode == "per-step" else None,
            )
        )
    return out
