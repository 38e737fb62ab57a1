"""The HTTP API (FastAPI): health, and webhooks that start and steer workflows.

Every webhook route is authenticated per the Standard Webhooks spec: headers ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature``; the signature is
``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}." + raw body>`` under the secret
``LEDGERFLOW_WEBHOOK_SECRET`` (``whsec_<base64>``). The raw bytes are verified before anything is
parsed. Deliveries are at least once, so the receiver deduplicates: the workflow id of a start is
derived from the ``webhook-id`` and every delivery is recorded in the store (``WebhookDelivery``),
so a replay answers the original run instead of starting a new one.

A signed delivery is bound to its target: on first use its ``webhook-id`` is recorded with the
route and the run it was sent to, refused deliveries included, and it is refused (409) on any
other route or run. The signature covers the id, the timestamp and the body but not the URL, so
without this a delivery captured on its way to one run (even one refused there because the run
had finished) could be replayed, verbatim, against another. Bodies are read with a size limit
and a read timeout, and parsed with depth limits and without duplicate keys
(:mod:`ledgerflow.jsonsafe`); every model is strict.

Routes:

- ``POST /webhooks/{workflow_type}`` starts a run (202 ``{"workflow_id", "run_id"}``);
- ``POST /webhooks/{workflow_type}/{workflow_id}/signal/{name}`` signals a running run (202);
- ``POST /webhooks/{workflow_type}/{workflow_id}/update/{name}`` updates a running run (200).

See ``docs/webhooks.md``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

import structlog
import uvicorn
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.background import BackgroundTask
from temporalio.client import WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from ledgerflow import __version__, jsonsafe
from ledgerflow.api.codec import mount_codec
from ledgerflow.api.provenance import provenance_router
from ledgerflow.converter import MAX_INPUT_DEPTH, validation_message
from ledgerflow.errors import (
    ConfigError,
    EngineUnavailable,
    RunAlreadyStarted,
    RunError,
    WebhookError,
)
from ledgerflow.flow import registry
from ledgerflow.observability import metrics, tracing
from ledgerflow.observability.telemetry import configure_runtime, metrics_address
from ledgerflow.sdk.client import LedgerflowClient, workflow_id_prefix
from ledgerflow.settings import Settings
from ledgerflow.store import Store

__all__ = [
    "TOLERANCE_SECONDS",
    "Problem",
    "SteerAccepted",
    "WebhookAccepted",
    "create_app",
    "decode_secret",
    "serve_api",
    "verify_signature",
    "webhook_workflow_id",
]

log = structlog.get_logger("ledgerflow.api")

#: Standard Webhooks: a delivery whose timestamp is further than this from now is refused.
TOLERANCE_SECONDS = 300
#: How long an update route waits for the workflow to answer before 504.
UPDATE_TIMEOUT_SECONDS = 30.0

SteerKind = Literal["signal", "update"]


def _inputs() -> dict[str, type[BaseModel]]:
    """Workflow type → its input model, for every registered public workflow."""
    return {name: r.input_model for name, r in registry.public().items()}


def _steering(workflow_type: str, kind: SteerKind) -> dict[str, type[BaseModel]]:
    """What a webhook may send to a running run of ``workflow_type``: name → body model."""
    reg = registry.public().get(workflow_type)
    return dict(reg.steering(kind)) if reg is not None else {}


_WEBHOOK_ID = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no spaces; fits the store column
_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_SECRET_PREFIX = "whsec_"


# ---- response models (documented in OpenAPI) --------------------------------------------------


class WebhookAccepted(BaseModel):
    """A start delivery was accepted: the run it started (or, for a replay, started before)."""

    workflow_id: str = Field(description="deterministic from the webhook-id")
    run_id: str


class SteerAccepted(BaseModel):
    """A signal or update delivery was accepted by a running run."""

    workflow_id: str
    run_id: str
    kind: SteerKind
    name: str
    result: str | None = Field(default=None, description="the update's answer (null for a signal)")
    duplicate: bool = Field(default=False, description="this webhook-id was delivered before")


class Problem(BaseModel):
    """Every refusal answers a JSON object with a readable ``detail``."""

    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "malformed Content-Length"},
    401: {"model": Problem, "description": "missing, malformed, stale or wrong signature"},
    404: {"model": Problem, "description": "unknown workflow type, message or run"},
    408: {"model": Problem, "description": "body not received within the read timeout"},
    409: {
        "model": Problem,
        "description": "webhook-id already used for another route or run, or the run refused it",
    },
    413: {"model": Problem, "description": "body larger than LEDGERFLOW_WEBHOOK_MAX_BODY_BYTES"},
    422: {
        "model": Problem,
        "description": "body is not JSON (or too deep, or names a key twice) or fails the model",
    },
    503: {"model": Problem, "description": "webhooks disabled, or the workflow engine is down"},
}
#: Updates can also time out waiting for the run's answer.
_UPDATE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    504: {"model": Problem, "description": "the run did not answer the update in time; retry"},
}

_SIGNATURE_HEADERS = [
    {
        "name": "webhook-id",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
        "description": "unique id of the message (1 to 255 printable ASCII characters, no "
        "space); retries of one message reuse it",
    },
    {
        "name": "webhook-timestamp",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
        "description": f"unix seconds; refused when more than {TOLERANCE_SECONDS} s off",
    },
    {
        "name": "webhook-signature",
        "in": "header",
        "required": True,
        "schema": {"type": "string"},
        "description": "space-separated `v1,<base64 HMAC-SHA256>` entries (several for rotation)",
    },
]


# ---- signature verification -------------------------------------------------------------------


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional).

    Raises:
        ConfigError: the secret is not base64 or is empty (the message never contains it).
    """
    raw = secret.strip().removeprefix(_SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            "LEDGERFLOW_WEBHOOK_SECRET is not valid: expected 'whsec_' followed by base64"
        ) from None
    if not key:
        raise ConfigError("LEDGERFLOW_WEBHOOK_SECRET is empty")
    return key


