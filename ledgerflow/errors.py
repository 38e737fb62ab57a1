"""The exception tree of ledgerflow.

Every error raised on purpose by ledgerflow derives from :class:`LedgerflowError`::

    LedgerflowError
    ├── ConfigError            settings or deployment file missing or inconsistent
    ├── StackError             a service of the embedded stack failed to start (port taken, ...)
    │   └── EngineUnavailable  Temporal did not answer or refused a call (carries the RPC status)
    ├── ChainError             JSON-RPC or transaction failure
    │   └── ContractRevert     a contract refused a call (decoded custom error); non-retryable
    ├── LLMError               the model's answer cannot be used
    │   ├── LLMRefusal         the model refused
    │   └── LLMInvalidOutput   malformed JSON, schema violation, truncation, invalid choice
    ├── StoreError             the store cannot be read, or lacks data it must have
    ├── VerificationError      a run does not verify (carries the first bad step)
    ├── WebhookError           a webhook delivery is refused (carries the HTTP status)
    └── RunError               a run cannot be found, started or steered, or did not complete
        ├── RunNotFound        no such run (or it has ended and no longer takes messages)
        ├── RunAlreadyStarted  the workflow id is taken by another run
        ├── RunFailed          the run failed, was cancelled, terminated or timed out
        └── UpdateRejected     the run refused an update (not waiting for it, invalid, ...)

The SDK raises the ``RunError`` family and ``EngineUnavailable`` in place of Temporal's own
exceptions (``RPCError``, ``WorkflowFailureError``, ``WorkflowUpdateFailedError``, ...), which stay
attached as ``__cause__``.

Errors never carry secrets: messages are written from public values only.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ChainError",
    "ConfigError",
    "ContractRevert",
    "EngineUnavailable",
    "LLMError",
    "LLMInvalidOutput",
    "LLMRefusal",
    "LedgerflowError",
    "RunAlreadyStarted",
    "RunError",
    "RunFailed",
    "RunNotFound",
    "StackError",
    "StoreError",
    "UpdateRejected",
    "VerificationError",
    "WebhookError",
]


class LedgerflowError(Exception):
    """Root of every error ledgerflow raises on purpose."""


class ConfigError(LedgerflowError):
    """Settings or the deployment file are missing or inconsistent."""


class StackError(LedgerflowError):
    """A service of the embedded stack could not be started or reached."""


class ChainError(LedgerflowError):
    """A JSON-RPC call or a transaction failed."""


class ContractRevert(ChainError):
    """A contract refused a call. ``error`` is the custom error's name, ``args`` its values."""

    def __init__(
        self, error: str, args: dict[str, Any] | None = None, *, contract: str = ""
    ) -> None:
        self.error = error
        self.error_args = dict(args or {})
        self.contract = contract
        detail = ", ".join(f"{k}={v}" for k, v in self.error_args.items())
        where = f"{contract}: " if contract else ""
        super().__init__(f"{where}{error}({detail})")


class LLMError(LedgerflowError):
    """The model's answer cannot be used."""


class LLMRefusal(LLMError):
    """The model refused to answer."""


class LLMInvalidOutput(LLMError):
    """The model's answer is malformed, truncated, violates the schema or the offered choices."""


class StoreError(LedgerflowError):
    """The store lacks data it must have (an unknown run, a missing preimage)."""


class VerificationError(LedgerflowError):
    """A run does not verify."""

    def __init__(self, message: str, *, first_bad_step: int | None = None) -> None:
        self.first_bad_step = first_bad_step
        super().__init__(message)


class WebhookError(LedgerflowError):
    """A webhook delivery is refused; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class EngineUnavailable(StackError):
    """Temporal did not answer, or refused a call for a reason of its own (``status``: the RPC
    status name, e.g. ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``PERMISSION_DENIED``)."""

    def __init__(self, message: str, *, status: str = "") -> None:
        self.status = status
        super().__init__(message)


class RunError(LedgerflowError):
    """A run cannot be found, started or steered, or it did not complete.

    ``workflow_id`` and ``run_id`` name the run (``run_id`` may be None: the latest run).
    """

    def __init__(self, message: str, *, workflow_id: str = "", run_id: str | None = None) -> None:
        self.workflow_id = workflow_id
        self.run_id = run_id
        super().__init__(message)


class RunNotFound(RunError):
    """No run has that workflow id (and run id), or it has ended and takes no more messages."""


class RunAlreadyStarted(RunError):
    """A start was refused: the workflow id belongs to another run (running, or closed under a
    reuse policy that refuses it)."""


class RunFailed(RunError):
    """The run ended without a result.

    ``status`` is ``failed``, ``cancelled``, ``terminated`` or ``timed_out``; ``failure_type`` is
    the workflow's error type when it failed with one (e.g. ``CompensationFailed``).
    """

    def __init__(
        self,
        message: str,
        *,
        workflow_id: str = "",
        run_id: str | None = None,
        status: str = "failed",
        failure_type: str | None = None,
    ) -> None:
        self.status = status
        self.failure_type = failure_type
        super().__init__(message, workflow_id=workflow_id, run_id=run_id)


class UpdateRejected(RunError):
    """The run refused an update: ``update`` is its name, ``failure_type`` the refusal's type
    (``UpdateRejected`` when the run was not waiting for it)."""

    def __init__(
        self,
        message: str,
        *,
        workflow_id: str = "",
        run_id: str | None = None,
        update: str = "",
        failure_type: str | None = None,
    ) -> None:
        self.update = update
        self.failure_type = failure_type
        super().__init__(message, workflow_id=workflow_id, run_id=run_id)
