"""The exception tree of ledgerflow.

Every error raised on purpose by ledgerflow derives from :class:`LedgerflowError`::

    LedgerflowError
    ├── ConfigError            settings or deployment file missing or inconsistent
    ├── CodecError             a Temporal payload cannot be decrypted (altered, or a wrong key)
    │   └── UnknownCodecKey    encrypted under a key id that is not configured
    ├── StackError             a service of the embedded stack failed to start (port taken, ...)
    │   └── EngineUnavailable  Temporal did not answer or refused a call (carries the RPC status)
    ├── ChainError             JSON-RPC or transaction failure
    │   ├── ContractRevert     a contract refused a call (decoded custom error); non-retryable
    │   ├── RPCUnavailable     no configured JSON-RPC endpoint answered
    │   ├── FeeTooHigh         the fee the chain asks is above the configured maximum
    │   ├── SignerUnavailable  the remote signer refused, failed or answered something else
    │   └── TxVoided           the chain lost the transaction and its owner said not to redo it
    ├── LLMError               the model's answer cannot be used
    │   ├── LLMRefusal         the model refused
    │   └── LLMInvalidOutput   malformed JSON, schema violation, truncation, invalid choice
    ├── StoreError             the store is missing data it must have
    │   ├── RecordNotFound     no such run or step (e.g. redacting an unknown step)
    │   └── StoreUnavailable   the database failed (unreachable, locked, read-only, ...)
    ├── VerificationError      a run does not verify (carries the first bad step)
    ├── CredentialError        a C2PA content credential cannot be made or read
    │   └── UnsupportedMediaType  the C2PA library does not handle this media type
    ├── WebhookError           a webhook delivery is refused (carries the HTTP status)
    └── RunError               a run cannot be found, started or steered, or did not complete
        ├── RunNotFound        no such run (or it has ended and no longer takes messages)
        ├── RunAlreadyStarted  the workflow id is taken by another run
        ├── RunFailed          the run failed, was cancelled, terminated or timed out
        └── UpdateRejected     the run refused an update (not waiting for it, invalid, ...)

The SDK raises the ``RunError`` family and ``EngineUnavailable`` in place of Temporal's own
exceptions (``RPCError``, ``WorkflowFailureError``, ``WorkflowUpdateFailedError``, ...), which stay
attached as ``__cause__``.

Errors never carry secrets: messages are written from public values only, and errors that
stand for an infrastructure failure (aiohttp, web3, SQLAlchemy) carry a short message of
their own instead of the library's (which can quote SQL parameters, raw transactions or URLs
with credentials). Every error says whether retrying can help (:attr:`LedgerflowError.retryable`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ChainError",
    "CodecError",
    "ConfigError",
    "ContractRevert",
    "CredentialError",
    "EngineUnavailable",
    "FeeTooHigh",
    "LLMError",
    "LLMInvalidOutput",
    "LLMRefusal",
    "LedgerflowError",
    "RPCUnavailable",
    "RecordNotFound",
    "RunAlreadyStarted",
    "RunError",
    "RunFailed",
    "RunNotFound",
    "SignerUnavailable",
    "StackError",
    "StoreError",
    "StoreUnavailable",
    "TxVoided",
    "UnknownCodecKey",
    "UnsupportedMediaType",
    "UpdateRejected",
    "VerificationError",
    "WebhookError",
    "infrastructure_error",
]


#: The longest message an infrastructure error carries (Temporal shows it in the UI).
MAX_MESSAGE = 300


def bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    one_line = " ".join(str(text).split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


class LedgerflowError(Exception):
    """Root of every error ledgerflow raises on purpose.

    ``retryable`` says whether the same call can succeed later (an RPC outage, a fee spike)
    or never will (a revert, a configuration error).
    """

    retryable: bool = True


class ConfigError(LedgerflowError):
    """Settings or the deployment file are missing or inconsistent."""

    retryable = False


class CodecError(LedgerflowError):
    """An encrypted Temporal payload cannot be decrypted (ledgerflow.codec): it was altered, or
    it is not one of ledgerflow's. Its message names the key id, never a key."""

    retryable = False


class UnknownCodecKey(CodecError):
    """A payload was encrypted under a key id that is not among ``LEDGERFLOW_CODEC_KEYS``."""

    def __init__(self, key_id: str, known: list[str]) -> None:
        self.key_id = key_id
        self.known = known
        super().__init__(
            f"payload encrypted under codec key id {key_id!r}, which is not configured "
            f"(configured: {', '.join(known) or 'none'}); add it to LEDGERFLOW_CODEC_KEYS"
        )


class StackError(LedgerflowError):
    """A service of the embedded stack could not be started or reached."""


class ChainError(LedgerflowError):
    """A JSON-RPC call or a transaction failed."""


class ContractRevert(ChainError):
    """A contract refused a call. ``error`` is the custom error's name, ``args`` its values."""

    retryable = False

    def __init__(
        self, error: str, args: dict[str, Any] | None = None, *, contract: str = ""
    ) -> None:
        self.error = error
        self.error_args = dict(args or {})
        self.contract = contract
        detail = ", ".join(f"{k}={v}" for k, v in self.error_args.items())
        where = f"{contract}: " if contract else ""
        super().__init__(f"{where}{error}({detail})")