def verify_signature(
    key: bytes,
    headers: Any,
    body: bytes,
    *,
    now: float | None = None,
    tolerance: int = TOLERANCE_SECONDS,
) -> str:
    """Verify a Standard Webhooks delivery; returns its ``webhook-id``.

    ``headers`` is any mapping with case-insensitive ``get`` (Starlette's headers) or lower-case
    keys. Entries of ``webhook-signature`` with another version than ``v1`` are ignored; one
    matching ``v1`` entry suffices (key rotation).

    Raises:
        WebhookError: 401 for a missing or malformed header, a timestamp outside the tolerance
            or no matching signature.
    """
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signature = headers.get("webhook-signature")
    missing = [
        name
        for name, value in (
            ("webhook-id", msg_id),
            ("webhook-timestamp", stamp),
            ("webhook-signature", signature),
        )
        if not value
    ]
    if missing:
        raise WebhookError(401, f"missing Standard Webhooks header(s): {', '.join(missing)}")
    assert msg_id is not None and stamp is not None and signature is not None
    if not _WEBHOOK_ID.fullmatch(msg_id):
        raise WebhookError(401, "malformed webhook-id: 1 to 255 printable ASCII characters")
    if not _TIMESTAMP.fullmatch(stamp):
        raise WebhookError(401, "malformed webhook-timestamp: expected integer unix seconds")
    now = time.time() if now is None else now
    skew = int(stamp) - now
    if skew < -tolerance:
        raise WebhookError(
            401, f"webhook-timestamp is too old: outside the tolerance of ±{tolerance} s"
        )
    if skew > tolerance:
        raise WebhookError(
            401, f"webhook-timestamp is in the future: outside the tolerance of ±{tolerance} s"
        )

    entries = []
    for entry in signature.split():
        version, sep, value = entry.partition(",")
        if sep and version and value:
            entries.append((version, value))
    if not entries:
        raise WebhookError(
            401,
            "malformed webhook-signature: expected space-separated 'v1,<base64>' entries",
        )
    expected = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    matched = False
    for version, value in entries:
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, given):
            matched = True
    if not matched:
        raise WebhookError(401, "no valid v1 signature in webhook-signature")
    return msg_id


def webhook_workflow_id(workflow_type: str, webhook_id: str) -> str:
    """The workflow id a start delivery gets: the same webhook-id always gives the same id."""
    digest = hashlib.sha256(webhook_id.encode()).hexdigest()[:16]
    return f"{workflow_id_prefix(workflow_type)}-wh-{digest}"


# ---- the handlers -----------------------------------------------------------------------------


