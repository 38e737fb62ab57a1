"""LLM providers: any OpenAI-compatible endpoint through the ``openai`` SDK, or offline rules.

Every LLM decision in ledgerflow goes through :func:`structured`: the caller gives the chat
messages, the pydantic model the answer must fill (``extra="forbid"``, so a strict JSON schema can
be derived from it) and the offline answer to use when the worker runs without an LLM.

* :class:`OpenAIProvider`: the SDK is built with ``max_retries=0`` (Temporal owns retries, so
  every attempt is visible in history), the response format is the model's strict JSON schema,
  refusals and truncation raise typed errors, and the answer is re-validated with pydantic.
* :class:`OfflineProvider`: deterministic rules, clearly labelled (``provider="offline"``,
  ``offline=True``). It is not an LLM and never says it is.

Untrusted text (offer descriptions, invoices, content) reaches a model only inside a JSON data
block of the user message (:func:`data_block`), never among the instructions; whatever a model
answers is re-validated before anything uses it. No exception or log line carries the API key.

The endpoint itself is untrusted too: the SDK parses the HTTP body with the standard library's
JSON parser, which a deeply nested body can crash (a segfault, see :mod:`ledgerflow.jsonsafe`).
So the SDK's HTTP client goes through :class:`_GuardedTransport`, which reads the body with a
size limit, asks for and accepts only an uncompressed body (no decompression bomb), and refuses
one that is too deep or names a key twice, as ``LLMInvalidOutput``, before the SDK sees it. The
model's answer is read the same way (a duplicate key would let ``{"quantity": 10, "quantity":
416}`` mean 416). The step records the model ledgerflow asked for; the name the endpoint reports
is kept apart (``reported_model``), so an endpoint cannot pass itself off as another model.

This module does no I/O at import time and does not import ``openai`` until an
:class:`OpenAIProvider` is built.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast, runtime_checkable

from pydantic import BaseModel, Field, SecretStr, ValidationError

from ledgerflow import jsonsafe
from ledgerflow.checkpoint.canonical import canonical_bytes, hash_obj, keccak, to_hex
from ledgerflow.errors import ConfigError, LLMError, LLMInvalidOutput, LLMRefusal
from ledgerflow.types import EvolvingModel, StrictModel

if TYPE_CHECKING:
    from openai import AsyncOpenAI

    from ledgerflow.settings import Settings

M = TypeVar("M", bound=BaseModel)

__all__ = [
    "OFFLINE_PROVIDER",
    "DecisionMeta",
    "LLMProvider",
    "OfflineProvider",
    "OpenAIProvider",
    "TokenUsage",
    "data_block",
    "make_provider",
    "offline_meta",
    "strict_schema",
    "structured",
]

OFFLINE_PROVIDER = "offline"
#: How much of an unusable answer is quoted in an error (the rest only bloats history).
_QUOTE_CHARS = 200
#: Default cap on an LLM endpoint's HTTP body (``LEDGERFLOW_LLM_MAX_RESPONSE_BYTES``).
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
#: Deepest nesting accepted in the endpoint's body and in the model's answer.
MAX_RESPONSE_DEPTH = 64
#: Longest model name recorded as reported by the endpoint.
_MAX_MODEL_CHARS = 128


class TokenUsage(StrictModel):
    """Tokens billed for one call (zeros for the offline provider)."""

    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    total_tokens: int = Field(default=0, ge=0)


class DecisionMeta(EvolvingModel):
    """Provenance of a decision, kept in the step record.

    ``prompt_hash`` is the 0x-hex keccak-256 of the canonical encoding (LCE-1) of the prompt
    messages (for the offline provider: of the request); ``response_hash`` is the keccak-256 of the
    raw response text, UTF-8 (for the offline provider: of the canonical decision).
    ``reported_model`` was added later: left unset (an offline decision, or a value from an older
    history), it is not serialized, so earlier records hash as they were recorded.
    """

    __added_fields__ = frozenset({"reported_model"})

    provider: str
    model: str
    offline: bool
    prompt_hash: str
    response_hash: str
    usage: TokenUsage
    reported_model: str | None = Field(
        default=None,
        max_length=_MAX_MODEL_CHARS,
        description="the model name the endpoint reported (not trusted; `model` is what was "
        "asked for)",
    )


def _make_strict(node: Any) -> Any:
    """Rewrite one schema node (and its sub-schemas) for strict mode."""
    if isinstance(node, list):
        return [_make_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "default":
            continue
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            # Maps of name -> schema: the names are data, only the values are schemas.
            out[key] = {name: _make_strict(sub) for name, sub in value.items()}
        else:
            out[key] = _make_strict(value)
    if out.get("type") == "object" or "properties" in out:
        out["required"] = list(out.get("properties", {}))
        out["additionalProperties"] = False
    return out


def strict_schema(model_cls: type[BaseModel]) -> dict[str, Any]:
    """JSON schema of ``model_cls`` for structured outputs in strict mode.

    Every object lists all its properties as required and sets ``additionalProperties: false``;
    ``default`` keywords are dropped (strict mode has no optional fields).

    Args:
        model_cls: a pydantic model configured with ``extra="forbid"``, so that re-validating the
            answer with it rejects exactly what the schema rejects.

    Returns:
        A new dict, safe to mutate.

    Raises:
        TypeError: ``model_cls`` does not forbid extra fields.
    """
    if model_cls.model_config.get("extra") != "forbid":
        raise TypeError(f"{model_cls.__name__} must set extra='forbid' to have a strict schema")
    return _make_strict(copy.deepcopy(model_cls.model_json_schema()))


def data_block(payload: Any) -> str:
    """``payload`` as an indented JSON data block whose text cannot close its ``<data>`` tags."""
    text = json.dumps(payload, ensure_ascii=False, indent=1)
    # '<', '>' and '&' only occur inside JSON strings here; escaping them keeps untrusted text
    # from writing a literal "</data>" that could pose as the end of the data block.
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


@runtime_checkable
class LLMProvider(Protocol):
    """What an LLM activity asks: a label, and whether it is the offline rule engine."""

    @property
    def name(self) -> str:
        """Provider label recorded in :attr:`DecisionMeta.provider`."""
        ...

    @property
    def offline(self) -> bool:
        """True for deterministic rules (no model is asked)."""
        ...


class OfflineProvider:
    """Deterministic rules instead of a model. Not an LLM, and labelled as such.

    Each decision brings its own rules (the ``offline`` argument of :func:`structured`).
    """

    name = OFFLINE_PROVIDER
    offline = True

    def __repr__(self) -> str:
        return "OfflineProvider()"

    def redact(self, text: str) -> str:
        return text

    async def aclose(self) -> None:
        return None


def _reported_model(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    clean = "".join(ch for ch in value if ch.isprintable())
    return clean[:_MAX_MODEL_CHARS] or None


def _guarded_http_client(max_bytes: int) -> Any:
    """The SDK's default async HTTP client, with :class:`_GuardedTransport` under it."""
    import httpx2
    from openai import DefaultAsyncHttpxClient, OpenAIError

    class _RefusedBody(LLMInvalidOutput, OpenAIError):
        """A body refused before the SDK parsed it. Also an ``openai.OpenAIError``, so the SDK
        passes it through unchanged instead of wrapping it as a connection error."""

    class _GuardedTransport(httpx2.AsyncBaseTransport):
        """Reads the whole body (at most ``max_bytes``, uncompressed) and refuses over-deep
        JSON before the SDK's ``json.loads`` sees it."""

        def __init__(self) -> None:
            self._inner = httpx2.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            request.headers["Accept-Encoding"] = "identity"
            response = await self._inner.handle_async_request(request)
            try:
                encoding = response.headers.get("content-encoding", "identity").lower()
                if encoding not in ("", "identity"):
                    raise _RefusedBody(
                        f"LLM endpoint sent a {encoding!r}-encoded body; only identity is accepted"
                    )
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise _RefusedBody(f"LLM endpoint's body is larger than {max_bytes} bytes")
                body = bytearray()
                async for chunk in response.stream:  # type: ignore[union-attr]
                    body += chunk
                    if len(body) > max_bytes:
                        raise _RefusedBody(f"LLM endpoint's body is larger than {max_bytes} bytes")
            finally:
                await response.aclose()
            if "json" in response.headers.get("content-type", "").lower():
                try:
                    jsonsafe.loads(
                        bytes(body),
                        max_bytes=max_bytes,
                        max_depth=MAX_RESPONSE_DEPTH,
                        what="LLM endpoint's body",
                    )
                except jsonsafe.UnsafeJSON as exc:
                    raise _RefusedBody(str(exc)) from None
            headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
            return httpx2.Response(
                response.status_code,
                headers=headers,
                content=bytes(body),
                request=request,
                extensions=response.extensions,
            )

        async def aclose(self) -> None:
            await self._inner.aclose()

    return DefaultAsyncHttpxClient(transport=_GuardedTransport())


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "[REDACTED]") if secret else text


