"""The shared vocabulary: the strict model base, address and hash types, wire error types.

Declared once and imported everywhere (workflows, activities, the API, the SDK, the tests):

* :class:`StrictModel`, the base of every model that crosses a process boundary (workflow and
  activity arguments and results, webhook bodies), and :class:`StrictInput`, the base of what
  callers fill (workflow inputs, signal and update arguments): strict types, no coercion;
* the bounded input types (:data:`Sku`, :data:`Quantity`, :data:`Amount`,
  :data:`WaitSeconds`, :data:`Text`) and their limits (:data:`MAX_QUANTITY`, ...), chosen so
  that every value fits everywhere it flows: Python's ``timedelta``, Temporal timers, ``uint64``
  deadlines and ``uint256`` amounts on chain, ``bytes32`` SKUs;
* :data:`Address` (an EVM address, normalised to its EIP-55 checksum form by one validator,
  :func:`eip55`) and :data:`Bytes32` (a 0x-hex 32-byte value such as a hash or an order id);
* :class:`ErrorType`, the names of the errors that reach Temporal: raised as
  ``ApplicationError(type=ErrorType.X)`` and listed in retry policies by the same member, so a typo
  cannot silently make an error retryable;
* :class:`EscrowStatus`, the on-chain lifecycle of an escrowed order;
* :class:`TxResult`, what a state-changing chain step returns.

This module is imported by workflow code: it is deterministic and does no I/O.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from Crypto.Hash import keccak as _keccak
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_serializer

__all__ = [
    "MAX_AMOUNT",
    "MAX_LEAD_TIME_DAYS",
    "MAX_QUANTITY",
    "MAX_WAIT_SECONDS",
    "SALT_SECRET_MEMO",
    "Address",
    "Amount",
    "AnchorMode",
    "Bytes32",
    "ErrorType",
    "EscrowStatus",
    "EvolvingModel",
    "NoEffect",
    "Quantity",
    "Sku",
    "StrictInput",
    "StrictModel",
    "Text",
    "TxEvent",
    "TxResult",
    "WaitSeconds",
    "eip55",
]

AnchorMode = Literal["batched", "per-step"]

#: The memo key under which ledgerflow's clients give every run they start a random 32-byte
#: secret (0x-hex); a checkpointed run derives its salt seed from it and its run id instead of
#: asking ``checkpoint.open_run`` (see :meth:`ledgerflow.flow.ledger.Ledger.open`).
SALT_SECRET_MEMO = "ledgerflow.salt-secret"


class StrictModel(BaseModel):
    """Base of every model that crosses a process boundary: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class StrictInput(StrictModel):
    """Base of every model a caller fills: workflow inputs and signal and update arguments.

    Unknown fields are refused and nothing is coerced: an integer field takes a JSON integer
    only (not ``"10"``, ``true``, ``10.0`` or ``1e1``), a string field a string. The worker's
    data converter decodes these models strictly and refuses duplicate keys, so a run started
    from the Temporal UI or another SDK is held to the same rules as one started through
    ledgerflow (``ledgerflow.temporal``).
    """

    model_config = ConfigDict(extra="forbid", strict=True)


# ---- bounded input types ----------------------------------------------------------------------

#: Most units one order may buy (an ``uint256`` on chain; bounded so that quantity times price
#: and every sum of invoice lines stay small integers).
MAX_QUANTITY = 1_000_000_000
#: Largest amount in token units (10^18 tUSD at 6 decimals): far inside ``uint256`` even when
#: multiplied by :data:`MAX_QUANTITY` and summed over an invoice's lines.
MAX_AMOUNT = 10**24
#: Longest wait for a person or a partner (approval, review, delivery): one year. Fits
#: ``timedelta``, Temporal timers and the ``uint64`` escrow deadline with room to spare.
MAX_WAIT_SECONDS = 366 * 86_400
#: Longest acceptable supplier lead time.
MAX_LEAD_TIME_DAYS = 3650


def _well_formed(value: str) -> str:
    # A lone surrogate (possible from Python callers; JSON parsing refuses it) cannot be encoded
    # as UTF-8: it would fail later, in the payload, the canonical encoding or the database.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


#: Control characters other than tab, LF and CR.
_NO_CONTROL = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"


