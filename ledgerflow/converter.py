"""ledgerflow's Temporal data converter: pydantic's, plus strict, typed decoding of what callers
send (workflow inputs, signal and update arguments).

Why here and not in the workflow. Temporal decodes a workflow's arguments before any workflow
code runs (``_WorkflowInstanceImpl._make_workflow_input``). If decoding raises an ordinary
exception, the SDK wraps it in ``RuntimeError("Failed decoding arguments")``: a *workflow task*
failure, which the server retries forever, so a run started from the Temporal UI, ``temporal
workflow start`` or another SDK with a wrong type or an out-of-range value never ends. If
decoding raises a Temporal failure (``ApplicationError``), the SDK fails the *workflow* instead
(the activation's error path checks ``workflow_is_failure_exception``). So the converter raises
``ApplicationError(type="InvalidInput", non_retryable=True)`` whose message names the model, the
field and the rule, and the run fails at once, before its first step: nothing paid, nothing
recorded, no ``compensated`` outcome. The other candidates were worse: listing
``pydantic.ValidationError`` in ``workflow_failure_exception_types`` would also fail runs for a
validation error raised anywhere in workflow code, and an untyped ``dict`` input validated by the
base class would lose the typed signature that the Temporal UI, the SDK and the OpenAPI document
are built from.

Which values. Models configured ``strict=True`` (:class:`ledgerflow.types.StrictInput` and its
kin): the payload is first read by :func:`ledgerflow.jsonsafe.loads` (size and depth limits,
duplicate keys refused), then validated strictly (``"10"``, ``true``, ``10.0`` and ``1e1`` are
not integers). Everything else (activity results, queries, internal models) decodes as
pydantic's converter does. The same failure reaches an update whose argument is invalid (the
update is rejected with it) and a signal (the SDK drops it and logs the error).

Existing runs whose input was accepted before these rules and fails them now would fail on
replay; runs started through ledgerflow (CLI, SDK, webhooks) were always serialized from a
validated model and are unaffected.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import (
    PydanticJSONPlainPayloadConverter,
    PydanticPayloadConverter,
)
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
)
from temporalio.exceptions import ApplicationError

from ledgerflow.jsonsafe import UnsafeJSON, loads
from ledgerflow.types import ErrorType

__all__ = [
    "MAX_INPUT_BYTES",
    "MAX_INPUT_DEPTH",
    "LedgerflowPayloadConverter",
    "data_converter",
    "invalid_input",
    "is_strict_model",
    "validation_message",
]

#: The largest JSON document accepted as a workflow input or message argument (Temporal's own
#: default limit for one payload is 2 MB).
MAX_INPUT_BYTES = 2 * 1024 * 1024
#: The deepest nesting accepted in one.
MAX_INPUT_DEPTH = 32


def is_strict_model(hint: Any) -> bool:
    """Whether ``hint`` is a pydantic model that callers fill (configured ``strict=True``)."""
    return (
        isinstance(hint, type)
        and issubclass(hint, BaseModel)
        and hint.model_config.get("strict") is True
    )


def validation_message(exc: ValidationError, *, limit: int = 8) -> str:
    """``field: rule; field: rule`` for the first ``limit`` errors, without the input values."""
    errors = exc.errors(include_input=False, include_url=False)
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or '(input)'}: {e['msg']}" for e in errors[:limit]
    ]
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)


def invalid_input(model: type[BaseModel], detail: str) -> ApplicationError:
    """The typed, non-retryable failure of an input that ``model`` refuses."""
    return ApplicationError(
        f"invalid {model.__name__}: {detail}", type=ErrorType.INVALID_INPUT, non_retryable=True
    )


class _JSONConverter(PydanticJSONPlainPayloadConverter):
    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        if not is_strict_model(type_hint):
            return super().from_payload(payload, type_hint)
        assert type_hint is not None and issubclass(type_hint, BaseModel)
        try:
            loads(payload.data, max_bytes=MAX_INPUT_BYTES, max_depth=MAX_INPUT_DEPTH, what="input")
            return type_hint.model_validate_json(payload.data)
        except UnsafeJSON as exc:
            raise invalid_input(type_hint, str(exc)) from None
        except ValidationError as exc:
            raise invalid_input(type_hint, validation_message(exc)) from None


class LedgerflowPayloadConverter(PydanticPayloadConverter):
    """Pydantic's payload converter whose JSON converter decodes strict models strictly and
    raises a typed, non-retryable ``InvalidInput`` for a value they refuse."""

    def __init__(self) -> None:
        super().__init__()
        json_converter = _JSONConverter()
        CompositePayloadConverter.__init__(
            self,
            *(
                json_converter if isinstance(c, JSONPlainPayloadConverter) else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            ),
        )


#: The data converter of every ledgerflow client and worker.
data_converter = DataConverter(payload_converter_class=LedgerflowPayloadConverter)