def _redact_obj(value: Any, secret: str) -> Any:
    if isinstance(value, str):
        return _redact(value, secret)
    if isinstance(value, dict):
        return {k: _redact_obj(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_obj(v, secret) for v in value]
    return value


def _scrub_exception(exc: BaseException, secret: str) -> None:
    """Remove ``secret`` from an SDK exception in place.

    The SDK quotes the response body in its error messages; a proxy or a misconfigured server
    may echo the Authorization header there.
    """
    if not secret:
        return
    exc.args = tuple(_redact_obj(a, secret) for a in exc.args)
    for attr in ("message", "body"):
        if hasattr(exc, attr):
            # A read-only property stores nothing to scrub.
            with contextlib.suppress(AttributeError):
                setattr(exc, attr, _redact_obj(getattr(exc, attr), secret))


def _quote(text: str) -> str:
    return repr(text[:_QUOTE_CHARS] + ("…" if len(text) > _QUOTE_CHARS else ""))


def _int_or_zero(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _usage_of(completion: Any) -> TokenUsage:
    usage = getattr(completion, "usage", None)
    return TokenUsage(
        prompt_tokens=_int_or_zero(getattr(usage, "prompt_tokens", 0)),
        completion_tokens=_int_or_zero(getattr(usage, "completion_tokens", 0)),
        total_tokens=_int_or_zero(getattr(usage, "total_tokens", 0)),
    )


def _describe_validation_error(exc: ValidationError) -> str:
    # Never the input values: they are model output, possibly large, and add nothing.
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


class OpenAIProvider:
    """Structured answers from an OpenAI-compatible chat-completions endpoint (``openai`` SDK).

    The SDK is built with ``max_retries=0``: a failed call surfaces at once (as the SDK's own
    exception: ``openai.RateLimitError``, ``openai.APIStatusError``, ``openai.APIConnectionError``)
    so that Temporal schedules, and records, every retry. Answers that cannot be used raise
    :class:`~ledgerflow.errors.LLMError`. No exception or log line carries the API key.

    Args:
        api_key: the endpoint's API key (local servers accept any non-empty value).
        base_url: endpoint, e.g. ``http://localhost:11434/v1``; ``None`` for OpenAI's default.
        model: model name sent with each request.
        timeout: seconds for the whole HTTP call.
        max_tokens: cap on generated tokens.
        max_tokens_field: request field carrying ``max_tokens``. ``None`` chooses
            ``max_completion_tokens`` for OpenAI's default endpoint (its reasoning models reject
            ``max_tokens``) and ``max_tokens`` for a custom ``base_url`` (Ollama and LM Studio
            only know that one).
        max_response_bytes: larger HTTP bodies are refused (``LLMInvalidOutput``) unread.
    """

    name = "openai"
    offline = False

    def __init__(
        self,
        api_key: str | SecretStr,
        base_url: str | None,
        model: str,
        timeout: float,
        max_tokens: int,
        *,
        max_tokens_field: Literal["max_tokens", "max_completion_tokens"] | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        from openai import AsyncOpenAI

        secret = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        if not secret:
            raise ConfigError("OpenAIProvider needs a non-empty api_key")
        self._api_key = SecretStr(secret)
        self.base_url = base_url
        self.model = model
        self.timeout = timeout
        self.max_tokens = max_tokens
        self.max_tokens_field = max_tokens_field or (
            "max_completion_tokens" if base_url is None else "max_tokens"
        )
        self.max_response_bytes = max_response_bytes
        self._client: AsyncOpenAI = AsyncOpenAI(
            api_key=secret,
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
            http_client=_guarded_http_client(max_response_bytes),
        )

    def __repr__(self) -> str:
        return f"OpenAIProvider(base_url={self.base_url!r}, model={self.model!r})"

    @staticmethod
    def response_format(
        model_cls: type[BaseModel], schema_name: str, schema: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The ``response_format`` sent for ``model_cls`` (a strict JSON schema)."""
        return {
            "type": "json_schema",
            "json_schema": {
                "name": schema_name,
                "strict": True,
                "schema": schema if schema is not None else strict_schema(model_cls),
            },
        }

    def redact(self, text: str) -> str:
        """``text`` with every occurrence of this provider's API key replaced."""
        return _redact(text, self._api_key.get_secret_value())

    async def aclose(self) -> None:
        """Close the underlying HTTP client."""
        await self._client.close()

    async def complete_structured(
        self,
        messages: list[dict[str, str]],
        model_cls: type[M],
        schema_name: str,
        *,
        schema: dict[str, Any] | None = None,
    ) -> tuple[M, DecisionMeta]:
        """One chat completion answered with ``model_cls``'s strict JSON schema.

        Every LLM decision goes through here: the SDK does not retry, the answer is re-validated
        with pydantic (strict), and the provenance (model, prompt and response hashes, usage) is
        returned with it.

        Raises:
            LLMRefusal: the model refused or a content filter stopped it.
            LLMInvalidOutput: the answer is truncated, not JSON or off-schema.
            openai.APIError: the HTTP call failed (the API key scrubbed from it).
        """
        from openai import APIError, omit

        secret = self._api_key.get_secret_value()
        prompt_hash = to_hex(keccak(canonical_bytes(messages)))
        response_format = self.response_format(model_cls, schema_name, schema)
        use_completion_field = self.max_tokens_field == "max_completion_tokens"
        try:
            completion = await self._client.chat.completions.create(
                model=self.model,
                # Plain dicts of the documented wire shape; the SDK's TypedDicts add nothing here.
                messages=cast(Any, messages),
                response_format=cast(Any, response_format),
                max_completion_tokens=self.max_tokens if use_completion_field else omit,
                max_tokens=omit if use_completion_field else self.max_tokens,
            )
        except APIError as exc:
            _scrub_exception(exc, secret)
            raise
        except json.JSONDecodeError:
            # A 200 whose Content-Type says JSON but whose body is not: the SDK's json() raises.
            raise LLMInvalidOutput("endpoint returned a body that is not valid JSON") from None
        try:
            content = self._content_of(completion)
        except LLMError as exc:
            raise type(exc)(_redact(str(exc), secret)) from None

        try:
            jsonsafe.loads(
                content,
                max_bytes=self.max_response_bytes,
                max_depth=MAX_RESPONSE_DEPTH,
                what="model answer",
            )
        except jsonsafe.UnsafeJSON as exc:
            raise LLMInvalidOutput(_redact(f"{exc}: {_quote(content)}", secret)) from None
        try:
            answer = model_cls.model_validate_json(content, strict=True)
        except ValidationError as exc:
            if any(e["type"] == "json_invalid" for e in exc.errors()):
                msg = f"model answer is not valid JSON: {_quote(content)}"
            else:
                detail = _describe_validation_error(exc)
                msg = f"model answer violates the {schema_name} schema: {detail}"
            raise LLMInvalidOutput(_redact(msg, secret)) from None

        meta = DecisionMeta(
            provider=self.name,
            model=self.model,
            reported_model=_reported_model(getattr(completion, "model", None)),
            offline=False,
            prompt_hash=prompt_hash,
            response_hash=to_hex(keccak(content.encode("utf-8"))),
            usage=_usage_of(completion),
        )
        return answer, meta

    @staticmethod
    def _content_of(completion: Any) -> str:
        """The message text of the first choice, or the reason there is none."""
        if isinstance(completion, str):
            # The SDK hands back the text of a non-JSON 200 instead of raising.
            raise LLMInvalidOutput(f"endpoint returned a non-JSON body: {_quote(completion)}")
        choices = getattr(completion, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise LLMInvalidOutput("endpoint returned a completion without choices")
        choice = choices[0]
        message = getattr(choice, "message", None)
        refusal = getattr(message, "refusal", None)
        if refusal:
            raise LLMRefusal(f"model refused: {_quote(str(refusal))}")
        finish_reason = getattr(choice, "finish_reason", None)
        if finish_reason == "length":
            raise LLMInvalidOutput("truncated: the answer hit the max_tokens limit")
        if finish_reason == "content_filter":
            raise LLMRefusal("the endpoint's content filter stopped the answer")
        content = getattr(message, "content", None)
        if not isinstance(content, str) or not content.strip():
            raise LLMInvalidOutput(
                f"model answer has no text content (finish_reason={finish_reason!r})"
            )
        return content


def offline_meta(model: str, request: BaseModel, response: BaseModel) -> DecisionMeta:
    """Provenance of an offline answer: hashes of the request and the answer, no tokens."""
    return DecisionMeta(
        provider=OFFLINE_PROVIDER,
        model=model,
        offline=True,
        prompt_hash=to_hex(hash_obj(request)),
        response_hash=to_hex(hash_obj(response)),
        usage=TokenUsage(),
    )


async def structured(
    provider: LLMProvider,
    messages: list[dict[str, str]],
    model_cls: type[M],
    schema_name: str,
    *,
    offline: Callable[[], M],
    offline_model: str,
    request: BaseModel,
) -> tuple[M, DecisionMeta]:
    """Ask ``provider`` for a ``model_cls`` answer to ``messages``; offline, apply the rules.

    Args:
        provider: the worker's provider.
        messages: the chat messages (system prompt, then the data block).
        model_cls: the answer's model; its strict JSON schema is the response format.
        schema_name: ``json_schema.name`` sent with the request.
        offline: the offline rule engine for this decision.
        offline_model: the offline rules' model label (e.g. ``offline-rules-v1``).
        request: the decision's request (what the offline provenance hashes).

    Raises:
        LLMRefusal, LLMInvalidOutput, openai.APIError: as
            :meth:`OpenAIProvider.complete_structured`.
    """
    if isinstance(provider, OpenAIProvider):
        return await provider.complete_structured(messages, model_cls, schema_name)
    answer = offline()
    return answer, offline_meta(offline_model, request, answer)


def make_provider(settings: Settings) -> LLMProvider:
    """Build the provider ``settings`` select.

    Args:
        settings: ``llm_provider`` picks ``offline`` or ``openai``; the latter uses
            ``openai_api_key``, ``openai_base_url``, ``llm_model``, ``llm_timeout_seconds`` and
            ``llm_max_tokens``.

    Returns:
        A provider ready to use (the OpenAI one holds an HTTP connection pool).

    Raises:
        ConfigError: ``openai`` is selected without an API key.
    """
    if settings.llm_provider == "offline":
        return OfflineProvider()
    if settings.openai_api_key is None or not settings.openai_api_key.get_secret_value():
        raise ConfigError(
            "llm_provider is 'openai' but no API key is set: set OPENAI_API_KEY (or "
            "LEDGERFLOW_OPENAI_API_KEY); local OpenAI-compatible servers accept any non-empty value"
        )
    return OpenAIProvider(
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,
        model=settings.llm_model,
        timeout=settings.llm_timeout_seconds,
        max_tokens=settings.llm_max_tokens,
        max_response_bytes=settings.llm_max_response_bytes,
    )