def _validation_message(what: str, exc: ValidationError) -> str:
    return f"invalid body for {what}: {validation_message(exc)}"


def _parse_json(body: bytes, limit: int) -> Any:
    try:
        return jsonsafe.loads(body, max_bytes=limit, max_depth=MAX_INPUT_DEPTH, what="body")
    except jsonsafe.UnsafeJSON as exc:
        raise WebhookError(422, str(exc)) from None


def _accepted(
    workflow_id: str, run_id: str, *, background: BackgroundTask | None = None
) -> JSONResponse:
    """The 202 of a start (a ``WebhookAccepted``), built directly rather than through FastAPI's
    response-model validation, which would only re-check these two strings."""
    return JSONResponse(
        {"workflow_id": workflow_id, "run_id": run_id}, status_code=202, background=background
    )


def _refused_status(status: int) -> str:
    """How a refusal is recorded: ``refused`` when the delivery itself was refused, ``failed``
    when ledgerflow could not act on it (a sender's retry takes it up again either way)."""
    return "refused" if 400 <= status < 500 else "failed"


def _not_found(workflow_type: str) -> WebhookError:
    known = ", ".join(sorted(_inputs())) or "(none)"
    return WebhookError(404, f"unknown workflow type {workflow_type!r}; known: {known}")


