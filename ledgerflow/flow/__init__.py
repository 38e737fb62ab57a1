"""The authoring API: checkpointed workflows, typed steps, sagas and human waits.

A team writes a workflow as business logic on :class:`CheckpointedWorkflow` (the ledger, the
``state`` query, search attributes and the seal belong to the base), declares its own activities
with :func:`step_activity` (kind, name, timeouts and retries in one place), or uses the generic
steps (an LLM decision into any pydantic schema, a call to any deployed contract, an HTTP request
with an idempotency key), and registers the workflow once with :func:`register`. See
docs/authoring.md.
"""

from ledgerflow.flow.activity import StepMeta, StepPolicy, step_activity, step_meta
from ledgerflow.flow.registry import Activities, Registration, parse_input, register
from ledgerflow.flow.steps import Approval
from ledgerflow.flow.workflow import (
    CheckpointedWorkflow,
    Compensate,
    Run,
    RunResult,
    RunState,
    Saga,
    Stop,
    reason_of,
    revert_of,
    signal_handler,
    update_handler,
)

__all__ = [
    "Activities",
    "Approval",
    "CheckpointedWorkflow",
    "Compensate",
    "Registration",
    "Run",
    "RunResult",
    "RunState",
    "Saga",
    "StepMeta",
    "StepPolicy",
    "Stop",
    "parse_input",
    "reason_of",
    "register",
    "revert_of",
    "signal_handler",
    "step_activity",
    "step_meta",
    "update_handler",
]
