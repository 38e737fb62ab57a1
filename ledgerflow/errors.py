"""The exception tree of ledgerflow.

Every error raised on purpose by ledgerflow derives from :class:`LedgerflowError`::

    LedgerflowError
    ├── ConfigError            settings or deployment file missing or inconsistent
    ├── StackError             a service of the embedded stack failed to start (port taken, ...)
    ├── ChainError             JSON-RPC or transaction failure
    │   └── ContractRevert     a contract refused a call (decoded custom error); non-retryable
    ├── LLMError               the model's answer cannot be used
    │   ├── LLMRefusal         the model refused
    │   └── LLMInvalidOutput   malformed JSON, schema violation, truncation, invalid choice
    ├── StoreError             the store is missing data it must have
    ├── VerificationError      a run does not verify (carries the first bad step)
    └── WebhookError           a webhook delivery is refused (carries the HTTP status)

Errors never carry secrets: messages are written from public values only.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ChainError",
    "ConfigError",
    "ContractRevert",
    "LLMError",
    "LLMInvalidOutput",
    "LLMRefusal",
    "LedgerflowError",
    "StackError",
    "StoreError",
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