class _Webhooks:
    """State and logic behind the webhook routes."""

    def __init__(
        self, settings: Settings, client: LedgerflowClient | None, tracer: Any = None
    ) -> None:
        self.settings = settings
        self._client = client
        self._tracer = tracer
        self._lock = asyncio.Lock()
        self._store_lock = asyncio.Lock()
        self._store: Store | None = None
        self._key: bytes | None = None
        self._key_error: str | None = None
        if settings.webhook_secret is not None:
            try:
                self._key = decode_secret(settings.webhook_secret.get_secret_value())
            except ConfigError as exc:
                self._key_error = str(exc)

    # -- shared steps --

    def key(self) -> bytes:
        if self._key is not None:
            return self._key
        if self._key_error is not None:
            raise WebhookError(503, f"webhooks disabled: {self._key_error}")
        raise WebhookError(503, "webhooks disabled: set LEDGERFLOW_WEBHOOK_SECRET")

    async def read_body(self, request: Request) -> bytes:
        limit = self.settings.webhook_max_body_bytes
        too_large = WebhookError(413, f"body larger than {limit} bytes")
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise WebhookError(400, "malformed Content-Length")
            if int(declared) > limit:
                raise too_large
        body = bytearray()
        timeout = self.settings.webhook_read_timeout_seconds
        try:
            # A sender that trickles its body (slow-loris) holds a connection and a task: the
            # whole body must arrive within the timeout.
            async with asyncio.timeout(timeout):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limit:
                        raise too_large
        except TimeoutError:
            raise WebhookError(408, f"body not received within {timeout:g} s") from None
        return bytes(body)

    async def authenticate(self, request: Request) -> tuple[str, bytes]:
        key = self.key()
        body = await self.read_body(request)
        return verify_signature(key, request.headers, body), body

    async def client(self) -> LedgerflowClient:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                try:
                    client = await LedgerflowClient.connect(
                        self.settings, interceptors=tracing.client_interceptors(self._tracer)
                    )
                except Exception as exc:
                    log.warning("api.temporal_unreachable", error=type(exc).__name__)
                    raise WebhookError(
                        503, "the workflow engine is unreachable; try again later"
                    ) from None
                try:
                    await asyncio.to_thread(client.runtime.store.migrate)
                except Exception as exc:
                    log.warning("api.store_migrate_failed", error=type(exc).__name__)
                self._client = client
        return self._client

    # -- binding deliveries to their route and run --

    async def store(self) -> Store:
        """The store, without needing the workflow engine (a refusal is recorded even while
        Temporal is down)."""
        if self._client is not None:
            return self._client.runtime.store
        async with self._store_lock:
            if self._store is None:
                store = Store(self.settings.database_url)
                try:
                    await asyncio.to_thread(store.migrate)
                except Exception as exc:
                    log.warning("api.store_migrate_failed", error=type(exc).__name__)
                self._store = store
        return self._store

    async def bind(self, webhook_id: str, route: str, workflow_id: str) -> tuple[Any, bool]:
        """Bind the delivery to its route and run (``Store.delivery_bind``); 409 if the
        webhook-id was used for another route or run before."""
        store = await self.store()
        row, mine = await asyncio.to_thread(store.delivery_bind, webhook_id, route, workflow_id)
        if row.workflow_type != route or row.workflow_id != workflow_id:
            raise WebhookError(
                409, f"webhook-id {webhook_id!r} was already delivered to another route or run"
            )
        return row, mine

    async def finish(
        self,
        webhook_id: str,
        status: str,
        *,
        detail: str | None = None,
        run_id: str | None = None,
    ) -> None:
        store = await self.store()
        await asyncio.to_thread(
            store.delivery_finish, webhook_id, status, detail=detail, run_id=run_id
        )

    async def refuse_unbound(
        self, webhook_id: str, route: str, workflow_id: str, refusal: WebhookError
    ) -> None:
        """Record a delivery refused before it was bound (its body or route was refused), so
        that its webhook-id cannot be replayed to another route or run either. Best effort:
        without a store the refusal is simply answered."""
        try:
            _row, mine = await self.bind(webhook_id, route, workflow_id)
            if mine:
                await self.finish(webhook_id, _refused_status(refusal.status), detail=str(refusal))
        except WebhookError:
            return
        except Exception as exc:  # the store is down: the refusal itself still holds
            log.warning("webhook.refusal_not_recorded", error=type(exc).__name__)

    # -- POST /webhooks/{workflow_type} --

    async def start(self, request: Request, workflow_type: str) -> JSONResponse:
        webhook_id, body = await self.authenticate(request)
        model = _inputs().get(workflow_type)
        if model is None:
            raise _not_found(workflow_type)
        workflow_id = webhook_workflow_id(workflow_type, webhook_id)
        # The delivery is bound to its route and run (one store transaction, in a thread) while
        # the body is parsed and validated here: a refused body is then recorded as refused.
        binding = asyncio.ensure_future(self.bind(webhook_id, workflow_type, workflow_id))
        try:
            arg = self._start_input(workflow_type, model, webhook_id, body)
        except WebhookError as refusal:
            await self._refuse_bound(binding, webhook_id, refusal)
            raise
        except BaseException:
            await self._refuse_bound(binding, webhook_id, WebhookError(500, "internal error"))
            raise
        prior, mine = await binding
        if not mine and prior.run_id is not None:
            log.info(
                "webhook.replay",
                webhook_id=webhook_id,
                workflow_id=workflow_id,
                run_id=prior.run_id,
            )
            return _accepted(workflow_id, prior.run_id)
        try:
            client = await self.client()
        except WebhookError as exc:
            if mine:
                await self.finish(webhook_id, "failed", detail=str(exc))
            raise

        # One start call: a running run is returned (USE_EXISTING), a closed one refuses the
        # start (REJECT_DUPLICATE) and is looked up, so a replay never starts a second run. This,
        # not the store, is what deduplicates starts: the workflow id is the webhook-id's.
        try:
            handle = await client.start(
                workflow_type,
                arg,
                workflow_id=workflow_id,
                conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
            run_id = handle.result_run_id
        except RunAlreadyStarted as exc:
            run_id = exc.run_id or await self._existing_run(client, workflow_id)
        except (EngineUnavailable, RunError) as exc:
            log.warning(
                "webhook.start_failed",
                webhook_id=webhook_id,
                error=type(exc).__name__,
                status=getattr(exc, "status", None),
            )
            await self.finish(webhook_id, "failed", detail=f"start: {type(exc).__name__}")
            raise WebhookError(503, "the workflow engine refused the start; retry later") from None
        if not run_id:  # pragma: no cover - Temporal always answers a run id
            raise WebhookError(503, "the workflow engine did not return a run id; retry later")
        # The run id is recorded after the answer has been sent (the response's background task):
        # it only lets a later replay answer without asking Temporal. Should this process die
        # before it is written, the delivery stays ``pending`` and a replay starts with the same
        # workflow id, which Temporal answers with this run (see above), and records it then.
        return _accepted(
            workflow_id,
            run_id,
            background=BackgroundTask(
                self._record_run, webhook_id, workflow_type, workflow_id, run_id
            ),
        )

    def _start_input(
        self, workflow_type: str, model: type[BaseModel], webhook_id: str, body: bytes
    ) -> BaseModel:
        """The body as the workflow's input, its ``trigger`` naming the webhook."""
        data = _parse_json(body, self.settings.webhook_max_body_bytes)
        try:
            if isinstance(data, dict) and "trigger" in model.model_fields:
                if data.get("trigger") is not None:
                    # Replaced below, but a caller's trigger must be valid like the rest.
                    registry.parse_input(workflow_type, data)
                data = {**data, "trigger": f"webhook:{webhook_id}"}
            return registry.parse_input(workflow_type, data)
        except ConfigError as exc:
            raise WebhookError(422, str(exc)) from None

    async def _refuse_bound(
        self, binding: asyncio.Future[tuple[Any, bool]], webhook_id: str, refusal: WebhookError
    ) -> None:
        """Record the refusal of a delivery whose binding is under way. Best effort: a binding to
        another route or run, or a store that is down, leaves the refusal simply answered."""
        try:
            _row, mine = await binding
            if mine:
                await self.finish(webhook_id, _refused_status(refusal.status), detail=str(refusal))
        except WebhookError:
            return
        except Exception as exc:  # the store is down: the refusal itself still holds
            log.warning("webhook.refusal_not_recorded", error=type(exc).__name__)

    async def _record_run(
        self, webhook_id: str, workflow_type: str, workflow_id: str, run_id: str
    ) -> None:
        try:
            store = await self.store()
            recorded = await asyncio.to_thread(store.delivery_set_run, webhook_id, run_id)
        except Exception as exc:  # a replay asks Temporal instead; nothing is lost
            log.warning("webhook.run_not_recorded", webhook_id=webhook_id, error=type(exc).__name__)
            recorded = run_id
        log.info(
            "webhook.accepted",
            webhook_id=webhook_id,
            workflow_type=workflow_type,
            workflow_id=workflow_id,
            run_id=recorded,
        )

    @staticmethod
    async def _existing_run(client: LedgerflowClient, workflow_id: str) -> str | None:
        """The latest run of ``workflow_id`` (running or closed), or None if there is none."""
        try:
            desc = await client.temporal.get_workflow_handle(workflow_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return None
            log.warning("webhook.describe_failed", workflow_id=workflow_id, status=exc.status.name)
            raise WebhookError(503, "the workflow engine is unavailable; retry later") from None
        return desc.run_id

    # -- POST /webhooks/{workflow_type}/{workflow_id}/{signal|update}/{name} --

    async def steer(
        self, request: Request, workflow_type: str, workflow_id: str, kind: SteerKind, name: str
    ) -> SteerAccepted:
        webhook_id, body = await self.authenticate(request)
        if workflow_type not in _inputs():
            raise _not_found(workflow_type)
        route = f"{workflow_type}/{kind}/{name}"
        try:
            names = _steering(workflow_type, kind)
            model = names.get(name)
            if model is None:
                known = ", ".join(sorted(names)) or "(none)"
                raise WebhookError(404, f"{workflow_type} has no {kind} {name!r}; known: {known}")
            data = _parse_json(body, self.settings.webhook_max_body_bytes)
            try:
                arg = model.model_validate(data)
            except ValidationError as exc:
                raise WebhookError(422, _validation_message(f"{kind} {name}", exc)) from None
            if not _WEBHOOK_ID.fullmatch(workflow_id):
                raise WebhookError(404, f"no run with workflow id {workflow_id!r}")
        except WebhookError as refusal:
            if _WEBHOOK_ID.fullmatch(workflow_id):
                await self.refuse_unbound(webhook_id, route, workflow_id, refusal)
            raise

        client = await self.client()
        prior, mine = await self.bind(webhook_id, route, workflow_id)
        duplicate = not mine
        try:
            desc = await self._describe(client, workflow_type, workflow_id)
            running = desc.status == WorkflowExecutionStatus.RUNNING
            if mine and not running:
                status = desc.status.name.lower() if desc.status else "closed"
                raise WebhookError(
                    409, f"run {workflow_id!r} is {status}; it no longer accepts a {kind}"
                )
            run_id = prior.run_id or desc.run_id
            handle = client.temporal.get_workflow_handle(workflow_id, run_id=run_id)
            if kind == "signal":
                accepted = await self._signal(client, handle, webhook_id, arg, name, mine, run_id)
            else:
                accepted = await self._update(
                    client, handle, webhook_id, arg, name, mine, running, run_id
                )
        except WebhookError as refusal:
            if mine:
                await self.finish(webhook_id, _refused_status(refusal.status), detail=str(refusal))
            raise
        except BaseException:
            if mine:
                await self.finish(webhook_id, "failed", detail="internal error")
            raise
        log.info(
            f"webhook.{kind}",
            webhook_id=webhook_id,
            workflow_id=workflow_id,
            name=name,
            duplicate=duplicate,
        )
        return accepted

    async def _signal(
        self,
        client: LedgerflowClient,
        handle: Any,
        webhook_id: str,
        arg: BaseModel,
        name: str,
        mine: bool,
        run_id: str,
    ) -> SteerAccepted:
        if mine:
            try:
                await handle.signal(name, arg)
            except RPCError as exc:
                raise self._rpc_error(exc, handle.id, "signal") from None
            await self.finish(webhook_id, "accepted", run_id=run_id)
        return SteerAccepted(
            workflow_id=handle.id, run_id=run_id, kind="signal", name=name, duplicate=not mine
        )

    async def _update(
        self,
        client: LedgerflowClient,
        handle: Any,
        webhook_id: str,
        arg: BaseModel,
        name: str,
        mine: bool,
        running: bool,
        run_id: str,
    ) -> SteerAccepted:
        # Updates carry an id derived from the webhook-id: Temporal itself deduplicates them, so a
        # replay (or a concurrent duplicate) gets the first answer.
        if not mine and not running:
            return SteerAccepted(
                workflow_id=handle.id, run_id=run_id, kind="update", name=name, duplicate=True
            )
        update_id = f"webhook-{hashlib.sha256(webhook_id.encode()).hexdigest()[:32]}"
        try:
            result = await asyncio.wait_for(
                handle.execute_update(name, arg, id=update_id), UPDATE_TIMEOUT_SECONDS
            )
        except WorkflowUpdateFailedError as exc:
            cause = getattr(exc.cause, "message", None) or str(exc.cause)
            raise WebhookError(409, f"update {name} was rejected: {cause}") from None
        except RPCError as exc:
            raise self._rpc_error(exc, handle.id, "update") from None
        except TimeoutError:
            raise WebhookError(
                504,
                f"update {name} got no answer within {UPDATE_TIMEOUT_SECONDS:.0f} s "
                "(is a worker running?); retry with the same webhook-id",
            ) from None
        if mine:
            await self.finish(webhook_id, "accepted", run_id=run_id)
        return SteerAccepted(
            workflow_id=handle.id,
            run_id=run_id,
            kind="update",
            name=name,
            result=None if result is None else str(result),
            duplicate=not mine,
        )

    @staticmethod
    async def _describe(client: LedgerflowClient, workflow_type: str, workflow_id: str) -> Any:
        try:
            desc = await client.temporal.get_workflow_handle(workflow_id).describe()
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                raise WebhookError(404, f"no run with workflow id {workflow_id!r}") from None
            log.warning("webhook.describe_failed", workflow_id=workflow_id, status=exc.status.name)
            raise WebhookError(503, "the workflow engine is unavailable; retry later") from None
        if desc.workflow_type != workflow_type:
            raise WebhookError(404, f"no {workflow_type} run with workflow id {workflow_id!r}")
        return desc

    @staticmethod
    def _rpc_error(exc: RPCError, workflow_id: str, kind: str) -> WebhookError:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return WebhookError(
                409, f"run {workflow_id!r} has finished; it no longer accepts a {kind}"
            )
        log.warning("webhook.steer_failed", workflow_id=workflow_id, status=exc.status.name)
        return WebhookError(503, "the workflow engine is unavailable; retry later")


# ---- the app ----------------------------------------------------------------------------------


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "parameters": list(_SIGNATURE_HEADERS),
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        },
    }