#: A string a caller writes: valid Unicode, no control characters but tab, CR and LF. Bound its
#: length where it is used: ``reason: Text = Field("", max_length=1000)``.
Text = Annotated[
    str,
    Field(pattern=_NO_CONTROL),
    AfterValidator(_well_formed),
]


#: An inventory SKU: 1 to 32 printable ASCII characters (a ``bytes32`` on chain), no space at
#: either end.
Sku = Annotated[
    str,
    Field(
        min_length=1,
        max_length=32,
        pattern=r"^[!-~]([ -~]*[!-~])?$",
        description="inventory SKU: 1 to 32 printable ASCII characters (a bytes32 on chain)",
    ),
]
#: A number of units: 1 to :data:`MAX_QUANTITY`.
Quantity = Annotated[int, Field(gt=0, le=MAX_QUANTITY)]
#: An amount in token units: 0 to :data:`MAX_AMOUNT`.
Amount = Annotated[int, Field(ge=0, le=MAX_AMOUNT, description="token units")]
#: A wait for a person or a partner, in seconds: 1 to :data:`MAX_WAIT_SECONDS`.
WaitSeconds = Annotated[int, Field(gt=0, le=MAX_WAIT_SECONDS)]


_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
_BYTES32_RE = r"^0x[0-9a-fA-F]{64}$"


def eip55(address: str) -> str:
    """The EIP-55 checksum form of a 0x-prefixed 20-byte hex address (any case accepted).

    Implemented with pycryptodome's keccak, not ``eth_utils``, whose ``eth_hash.auto`` backend
    trips Temporal's workflow sandbox.

    Raises:
        ValueError: ``address`` is not 0x followed by 40 hex digits.
    """
    if not _ADDRESS_RE.fullmatch(address):
        raise ValueError("an address is 0x followed by 40 hex digits")
    lower = address[2:].lower()
    digest = _keccak.new(data=lower.encode("ascii"), digest_bits=256).hexdigest()
    return "0x" + "".join(
        ch.upper() if ch.isalpha() and int(digest[i], 16) >= 8 else ch for i, ch in enumerate(lower)
    )


def _checked_address(value: str) -> str:
    # A single-case address carries no checksum: normalise it. A mixed-case one must match its
    # checksum, which catches a mistyped address before money moves.
    checksummed = eip55(value)
    body = value[2:]
    if body not in (body.lower(), body.upper()) and value != checksummed:
        raise ValueError("address has an invalid EIP-55 checksum")
    return checksummed


#: An EVM address, stored in its EIP-55 checksum form.
Address = Annotated[
    str,
    Field(pattern=_ADDRESS_RE.pattern, description="EVM address (0x + 40 hex, EIP-55)"),
    AfterValidator(_checked_address),
]

#: A 0x-hex 32-byte value (a hash, an order id, a run key).
Bytes32 = Annotated[str, Field(pattern=_BYTES32_RE, description="0x + 64 hex digits")]


