"""Generic steps a workflow calls without writing an activity: an LLM decision into any pydantic
schema, a call to any function of any deployed contract, an HTTP request to an enterprise API.

This module holds their models and their step declarations (name, kind, policy); the activities
that do the I/O are in :mod:`ledgerflow.activities.steps`, and :class:`ledgerflow.flow.Run` has the
typed helpers (``run.decide``, ``run.call``, ``run.read``, ``run.http``, ``run.approval``). Each is
checkpointed like every other step.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ledgerflow.flow import policies
from ledgerflow.flow.activity import StepMeta
from ledgerflow.llm.provider import DecisionMeta
from ledgerflow.types import NoEffect, StrictInput, StrictModel, Text, TxResult

__all__ = [
    "CALL_CONTRACT",
    "DECIDE",
    "HTTP_REQUEST",
    "MAX_HTTP_BODY_BYTES",
    "READ_CONTRACT",
    "Approval",
    "ContractCall",
    "ContractCallResult",
    "ContractRead",
    "ContractReadResult",
    "DecisionSpec",
    "HttpRequest",
    "HttpResponse",
    "LLMDecision",
]

#: The largest response body an HTTP step keeps (hash and size are always recorded).
MAX_HTTP_BODY_BYTES = 64 * 1024
_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


class DecisionSpec(StrictModel):
    """Argument of ``llm.decide``: the instructions, the untrusted data and the answer's model."""

    model: str = Field(
        max_length=300,
        description="import path `module:Class` of the answer's StrictModel (loaded in the worker)",
    )
    schema_name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    instructions: str = Field(max_length=8000, description="what to decide (trusted)")
    data: Any = Field(description="the material to decide on: untrusted, never instructions")
    offline_answer: dict[str, Any] | None = Field(
        None, description="the answer the offline rules give (null: the offline provider refuses)"
    )


class LLMDecision(StrictModel):
    """Result of ``llm.decide``: the validated answer (as JSON) and its provenance."""

    answer: dict[str, Any]
    meta: DecisionMeta


class ContractCall(StrictModel):
    """Argument of ``contract.call``: one state-changing call through the signer's outbox."""

    contract: str = Field(pattern=_NAME, description="a contract of the deployment, e.g. Escrow")
    function: str = Field(pattern=_NAME)
    args: list[Any] = Field(default_factory=list, max_length=32)
    signer: Literal["orchestrator", "agent"] = "orchestrator"
    value: int = Field(0, ge=0, lt=2**256)
    idempotency_key: str | None = Field(
        None, max_length=200, description="filled by run.call from the run and the step"
    )
    accept_reverts: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="custom errors that mean 'nothing to do' (e.g. a refund of an order that "
        "was never opened): the result is a NoEffect naming the error, nothing is raised",
    )


class ContractRead(StrictModel):
    """Argument of ``contract.read``: one ``eth_call`` (a view function)."""

    contract: str = Field(pattern=_NAME)
    function: str = Field(pattern=_NAME)
    args: list[Any] = Field(default_factory=list, max_length=32)


class ContractReadResult(StrictModel):
    """Result of ``contract.read``: the return value as JSON (bytes as 0x-hex, ints as ints)."""

    value: Any
    block_number: int


class HttpRequest(StrictModel):
    """Argument of ``http.request``: one request to an enterprise API (the RPA replacement for
    "click through the ERP"), with an ``Idempotency-Key`` header."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str = Field(max_length=2048, pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict, max_length=32)
    json_body: Any = None
    credential: str | None = Field(
        None,
        pattern=_NAME,
        description="name of a credential configured in the worker (never the secret itself)",
    )
    timeout_seconds: int = Field(30, ge=1, le=120)
    idempotency_key: str | None = Field(None, max_length=200, description="filled by run.http")


class HttpResponse(StrictModel):
    """Result of ``http.request``: status, a few safe headers, the body's hash and its JSON."""

    status: int
    headers: dict[str, str] = Field(default_factory=dict)
    body_hash: str = Field(description="keccak256 of the raw body bytes (0x-hex)")
    body_bytes: int
    json_body: Any = None


class Approval(StrictInput):
    """A human's answer to a generic approval (Update handed to ``run.approval``)."""

    approved: bool = True
    approver: Text = Field("operator", min_length=1, max_length=128)
    reason: Text = Field("", max_length=1000)


#: Step declarations shared by the workflow helpers and the activities.
DECIDE = StepMeta("llm.decide", "llm", policies.LLM, "decide (LLM)", None, LLMDecision)
#: A contract call's output: the transaction (checkpoint spec v2 TxResult), or, for a revert the
#: caller accepted as "nothing to do", a NoEffect naming it.
ContractCallResult = TxResult | NoEffect
CALL_CONTRACT = StepMeta(
    "contract.call", "chain", policies.CHAIN_TX, "call a contract", None, ContractCallResult
)
READ_CONTRACT = StepMeta(
    "contract.read", "chain", policies.CHAIN_READ, "read a contract", None, ContractReadResult
)
HTTP_REQUEST = StepMeta(
    "http.request", "activity", policies.HTTP, "call an enterprise API", None, HttpResponse
)