def _documented_models() -> list[type[BaseModel]]:
    models: dict[str, type[BaseModel]] = {}
    for reg in registry.public().values():
        for model in (reg.input_model, *reg.signals.values(), *reg.updates.values()):
            models[model.__name__] = model
    return list(models.values())


_ASGIApp = Callable[..., Awaitable[None]]


def _classify(path: str) -> tuple[str, str]:
    """``(kind, workflow_type)`` of a webhook path, for metric labels and span names: the kind is
    start, signal, update or other, the type a registered public one or ``unknown`` (a label
    never carries what an unauthenticated caller wrote)."""
    parts = path.strip("/").split("/")
    workflow_type = parts[1] if len(parts) > 1 and parts[1] in _inputs() else "unknown"
    if len(parts) == 2:
        return "start", workflow_type
    if len(parts) == 5 and parts[3] in ("signal", "update"):
        return parts[3], workflow_type
    return "other", workflow_type


class _Observed:
    """ASGI middleware: per webhook delivery, one span (the parent of the Temporal calls it
    makes, so the workflow and its activities join its trace) and one observation of
    ``ledgerflow_webhooks_total`` / ``ledgerflow_webhook_latency_seconds``."""

    def __init__(self, app: _ASGIApp, tracer: Any = None) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope.get("type") == "http" else ""
        if not path.startswith("/webhooks/"):
            await self.app(scope, receive, send)
            return
        kind, workflow_type = _classify(path)
        status = 500  # unless a response starts: an exception that escapes is a 500
        answered: float | None = None  # when the response's last byte went out

        async def send_observed(message: MutableMapping[str, Any]) -> None:
            nonlocal status, answered
            kind_ = message.get("type")
            if kind_ == "http.response.start":
                status = int(message["status"])
            await send(message)
            if kind_ == "http.response.body" and not message.get("more_body", False):
                answered = time.monotonic()

        started = time.monotonic()
        span_cm = (
            self.tracer.start_as_current_span(
                f"webhook.{kind}",
                kind=_server_kind(),
                attributes={
                    "http.request.method": str(scope.get("method", "")),
                    "url.path": path,
                    "ledgerflow.workflow_type": workflow_type,
                },
            )
            if self.tracer is not None
            else contextlib.nullcontext()
        )
        with span_cm as span:
            try:
                await self.app(scope, receive, send_observed)
            finally:
                if span is not None:
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        from opentelemetry.trace import Status, StatusCode

                        span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
                # The latency the sender saw: work after the answer (recording the run id of a
                # start) is not counted.
                done = answered if answered is not None else time.monotonic()
                metrics.current().webhook(kind, workflow_type, status, done - started)


