"""Step records, step hashes and the head chain (checkpoint spec v1).

Pure functions shared by workflow code (which computes the chain), the store, ``verify`` and the
contracts' tests. docs/checkpoint-spec.md is the normative description; keep the two in step.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from ledgerflow.checkpoint.canonical import SPEC_VERSION, canonical_bytes, keccak, to_hex

__all__ = [
    "LEAF_PREFIX",
    "STEP_KINDS",
    "StepKind",
    "StepRecord",
    "StepStatus",
    "leaf_hash",
    "next_head",
    "run_key",
    "step_hash",
]

StepKind = Literal["llm", "chain", "activity", "signal", "update", "timer", "compensation"]
StepStatus = Literal["ok", "failed"]
STEP_KINDS: tuple[str, ...] = (
    "llm",
    "chain",
    "activity",
    "signal",
    "update",
    "timer",
    "compensation",
)

#: Domain separation byte for Merkle leaves (internal nodes hash 64 bytes, leaves 33).
LEAF_PREFIX = b"\x00"


def run_key(workflow_id: str, run_id: str) -> bytes:
    """The run's key on chain and its genesis head (checkpoint spec v1, section "Run key")."""
    return keccak(
        canonical_bytes({"spec": SPEC_VERSION, "workflow_id": workflow_id, "run_id": run_id})
    )


class StepRecord(BaseModel):
    """One step of a run, as hashed. Hashes are 0x-hex strings of 32 bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: str
    seq: int
    kind: StepKind
    name: str
    input: str
    output: str
    status: StepStatus
    prev: str

    def preimage(self) -> bytes:
        """The canonical bytes whose keccak256 is the step hash."""
        return canonical_bytes({"v": SPEC_VERSION, **self.model_dump()})

    def hash(self) -> bytes:
        return keccak(self.preimage())


def step_hash(record: StepRecord) -> bytes:
    """keccak256 of the step record's canonical encoding (with ``"v": 1``)."""
    return record.hash()


def next_head(prev: bytes, step: bytes) -> bytes:
    """head_n = keccak256(head_{n-1} || step_hash_n), both 32 bytes."""
    if len(prev) != 32 or len(step) != 32:
        raise ValueError("head and step hash must be 32 bytes")
    return keccak(prev + step)


def leaf_hash(step: bytes) -> bytes:
    """The Merkle leaf of a step: keccak256(0x00 || step_hash)."""
    if len(step) != 32:
        raise ValueError("step hash must be 32 bytes")
    return keccak(LEAF_PREFIX + step)


def hex32(data: bytes) -> str:
    """0x-hex of a 32-byte value."""
    return to_hex(data)
