"""The checkpoint ledger inside workflow code.

Every step of a run becomes a step record whose hash and running head are computed here,
deterministically, from the step's canonical input and output. New runs are recorded under
checkpoint spec version 2 (salted commitments, an outcome step and a seal); runs that started
before it keep version 1 to the end (``workflow.patched``), so their histories replay unchanged.
Records are handed to the store and the chain by the flush activities:

* ``per-step``: after every step, one ``checkpoint.anchor_steps`` activity stores the preimages
  and sends one registry transaction per step (the registry enforces the head chain).
* ``batched``: no activity per step. Pending records are flushed by one local activity before the
  run waits on the outside world (signals, updates, long timers) and at the end; the anchorer puts
  them into a Merkle batch anchored with one transaction for many runs. The final flush waits
  until the run's last step is anchored (unless ``wait_for_anchor`` is off).

A crash between a step and its flush loses nothing: the step is in the workflow's history, so the
replayed workflow computes the same record and flushes it again; the store and the registry accept
each record exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from ledgerflow.checkpoint.canonical import canonical_bytes, keccak, to_hex
    from ledgerflow.checkpoint.models import (
        AnchorInfo,
        CheckpointAck,
        CheckpointBatch,
        CheckpointStep,
        OpenRun,
        RunOpened,
        SealInfo,
    )
    from ledgerflow.checkpoint.records import (
        OUTCOME_STEP_NAME,
        StepKind,
        StepRecord,
        commitment,
        next_head,
        run_key,
    )
    from ledgerflow.types import SALT_SECRET_MEMO, AnchorMode, ErrorType

__all__ = ["DEFAULT_ANCHOR_MODE", "Ledger", "failure_output"]

T = TypeVar("T")

#: Used when neither the run's input nor its starter chose a mode.
DEFAULT_ANCHOR_MODE: AnchorMode = "batched"

#: The patch that moves new runs to checkpoint spec version 2.
SPEC_V2_PATCH = "ledgerflow-checkpoint-spec-v2"

OPEN_RUN_ACTIVITY = "checkpoint.open_run"
OPEN_RUN_START_TO_CLOSE_TIMEOUT = timedelta(seconds=10)
ANCHOR_STEPS_ACTIVITY = "checkpoint.anchor_steps"
STORE_STEPS_ACTIVITY = "checkpoint.store_steps"
ANCHOR_STEPS_START_TO_CLOSE_TIMEOUT = timedelta(minutes=2)
STORE_STEPS_START_TO_CLOSE_TIMEOUT = timedelta(seconds=60)
# Storing and anchoring checkpoints must eventually succeed: retry without a limit, visibly.
CHECKPOINT_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)

# Registered with the dev server by `ledgerflow up` (and checked by the worker at start-up).
_sa_status = SearchAttributeKey.for_keyword("LedgerflowStatus")
_sa_anchor_state = SearchAttributeKey.for_keyword("LedgerflowAnchorState")
_sa_anchor_mode = SearchAttributeKey.for_keyword("LedgerflowAnchorMode")


_SEED_DOMAIN = b"ledgerflow:salt-seed:"
_SECRET = re.compile(r"0x[0-9a-f]{64}")


def _memo_secret() -> bytes | None:
    """The starter's salt secret from the run's memo, if it gave a well-formed one."""
    try:
        value = workflow.memo_value(SALT_SECRET_MEMO, None, type_hint=str)
    except Exception:  # a memo value that does not decode as a string: not ours
        return None
    if isinstance(value, str) and _SECRET.fullmatch(value):
        return bytes.fromhex(value[2:])
    return None


def failure_output(err: BaseException) -> dict[str, Any]:
    """The canonical output of a failed step: ``{"error": {"type", "message"}}``."""
    cause: BaseException = err
    while isinstance(cause, ActivityError) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, ApplicationError):
        kind = cause.type or "ApplicationError"
        message = cause.message
    elif isinstance(cause, TimeoutError):
        kind, message = "TimeoutError", f"activity timed out ({cause.type})"
    else:
        kind, message = type(cause).__name__, str(cause)
    return {"error": {"type": kind, "message": message}}


class Ledger:
    """Per-run checkpoint state kept in workflow memory (rebuilt identically on replay)."""

    def __init__(
        self, mode: AnchorMode | None, *, wait_for_anchor: bool = True, spec: int = 1
    ) -> None:
        info = workflow.info()
        self.workflow_id = info.workflow_id
        self.run_id = info.run_id
        self.workflow_type = info.workflow_type
        self.mode: AnchorMode = mode or DEFAULT_ANCHOR_MODE
        self.wait_for_anchor = wait_for_anchor
        self.spec = spec
        self.run_key = to_hex(run_key(self.workflow_id, self.run_id, spec=spec))
        self.head = self.run_key
        #: The step hash of the last recorded step (None before the first).
        self.last_step_hash: str | None = None
        #: The step hash of the last successful LLM decision (kind ``llm``).
        self.last_decision_hash: str | None = None
        self._seed: bytes | None = None
        self.seq = 0
        self.pending: list[CheckpointStep] = []
        self.anchors: list[AnchorInfo] = []
        self.anchored = False

    @property
    def steps(self) -> int:
        return self.seq

    async def open(self) -> None:
        """Version 2: the run's salt seed.

        A run started by a ledgerflow client carries a random secret in its memo
        (:data:`~ledgerflow.types.SALT_SECRET_MEMO`): the seed is
        ``keccak256("ledgerflow:salt-seed:" || secret || run_id)``, unique per run even where a
        retry, a cron run or a continue-as-new reuses the memo, and the same on replay. Any other
        run asks ``checkpoint.open_run`` for 32 random bytes (one local activity, recorded in
        history).
        """
        secret = _memo_secret()
        if secret is not None:
            self._seed = keccak(_SEED_DOMAIN + secret + self.run_id.encode())
            return
        opened = await workflow.execute_local_activity(
            OPEN_RUN_ACTIVITY,
            OpenRun(
                workflow_id=self.workflow_id,
                run_id=self.run_id,
                workflow_type=self.workflow_type,
                run_key=self.run_key,
                anchor_mode=self.mode,
            ),
            result_type=RunOpened,
            start_to_close_timeout=OPEN_RUN_START_TO_CLOSE_TIMEOUT,
            retry_policy=CHECKPOINT_RETRY_POLICY,
        )
        self._seed = bytes.fromhex(opened.salt_seed[2:])

    def _salt(self, seq: int, part: int) -> bytes:
        # salt = keccak256(seed || uint64 seq || part): one-way, so disclosing one step's salts
        # reveals nothing about another step's (checkpoint spec v2, section 4).
        if self._seed is None:
            raise ApplicationError(
                "a version 2 run records steps only after checkpoint.open_run",
                type=ErrorType.CHECKPOINT_MISMATCH,
                non_retryable=True,
            )
        return keccak(self._seed + seq.to_bytes(8, "big") + bytes([part]))

    def record(
        self, kind: StepKind, name: str, input: Any, output: Any, *, ok: bool = True
    ) -> CheckpointStep:
        """Append one step to the chain and return its record."""
        in_bytes = canonical_bytes(input)
        out_bytes = canonical_bytes(output)
        salts: tuple[bytes | None, bytes | None] = (None, None)
        if self.spec >= 2:
            salts = (self._salt(self.seq, 0), self._salt(self.seq, 1))
        record = StepRecord(
            v=self.spec,  # type: ignore[arg-type]
            run=self.run_key,
            seq=self.seq,
            kind=kind,
            name=name,
            input=to_hex(commitment(salts[0], in_bytes)),
            output=to_hex(commitment(salts[1], out_bytes)),
            status="ok" if ok else "failed",
            prev=self.head,
        )
        digest = record.hash()
        head = next_head(bytes.fromhex(self.head[2:]), digest)
        step = CheckpointStep(
            seq=record.seq,
            kind=kind,
            name=name,
            status=record.status,
            input_hash=record.input,
            output_hash=record.output,
            prev=record.prev,
            step_hash=to_hex(digest),
            head=to_hex(head),
            input_preimage=in_bytes.decode("utf-8"),
            output_preimage=out_bytes.decode("utf-8"),
            spec_version=self.spec,
            input_salt=to_hex(salts[0]) if salts[0] is not None else None,
            output_salt=to_hex(salts[1]) if salts[1] is not None else None,
        )
        self.pending.append(step)
        self.seq += 1
        self.head = step.head
        self.last_step_hash = step.step_hash
        if kind == "llm" and ok:
            self.last_decision_hash = step.step_hash
        return step

    async def step(
        self,
        kind: StepKind,
        name: str,
        arg: Any,
        run: Callable[[], Awaitable[T]],
    ) -> T:
        """Run ``run()`` (usually an activity) as one checkpointed step with input ``arg``.

        A failure is recorded as a failed step (its error type and message are the output) and
        re-raised, so the caller compensates as usual.
        """
        try:
            result = await run()
        except ActivityError as err:
            self.record(kind, name, arg, failure_output(err), ok=False)
            await self._after_step()
            raise
        self.record(kind, name, arg, result)
        await self._after_step()
        return result

    async def _after_step(self) -> None:
        if self.mode == "per-step":
            await self.flush()

    async def flush(self, *, final_status: str | None = None) -> CheckpointAck | None:
        """Hand pending records to the store (and, per-step, to the registry).

        The last flush of a version 2 run carries its seal (step count and final head).
        """
        wait = final_status is not None and self.wait_for_anchor
        if not self.pending and final_status is None:
            return None
        seal = None
        if final_status is not None and self.spec >= 2:
            seal = SealInfo(steps=self.seq, head=self.head)
        batch = CheckpointBatch(
            workflow_id=self.workflow_id,
            run_id=self.run_id,
            workflow_type=self.workflow_type,
            run_key=self.run_key,
            anchor_mode=self.mode,
            steps=list(self.pending),
            final_status=final_status,
            wait_for_anchor=wait,
            spec_version=self.spec,
            seal=seal,
        )
        if self.mode == "per-step":
            ack = await workflow.execute_activity(
                ANCHOR_STEPS_ACTIVITY,
                batch,
                result_type=CheckpointAck,
                start_to_close_timeout=ANCHOR_STEPS_START_TO_CLOSE_TIMEOUT,
                retry_policy=CHECKPOINT_RETRY_POLICY,
            )
        else:
            ack = await workflow.execute_local_activity(
                STORE_STEPS_ACTIVITY,
                batch,
                result_type=CheckpointAck,
                start_to_close_timeout=STORE_STEPS_START_TO_CLOSE_TIMEOUT,
                retry_policy=CHECKPOINT_RETRY_POLICY,
            )
        sent = [s.step_hash for s in batch.steps]
        if ack.step_hashes != sent:
            raise ApplicationError(
                "checkpoint store acknowledged other step hashes than were sent",
                type=ErrorType.CHECKPOINT_MISMATCH,
                non_retryable=True,
            )
        self.pending = self.pending[len(batch.steps) :]
        self.anchors.extend(ack.anchors)
        self.anchored = ack.anchored or (self.mode == "per-step" and not self.pending)
        return ack

    async def finish(
        self,
        status: str,
        *,
        outcome: str | None = None,
        reason: str = "",
        search: Sequence[SearchAttributeUpdate[Any]] = (),
    ) -> None:
        """Flush what is left, mark the run finished and (by default) wait for its anchoring.

        A version 2 run first records its outcome step (``run.outcome``), then seals: the seal
        commits the step count and the final head, so nothing can be dropped or appended later.
        """
        if self.spec >= 2:
            self.record(
                "outcome",
                OUTCOME_STEP_NAME,
                {"workflow_type": self.workflow_type, "status": status},
                {"outcome": outcome if outcome is not None else status, "reason": reason},
            )
        await self.flush(final_status=status)
        workflow.upsert_search_attributes(
            [
                _sa_status.value_set(status),
                _sa_anchor_state.value_set("anchored" if self.anchored else "pending"),
                _sa_anchor_mode.value_set(self.mode),
                *search,
            ]
        )