class ErrorType(StrEnum):
    """The ``type`` of every ApplicationError ledgerflow raises (what Temporal and the UI show).

    Retry policies list members of this enum, never bare strings.
    """

    #: A contract refused a call (a decoded custom error): a business outcome, not retried.
    CONTRACT_REVERT = "ContractRevert"
    #: Settings or the deployment are unusable: retrying cannot help.
    CONFIG_ERROR = "ConfigError"
    #: JSON-RPC or transaction failure: retried.
    CHAIN_ERROR = "ChainError"
    #: The store is missing data it must have, or is unreachable: retried.
    STORE_ERROR = "StoreError"
    #: The model refused (or the offline rules found nothing): not retried.
    LLM_REFUSAL = "LLMRefusal"
    #: Malformed, truncated, off-schema or invalid answer: retried (a new answer may be fine).
    LLM_INVALID_OUTPUT = "LLMInvalidOutput"
    #: HTTP 429 from the LLM endpoint: retried after the delay it asks for.
    LLM_RATE_LIMITED = "LLMRateLimited"
    #: HTTP 401/403 from the LLM endpoint: not retried.
    LLM_AUTH_ERROR = "LLMAuthError"
    #: HTTP 408/409/5xx, connection error or timeout: retried.
    LLM_UNAVAILABLE = "LLMUnavailable"
    #: Any other HTTP 4xx from the LLM endpoint: not retried.
    LLM_REQUEST_REJECTED = "LLMRequestRejected"
    #: The worker's LLM settings are unusable: not retried.
    LLM_CONFIG_ERROR = "LLMConfigError"
    #: The checkpoint store acknowledged other step hashes than were sent.
    CHECKPOINT_MISMATCH = "CheckpointMismatch"
    #: Steps are stored but not anchored yet (the final flush retries).
    ANCHOR_PENDING = "AnchorPending"
    #: A compensation failed: the run needs a human.
    COMPENSATION_FAILED = "CompensationFailed"
    #: An enterprise API answered with a 4xx other than 408/409/429: not retried.
    HTTP_REJECTED = "HTTPRejected"
    #: An enterprise API is unreachable or answered 408/409/429/5xx: retried.
    HTTP_UNAVAILABLE = "HTTPUnavailable"
    #: An update or signal that the run does not accept now (nothing is pending, bad payload).
    UPDATE_REJECTED = "UpdateRejected"
    #: A workflow input, signal or update argument that fails its model (wrong type, out of
    #: range, unknown field, duplicate key, malformed JSON): not retried, the run fails at once.
    INVALID_INPUT = "InvalidInput"
    #: The chain lost the step's transaction and its owner said it must not be redone.
    TX_VOIDED = "TxVoided"
    #: The chain's fee is above the configured maximum (retried: the fee may fall).
    FEE_TOO_HIGH = "FeeTooHigh"
    #: No JSON-RPC endpoint answered (retried).
    RPC_UNAVAILABLE = "RPCUnavailable"
    #: The remote signer could not be reached or refused (retried).
    SIGNER_UNAVAILABLE = "SignerUnavailable"
    #: The database failed (retried unless the failure is permanent).
    STORE_UNAVAILABLE = "StoreUnavailable"
    #: An exception nothing maps (a bug, or an infrastructure error of an unknown kind): retried.
    UNEXPECTED_ERROR = "UnexpectedError"


class EscrowStatus(StrEnum):
    """Lifecycle of an escrowed order on chain: None -> Open -> Released | Refunded."""

    NONE = "None"
    OPEN = "Open"
    RELEASED = "Released"
    REFUNDED = "Refunded"

    @classmethod
    def from_code(cls, code: int) -> EscrowStatus:
        """The status of the contract's ``Status`` enum value ``code`` (unknown codes: NONE)."""
        members = list(cls)
        return members[code] if 0 <= code < len(members) else cls.NONE

    @property
    def code(self) -> int:
        """The contract's ``Status`` enum value."""
        return list(EscrowStatus).index(self)


class TxEvent(StrictModel):
    """The log that proves a transaction's effect (checkpoint spec v2, "TxResult v2")."""

    address: str
    topics: list[str]
    log_index: int


class EvolvingModel(StrictModel):
    """A model that gained fields after runs were recorded with it.

    Step inputs and outputs are hashed from their canonical encoding. A value decoded from an
    older workflow history lacks the fields added since; left unset, those fields are not
    serialized, so the value encodes (and hashes) exactly as it was recorded and the history
    replays. Fields set explicitly, ``None`` included, are serialized as usual.
    """

    #: The fields added after the model was first recorded.
    __added_fields__: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_unset_added(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and self.__added_fields__:
            for name in self.__added_fields__ - self.model_fields_set:
                data.pop(name, None)
        return data


class TxResult(EvolvingModel):
    """A state-changing chain step's output: the transaction that made the effect.

    Version 2 (checkpoint spec, section 5.5) adds ``block_hash``, ``to`` and ``event``, so a
    verifier can find the receipt and the log that prove the effect; a TxResult decoded from a
    version 1 history leaves them unset (see :class:`EvolvingModel`).
    """

    __added_fields__ = frozenset({"block_hash", "to", "event"})

    tx_hash: str
    block_number: int
    block_hash: str | None = None
    to: str | None = None
    gas_used: int
    already_done: bool = False
    event: TxEvent | None = None


class NoEffect(StrictModel):
    """A chain step that had nothing to do (a refund of an order that was never opened): no
    transaction, so not a TxResult."""

    nothing_to_do: bool = True
    reason: str
