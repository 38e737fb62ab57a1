"""The benchmark's reference activity and the models of ``BenchWorkflow`` (``ledgerflow bench``).

``bench.step`` does trivial, deterministic work (one SHA-256 over the previous step's digest), so
a benchmark of ``BenchWorkflow`` measures the orchestration and the checkpoint ledger, not the
work. The models live here, outside the workflow module, so that the workflow sandbox passes
them through instead of rebuilding the pydantic classes for every run.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from temporalio import activity

__all__ = [
    "STEP_ACTIVITY",
    "BenchInput",
    "BenchMode",
    "BenchResult",
    "BenchStepInput",
    "BenchStepOutput",
    "bench_step",
]

#: ``none`` runs the same steps without a Ledger: plain Temporal, the baseline.
BenchMode = Literal["none", "batched", "per-step"]

STEP_ACTIVITY = "bench.step"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BenchInput(_Model):
    """Input of ``BenchWorkflow``: K steps in one checkpoint mode."""

    steps: int = Field(8, ge=1, le=10_000, description="K, the number of activity steps")
    mode: BenchMode = Field("batched", description="checkpoint mode; none = no Ledger")
    wait_for_anchor: bool = Field(True, description="batched: end only once anchored")
    seed: str = Field("", max_length=256, description="start value of the digest chain")
    wait: bool = Field(False, description="after the steps, wait for the release signal")


class BenchStepInput(_Model):
    index: int
    digest: str


class BenchStepOutput(_Model):
    index: int
    digest: str


class BenchResult(_Model):
    mode: BenchMode
    steps: int
    #: Step records checkpointed (the activity steps plus the outcome step; 0 without a Ledger).
    records: int = 0
    digest: str
    head: str | None = None
    anchored: bool = False


@activity.defn(name=STEP_ACTIVITY)
async def bench_step(arg: BenchStepInput) -> BenchStepOutput:
    """One trivial deterministic step: ``sha256(digest || index)``."""
    data = f"{arg.digest}:{arg.index}".encode()
    return BenchStepOutput(index=arg.index, digest=hashlib.sha256(data).hexdigest())