class RPCUnavailable(ChainError):
    """No configured JSON-RPC endpoint answered (each one failed or is cooling down)."""


class FeeTooHigh(ChainError):
    """The chain's fee is above the configured maximum: nothing was paid above it.

    Retryable: the fee may fall. ``needed`` and ``maximum`` are in wei per gas.
    """

    def __init__(self, message: str, *, needed: int, maximum: int, chain_id: int) -> None:
        self.needed = needed
        self.maximum = maximum
        self.chain_id = chain_id
        super().__init__(message)


class SignerUnavailable(ChainError):
    """The remote signer could not be reached, refused, or returned another transaction."""


class TxVoided(ChainError):
    """The chain lost this key's transaction and its owner said the step must not be redone;
    the nonce was filled with a no-op instead. Retrying cannot bring it back."""

    retryable = False


class LLMError(LedgerflowError):
    """The model's answer cannot be used."""


class LLMRefusal(LLMError):
    """The model refused to answer."""


class LLMInvalidOutput(LLMError):
    """The model's answer is malformed, truncated, violates the schema or the offered choices."""


class StoreError(LedgerflowError):
    """The store lacks data it must have (an unknown run, a missing preimage)."""


class RecordNotFound(StoreError):
    """The store has no such run or step (e.g. ``ledgerflow redact`` of an unknown step)."""


class StoreUnavailable(StoreError):
    """The database failed: unreachable, locked, read-only, out of space, or a schema that is
    not ledgerflow's. The message names the failure, never the SQL or its parameters."""


class VerificationError(LedgerflowError):
    """A run does not verify."""

    retryable = False

    def __init__(self, message: str, *, first_bad_step: int | None = None) -> None:
        self.first_bad_step = first_bad_step
        super().__init__(message)


class CredentialError(LedgerflowError):
    """A C2PA content credential cannot be made or read: the asset is not a valid file of its
    media type, or the signer's certificate or key is refused. The message never quotes key
    material."""

    retryable = False


class UnsupportedMediaType(CredentialError, ValueError):
    """The C2PA library cannot embed in or read from this media type (``mime``)."""

    def __init__(self, message: str, *, mime: str = "") -> None:
        self.mime = mime
        super().__init__(message)


class WebhookError(LedgerflowError):
    """A webhook delivery is refused; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def _family(exc: BaseException) -> str:
    """The top-level package of the exception's class or of any of its bases."""
    for klass in type(exc).__mro__:
        root = klass.__module__.split(".", 1)[0]
        if root in ("sqlalchemy", "psycopg", "sqlite3", "aiohttp", "web3", "httpx", "eth_utils"):
            return root
    return ""


def infrastructure_error(exc: BaseException) -> LedgerflowError | None:
    """A short, typed stand-in for an infrastructure library's exception, or None when
    ``exc`` is not one (let it propagate).

    The library's own text is not used where it can quote secrets or payloads: SQLAlchemy and
    drivers (SQL, parameters), aiohttp and httpx (URLs with credentials). JSON-RPC error
    messages from the node are kept, bounded. The original is never chained (``from None``).
    """
    if isinstance(exc, LedgerflowError):
        return exc
    family = _family(exc)
    kind = type(exc).__name__
    if family in ("sqlalchemy", "psycopg", "sqlite3"):
        text = f"database error: {kind}"
        if kind in ("OperationalError", "InterfaceError"):
            orig = getattr(exc, "orig", exc)
            first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
            if first and "://" not in first:
                text += f": {first}"
        retry = kind not in ("ProgrammingError", "DataError", "NotSupportedError")
        err: LedgerflowError = StoreUnavailable(bounded(text, 240))
        err.retryable = retry
        return err
    if family in ("aiohttp", "httpx"):
        status = getattr(exc, "status", None) or getattr(
            getattr(exc, "response", None), "status_code", None
        )
        return RPCUnavailable(f"HTTP {status}" if status else f"network error: {kind}")
    if isinstance(exc, TimeoutError):
        return ChainError("timed out")
    if family in ("web3", "eth_utils"):
        message = getattr(exc, "message", None) or str(exc)
        resp = getattr(exc, "rpc_response", None)
        if isinstance(resp, dict) and isinstance(resp.get("error"), dict):
            message = str(resp["error"].get("message", message))
        err = ChainError(bounded(f"{kind}: {message}" if message else kind, 240))
        err.retryable = kind not in ("Web3ValidationError", "Web3TypeError", "Web3ValueError")
        return err
    return None


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

    retryable = False


class RunAlreadyStarted(RunError):
    """A start was refused: the workflow id belongs to another run (running, or closed under a
    reuse policy that refuses it)."""

    retryable = False


class RunFailed(RunError):
    """The run ended without a result.

    ``status`` is ``failed``, ``cancelled``, ``terminated`` or ``timed_out``; ``failure_type`` is
    the workflow's error type when it failed with one (e.g. ``CompensationFailed``).
    """

    retryable = False

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

    retryable = False

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