def _server_kind() -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind.SERVER


def create_app(
    settings: Settings, client: LedgerflowClient | None = None, *, tracer: Any = None
) -> FastAPI:
    """The API. ``client`` is the SDK client to use (tests); by default one is connected lazily
    on the first webhook, so the API starts even while Temporal is still coming up.

    ``tracer`` (an OpenTelemetry tracer; default: the process's, None when tracing is off) opens
    a span per webhook delivery; a lazily connected client then carries its context into
    Temporal.
    """
    jsonsafe.restore_recursion_limit()
    tracer = tracer if tracer is not None else tracing.tracer()
    app = FastAPI(
        title="ledgerflow",
        version=__version__,
        description=(
            "Start and steer ledgerflow workflows over HTTP. Every `/webhooks` route is signed "
            "per the Standard Webhooks spec (headers `webhook-id`, `webhook-timestamp`, "
            "`webhook-signature`; secret `LEDGERFLOW_WEBHOOK_SECRET`). The body is the workflow "
            "input (or the signal/update argument) as JSON. A replayed `webhook-id` answers the "
            "run it started before."
        ),
    )
    hooks = _Webhooks(settings, client, tracer)
    app.add_middleware(_Observed, tracer=tracer)

    @app.exception_handler(WebhookError)
    async def _refused(request: Request, exc: WebhookError) -> JSONResponse:
        log.info(
            "webhook.refused",
            path=request.url.path,
            status=exc.status,
            reason=str(exc),
            webhook_id=request.headers.get("webhook-id"),
        )
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def _crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("api.error", path=request.url.path, error=type(exc).__name__, exc_info=exc)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)

    app.include_router(provenance_router(settings))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "task_queue": settings.task_queue,
            "webhooks": "enabled" if settings.webhook_secret is not None else "disabled",
        }

    # One documented route per workflow type and message, then generic ones that answer 404 for
    # anything else (after authentication, so unsigned callers learn nothing).
    for workflow_type, model in _inputs().items():
        app.add_api_route(
            f"/webhooks/{workflow_type}",
            _start_route(hooks, workflow_type),
            methods=["POST"],
            status_code=202,
            response_model=WebhookAccepted,
            responses=_ERRORS,
            openapi_extra=_body_doc(model),
            summary=f"Start a {workflow_type} run",
            description=(
                f"The body is a `{model.__name__}`; its `trigger` is set to "
                "`webhook:<webhook-id>`. The workflow id is derived from the webhook-id, so "
                "retries and replays answer the same run."
            ),
            operation_id=f"start_{workflow_type}",
            tags=["webhooks"],
        )
    for workflow_type in _inputs():
        for kind in ("signal", "update"):
            for name, model in _steering(workflow_type, kind).items():
                app.add_api_route(
                    f"/webhooks/{workflow_type}/{{workflow_id}}/{kind}/{name}",
                    _steer_route(hooks, workflow_type, kind, name),
                    methods=["POST"],
                    status_code=202 if kind == "signal" else 200,
                    response_model=SteerAccepted,
                    responses=_UPDATE_ERRORS if kind == "update" else _ERRORS,
                    openapi_extra=_body_doc(model),
                    summary=f"{kind.capitalize()} `{name}` to a running {workflow_type}",
                    description=f"The body is a `{model.__name__}`.",
                    operation_id=f"{kind}_{workflow_type}_{name}",
                    tags=["webhooks"],
                )

    @app.post("/webhooks/{workflow_type}", include_in_schema=False, status_code=202)
    async def start_any(request: Request, workflow_type: str) -> JSONResponse:
        return await hooks.start(request, workflow_type)

    @app.post(
        "/webhooks/{workflow_type}/{workflow_id}/{kind}/{name}",
        include_in_schema=False,
        status_code=202,
    )
    async def steer_any(
        request: Request, workflow_type: str, workflow_id: str, kind: str, name: str
    ) -> SteerAccepted:
        await hooks.authenticate(request)
        if kind not in ("signal", "update"):
            raise WebhookError(404, f"unknown route kind {kind!r}; use signal or update")
        if workflow_type not in _inputs():
            raise _not_found(workflow_type)
        names = _steering(workflow_type, kind)  # type: ignore[arg-type]
        known = ", ".join(sorted(names)) or "(none)"
        raise WebhookError(404, f"{workflow_type} has no {kind} {name!r}; known: {known}")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in _documented_models():
                doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in doc.pop("$defs", {}).items():
                    components.setdefault(name, sub)
                components[model.__name__] = doc
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    mount_codec(app, settings)  # /codec/decode, /codec/encode: the Temporal UI's codec server
    return app


def _start_route(
    hooks: _Webhooks, workflow_type: str
) -> Callable[[Request], Awaitable[JSONResponse]]:
    async def endpoint(request: Request) -> JSONResponse:
        return await hooks.start(request, workflow_type)

    endpoint.__name__ = f"start_{workflow_type}"
    return endpoint


def _steer_route(
    hooks: _Webhooks, workflow_type: str, kind: SteerKind, name: str
) -> Callable[[Request, str], Awaitable[SteerAccepted]]:
    async def endpoint(request: Request, workflow_id: str) -> SteerAccepted:
        return await hooks.steer(request, workflow_type, workflow_id, kind, name)

    endpoint.__name__ = f"{kind}_{workflow_type}_{name}"
    return endpoint


async def serve_api(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the API until ``stop`` is set.

    The process serves its Prometheus metrics at ``http://<metrics_host>:<api_metrics_port>
    /metrics`` (ledgerflow's webhook series and the Temporal client's) and, with
    ``otlp_endpoint`` set, exports a trace per webhook.
    """
    address = metrics_address(settings.metrics_host, settings.api_metrics_port)
    configure_runtime(core_level=settings.temporal_core_log_level, metrics_address=address)
    tracer = tracing.configure_tracing(settings.otlp_endpoint, "ledgerflow-api")
    config = uvicorn.Config(
        create_app(settings, tracer=tracer),
        host=settings.api_host,
        port=settings.api_port,
        log_level="warning",
        # uvicorn's own handlers would print plain text: its loggers go through the root
        # logger's, so they are rendered like every other line (JSON lines in JSON mode).
        log_config=None,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    # The caller owns SIGINT/SIGTERM (it sets ``stop``); uvicorn must not take them over.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    try:
        await stop.wait()
        server.should_exit = True
        await task
    finally:
        tracing.shutdown()
