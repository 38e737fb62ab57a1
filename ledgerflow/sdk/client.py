"""The Python SDK: a typed, async client for starting, steering and verifying runs.

::

    async with LedgerflowClient.connect() as lf:
        handle = await lf.start("ProcurementWorkflow", {"sku": "WIDGET-42", "quantity": 5})
        result = await lf.result(handle.id)        # a ProcurementResult
        report = await lf.verify(handle.id)        # a VerifyReport

Results are the workflows' own result models (looked up in the workflow registry by the run's
workflow type; a workflow the registry does not know gives a plain dict). Every failure is a
:class:`~ledgerflow.errors.LedgerflowError`: Temporal's exceptions are mapped to the
:class:`~ledgerflow.errors.RunError` family and :class:`~ledgerflow.errors.EngineUnavailable`
(the original stays attached as ``__cause__``), store failures to
:class:`~ledgerflow.errors.StoreError` naming the store's URL. Relative paths of the settings
(state directory, store, deployment file) are resolved once, when the client is made, so a later
``chdir`` changes nothing; a client made in another directory than the store's says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import (
    ApplicationError,
    CancelledError,
    TerminatedError,
    WorkflowAlreadyStartedError,
)
from temporalio.exceptions import (
    TimeoutError as TemporalTimeoutError,
)
from temporalio.service import RPCError, RPCStatusCode

from ledgerflow.chain.approvals import ApprovalSignature, ApprovalTerms, read_key_file
from ledgerflow.checkpoint.bundle import BundleReport
from ledgerflow.checkpoint.proofs import ProofCheck
from ledgerflow.checkpoint.verify import VerifyReport
from ledgerflow.errors import (
    ConfigError,
    EngineUnavailable,
    LedgerflowError,
    RunAlreadyStarted,
    RunError,
    RunFailed,
    RunNotFound,
    StoreError,
    StoreUnavailable,
    UpdateRejected,
)
from ledgerflow.flow import registry
from ledgerflow.log import redact_url
from ledgerflow.runtime import Runtime
from ledgerflow.settings import Settings, get_settings
from ledgerflow.store import Store
from ledgerflow.temporal import connect

__all__ = [
    "Connecting",
    "LedgerflowClient",
    "RunStatus",
    "RunSummary",
    "workflow_id_prefix",
]

T = TypeVar("T")

_SA_STATUS = SearchAttributeKey.for_keyword("LedgerflowStatus")
_SA_MODE = SearchAttributeKey.for_keyword("LedgerflowAnchorMode")
_SA_ANCHOR_STATE = SearchAttributeKey.for_keyword("LedgerflowAnchorState")

#: Temporal's execution statuses, as ``RunStatus.status`` spells them.
_CLOSED = {"completed", "failed", "canceled", "terminated", "continued_as_new", "timed_out"}


class RunStatus(BaseModel):
    """Where a run is: Temporal's status, the workflow's ``state`` while it runs, its result once
    it completed, and how far its checkpoints are anchored."""

    workflow_id: str
    run_id: str
    workflow_type: str
    #: Temporal's status: running, completed, failed, canceled, terminated, timed_out, ...
    status: str
    #: The workflow's phase (from its ``state`` query while it runs; its outcome once completed).
    phase: str | None = None
    #: What a running run waits for (``approval``, ``delivery``, ...); None otherwise.
    awaiting: str | None = None
    anchor_state: str | None = None
    steps: int | None = None
    head: str | None = None
    #: The result model (a dict for a workflow the registry does not know), once completed.
    result: Any = None
    #: The ``state`` query's model, while the run is running.
    state: Any = None

    @property
    def closed(self) -> bool:
        """The run has ended (it will never wait for anything again)."""
        return self.status in _CLOSED


class RunSummary(BaseModel):
    """One checkpointed run as the store lists it."""

    workflow_id: str
    run_id: str
    workflow_type: str
    status: str
    steps: int
    head: str | None
    anchor_mode: str
    created_at: datetime
    updated_at: datetime


# ---- Temporal's exceptions -> ledgerflow's --------------------------------------------------


def _failure_status(cause: BaseException | None) -> str:
    if isinstance(cause, CancelledError):
        return "cancelled"
    if isinstance(cause, TerminatedError):
        return "terminated"
    if isinstance(cause, TemporalTimeoutError):
        return "timed_out"
    return "failed"


def _message_of(cause: BaseException | None) -> str:
    if cause is None:
        return "no detail"
    return getattr(cause, "message", None) or str(cause) or type(cause).__name__


def map_temporal_error(
    exc: BaseException, *, workflow_id: str = "", run_id: str | None = None, action: str = ""
) -> LedgerflowError | None:
    """The ledgerflow error for one of Temporal's client exceptions (None: not one of them).

    ========================== ===================================================
    Temporal                   ledgerflow
    ========================== ===================================================
    WorkflowFailureError       RunFailed (status, failure_type from the cause)
    WorkflowUpdateFailedError  UpdateRejected (failure_type from the cause)
    WorkflowAlreadyStarted     RunAlreadyStarted
    query failed or rejected   RunError
    RPCError NOT_FOUND         RunNotFound
    RPCError ALREADY_EXISTS    RunAlreadyStarted
    RPCError INVALID_ARGUMENT  RunError
    any other RPCError         EngineUnavailable (status)
    ========================== ===================================================
    """
    who = f"run {workflow_id!r}" + (f" ({run_id})" if run_id else "")
    ids: dict[str, Any] = {"workflow_id": workflow_id, "run_id": run_id}
    if isinstance(exc, WorkflowFailureError):
        cause = exc.cause
        status = _failure_status(cause)
        failure_type = cause.type if isinstance(cause, ApplicationError) else None
        detail = _message_of(cause)
        kind = f" ({failure_type})" if failure_type else ""
        return RunFailed(
            f"{who} {status.replace('_', ' ')}{kind}: {detail}",
            status=status,
            failure_type=failure_type,
            **ids,
        )
    if isinstance(exc, WorkflowUpdateFailedError):
        cause = exc.cause
        failure_type = cause.type if isinstance(cause, ApplicationError) else None
        return UpdateRejected(
            f"{who} refused the update {action or '?'}: {_message_of(cause)}",
            update=action,
            failure_type=failure_type,
            **ids,
        )
    if isinstance(exc, WorkflowAlreadyStartedError):
        return RunAlreadyStarted(
            f"workflow id {exc.workflow_id or workflow_id!r} is taken by another run "
            f"({exc.run_id or 'closed'}); choose another id or a conflict policy",
            workflow_id=exc.workflow_id or workflow_id,
            run_id=exc.run_id,
        )
    if isinstance(exc, WorkflowQueryRejectedError | WorkflowQueryFailedError):
        return RunError(f"{who} did not answer the {action or 'state'} query: {exc}", **ids)
    if isinstance(exc, RPCError):
        if exc.status == RPCStatusCode.NOT_FOUND:
            return RunNotFound(f"no {who} to {action or 'use'}: {exc.message}", **ids)
        if exc.status == RPCStatusCode.ALREADY_EXISTS:
            return RunAlreadyStarted(f"{who} exists already: {exc.message}", **ids)
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            return RunError(f"Temporal refused to {action or 'do that'}: {exc.message}", **ids)
        return EngineUnavailable(
            f"Temporal could not {action or 'answer'} for {who}: {exc.status.name}: {exc.message}",
            status=exc.status.name,
        )
    return None


@contextlib.contextmanager
def _temporal_errors(
    workflow_id: str = "", run_id: str | None = None, action: str = ""
) -> Iterator[None]:
    try:
        yield
    except LedgerflowError:
        raise
    except Exception as exc:
        mapped = map_temporal_error(exc, workflow_id=workflow_id, run_id=run_id, action=action)
        if mapped is None:
            raise
        raise mapped from exc


# ---- connecting ---------------------------------------------------------------------------------


class Connecting(Awaitable["LedgerflowClient"]):
    """What :meth:`LedgerflowClient.connect` returns: await it for a client, or use it as an
    async context manager (``async with LedgerflowClient.connect() as lf:``), which closes the
    client at the end."""

    def __init__(self, factory: Callable[[], Awaitable[LedgerflowClient]]) -> None:
        self._factory = factory
        self._client: LedgerflowClient | None = None

    def __await__(self) -> Generator[Any, None, LedgerflowClient]:
        return self._factory().__await__()

    async def __aenter__(self) -> LedgerflowClient:
        self._client = await self._factory()
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()


def resolve_paths(settings: Settings) -> Settings:
    """``settings`` with its relative paths made absolute against the current directory."""
    update: dict[str, Any] = {}
    if not settings.home.is_absolute():
        update["home"] = settings.home.resolve()
    if settings.deployments_file is not None and not settings.deployments_file.is_absolute():
        update["deployments_file"] = settings.deployments_file.resolve()
    url = settings.database_url
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        rest = url[len(prefix) :]
        path, sep, query = rest.partition("?")
        if path and path != ":memory:":
            update["database_url"] = f"{prefix}{Path(path).resolve()}{sep}{query}"
    return settings.model_copy(update=update) if update else settings


class LedgerflowClient:
    """Async client: ``async with LedgerflowClient.connect() as lf: ...``.

    Args:
        client: a connected Temporal client (with ledgerflow's data converter).
        settings: the settings to use (their relative paths are resolved now).
        runtime: the process's shared resources (store, chain); built on first use otherwise.
    """

    def __init__(self, client: Client, settings: Settings, runtime: Runtime | None = None) -> None:
        self.temporal = client
        self.settings = resolve_paths(settings)
        self._runtime = runtime

    @classmethod
    def connect(
        cls, settings: Settings | None = None, *, interceptors: list[Any] | None = None
    ) -> Connecting:
        """Connect to Temporal (the settings' address and namespace).

        Returns an object that is awaitable (``lf = await LedgerflowClient.connect()``) and an
        async context manager (``async with LedgerflowClient.connect() as lf:``).

        Raises:
            StackError: nothing answered at the address (the message names ``make run``).
        """

        async def factory() -> LedgerflowClient:
            s = settings or get_settings()
            client = await connect(s, timeout=10, interceptors=interceptors or ())
            return cls(client, s)

        return Connecting(factory)

    async def __aenter__(self) -> LedgerflowClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = Runtime(self.settings)
        return self._runtime

    # -- starting and steering --

    async def start(
        self,
        workflow_type: str,
        input: BaseModel | dict[str, Any] | str,
        *,
        workflow_id: str | None = None,
        conflict_policy: WorkflowIDConflictPolicy = WorkflowIDConflictPolicy.FAIL,
        reuse_policy: WorkflowIDReusePolicy = WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    ) -> WorkflowHandle[Any, Any]:
        """Validate ``input`` with the workflow's model and start a run.

        Per-run checkpoint options left empty (``anchor_mode``, ``wait_for_anchor``) take the
        settings, fixed at start so the run replays the same whatever the worker's settings are
        later.

        Raises:
            ConfigError: unknown workflow type, or input that fails its model (each bad field).
            RunAlreadyStarted: the workflow id is taken (under the conflict policy).
            EngineUnavailable: Temporal refused or did not answer.
        """
        arg = registry.parse_input(workflow_type, input)
        defaults = {
            "anchor_mode": self.settings.anchor_mode,
            "wait_for_anchor": self.settings.wait_for_anchor,
        }
        fill = {k: v for k, v in defaults.items() if getattr(arg, k, "unset") is None}
        if fill:
            arg = arg.model_copy(update=fill)
        wf_id = workflow_id or f"{workflow_id_prefix(workflow_type)}-{uuid.uuid4().hex[:12]}"
        with _temporal_errors(wf_id, action=f"start {workflow_type}"):
            return await self.temporal.start_workflow(
                workflow_type,
                arg,
                id=wf_id,
                task_queue=self.settings.task_queue,
                id_conflict_policy=conflict_policy,
                id_reuse_policy=reuse_policy,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(_SA_STATUS, "running"),
                        SearchAttributePair(
                            _SA_MODE, getattr(arg, "anchor_mode", None) or "batched"
                        ),
                    ]
                ),
            )

    async def signal(
        self, workflow_id: str, name: str, arg: BaseModel | dict[str, Any] | None = None
    ) -> None:
        """Send the signal ``name`` (its argument validated with the workflow's model).

        Raises:
            ConfigError: the workflow has no such signal, or ``arg`` fails its model.
            RunNotFound: no such run, or it has ended.
        """
        reg = await self._registration(workflow_id)
        value = _message_arg(reg, "signal", name, arg)
        with _temporal_errors(workflow_id, action=f"signal {name}"):
            await self.temporal.get_workflow_handle(workflow_id).signal(name, value)

    async def update(
        self, workflow_id: str, name: str, arg: BaseModel | dict[str, Any] | None = None
    ) -> Any:
        """Send the update ``name`` and return the run's answer.

        Raises:
            ConfigError: the workflow has no such update, or ``arg`` fails its model.
            UpdateRejected: the run refused it (``failure_type`` says why).
            RunNotFound: no such run, or it has ended.
        """
        reg = await self._registration(workflow_id)
        value = _message_arg(reg, "update", name, arg)
        with _temporal_errors(workflow_id, action=name):
            return await self.temporal.get_workflow_handle(workflow_id).execute_update(name, value)

    async def approve(
        self,
        workflow_id: str,
        approver: str = "operator",
        reason: str = "",
        *,
        key: str | None = None,
        key_file: Path | str | None = None,
        signature: ApprovalSignature | None = None,
        expires_in: int = 86_400,
    ) -> str:
        """Approve what the run waits for (its ``approve`` update); returns the run's answer.

        With ``key`` or ``key_file`` (an approver's private key, used here and never sent), the
        approval is that approver's EIP-712 signature of the terms the run shows (valid for
        ``expires_in`` seconds); ``signature`` sends one made elsewhere (a wallet, a Safe).
        Above the agent's unsigned limit only signatures approve, and the run pays once enough
        approvers have signed (the answer says ``signature 1 of 2 recorded`` until then).

        Raises:
            UpdateRejected: the run refused it (not waiting, not an approver, signed already,
                a signature that does not verify, unsigned above the unsigned limit).
            RunError: a key was given but the run shows no terms to sign.
            ConfigError: the key file is unreadable, open to others or holds no key.
        """
        if key_file is not None:
            key = read_key_file(key_file)
        if key is not None:
            signature = await self.sign_approval(workflow_id, key, expires_in=expires_in)
        return await self._decide(workflow_id, True, approver, reason, signature)

    async def approval_terms(self, workflow_id: str) -> ApprovalTerms:
        """What approvers of the run's pending payment sign (its state's ``approval``).

        Raises:
            RunError: the run is not waiting for a signed approval.
        """
        status = await self.status(workflow_id)
        terms = _field(status.state, "approval")
        if status.awaiting != "approval" or terms is None:
            raise RunError(
                f"run {workflow_id!r} is not waiting for a signed approval "
                f"({status.awaiting or status.phase or status.status})",
                workflow_id=workflow_id,
                run_id=status.run_id,
            )
        return ApprovalTerms.model_validate(terms, from_attributes=True)

    async def sign_approval(
        self, workflow_id: str, key: str, *, expires_in: int = 86_400
    ) -> ApprovalSignature:
        """Sign the run's pending payment terms with an approver's key, locally."""
        terms = await self.approval_terms(workflow_id)
        return terms.sign(key, int(time.time()) + expires_in)

    async def reject(self, workflow_id: str, approver: str = "operator", reason: str = "") -> str:
        """Reject it (the ``reject`` update, or ``approve`` with ``approved: false``)."""
        return await self._decide(workflow_id, False, approver, reason)

    async def _decide(
        self,
        workflow_id: str,
        approved: bool,
        approver: str,
        reason: str,
        signature: ApprovalSignature | None = None,
    ) -> str:
        reg = await self._registration(workflow_id)
        name = "approve" if approved or "reject" not in reg.updates else "reject"
        model = reg.updates.get(name)
        if model is None:
            raise ConfigError(f"{reg.name} takes no approval (it has no {name!r} update)")
        if signature is not None and "signature" not in model.model_fields:
            raise ConfigError(f"{reg.name} takes no signed approvals")
        fields: dict[str, Any] = {"approver": approver, "reason": reason, "approved": approved}
        if signature is not None:
            fields["signature"] = signature
        arg = model.model_validate({k: v for k, v in fields.items() if k in model.model_fields})
        if not approved and name == "approve" and "approved" not in model.model_fields:
            raise ConfigError(f"{reg.name} cannot be rejected through its approve update")
        with _temporal_errors(workflow_id, action=name):
            answer = await self.temporal.get_workflow_handle(workflow_id).execute_update(name, arg)
        return str(answer)

    async def confirm_delivery(
        self, workflow_id: str, reference: str = "", *, quantity: int | None = None
    ) -> None:
        """The supplier's delivery confirmation (the ``confirm_delivery`` signal).

        Args:
            reference: the delivery's reference (proof of delivery number).
            quantity: units delivered, when fewer than ordered (``None``: all of them).
        """
        await self.signal(
            workflow_id, "confirm_delivery", {"reference": reference, "quantity": quantity}
        )

    # -- results and status --

    async def result(self, workflow_id: str, run_id: str | None = None) -> Any:
        """Wait for the run's result: the workflow's result model (e.g. ``ProcurementResult``),
        or a dict for a workflow type the registry does not know.

        Raises:
            RunFailed: the run failed, was cancelled, terminated or timed out.
            RunNotFound: no such run.
        """
        handle = self.temporal.get_workflow_handle(workflow_id, run_id=run_id)
        with _temporal_errors(workflow_id, run_id, action="get the result of"):
            desc = await handle.describe()
            typed = self.temporal.get_workflow_handle(
                workflow_id, run_id=run_id, result_type=_result_model(desc.workflow_type)
            )
            return await typed.result()

    async def status(self, workflow_id: str, run_id: str | None = None) -> RunStatus:
        """Temporal's status, the ``state`` query (phase, awaiting, steps, head) while running,
        the result once completed, and the anchor state from the store (None when the store is
        not reachable from here).

        Raises:
            RunNotFound: no such run.
        """
        handle = self.temporal.get_workflow_handle(workflow_id, run_id=run_id)
        with _temporal_errors(workflow_id, run_id, action="describe"):
            desc = await handle.describe()
        status = desc.status.name.lower() if desc.status else "unknown"
        out = RunStatus(
            workflow_id=workflow_id,
            run_id=desc.run_id,
            workflow_type=desc.workflow_type,
            status=status,
            anchor_state=desc.typed_search_attributes.get(_SA_ANCHOR_STATE),
        )
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            out.result = await self.result(workflow_id, desc.run_id)
            out.phase = _field(out.result, "outcome")
            out.steps, out.head = _field(out.result, "steps"), _field(out.result, "head")
        elif desc.status == WorkflowExecutionStatus.RUNNING:
            state_model = _state_model(desc.workflow_type)
            try:
                with _temporal_errors(workflow_id, desc.run_id, action="state"):
                    out.state = await handle.query("state", result_type=state_model)
            except RunError:
                out.state = None  # a run between workflow tasks, or without a state query
            out.phase, out.awaiting = _field(out.state, "phase"), _field(out.state, "awaiting")
            out.steps, out.head = _field(out.state, "steps"), _field(out.state, "head")
        with contextlib.suppress(StoreError, ConfigError):
            run = await self._store(lambda st: st.get_run(workflow_id, desc.run_id))
            pending = await self._store(lambda st: st.unanchored_count(workflow_id, desc.run_id))
            out.anchor_state = "anchored" if pending == 0 and run.steps else "pending"
        return out

    async def wait_until_awaiting(
        self, workflow_id: str, what: str, *, timeout: float = 60.0, poll: float = 0.2
    ) -> RunStatus:
        """Poll the run until it waits for ``what`` (e.g. ``approval``) or has ended.

        Returns the status then: ``status.awaiting == what`` if it waits for it, otherwise the
        run has ended without ever waiting for it (``status.closed``; e.g. a purchase within
        the agent's cap completes without escalating).

        Raises:
            RunError: neither happened within ``timeout`` seconds (the run waits for something
                else, or is still working).
            RunNotFound: no such run.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = await self.status(workflow_id)
            if status.awaiting == what or status.closed:
                return status
            if loop.time() >= deadline:
                doing = f"waits for {status.awaiting}" if status.awaiting else status.phase
                raise RunError(
                    f"run {workflow_id!r} did not wait for {what} within {timeout:g} s "
                    f"(it is {status.status}: {doing or 'no phase reported'})",
                    workflow_id=workflow_id,
                    run_id=status.run_id,
                )
            await asyncio.sleep(poll)

    # -- verifying --

    async def verify(
        self, workflow_id: str, run_id: str | None = None, *, allow_unsealed_v1: bool = False
    ) -> VerifyReport:
        """Verify a run as its audit bundle (preimages, chain, seal, Temporal history while it is
        retained) against the deployments file.

        Raises:
            StoreError: the store cannot be read, or holds no such run (the message names it).
        """
        from ledgerflow.checkpoint.verify import verify_run

        self._require_store()
        return await self._guarded(
            verify_run(
                self.runtime,
                workflow_id,
                run_id,
                client=self.temporal,
                allow_unsealed_v1=allow_unsealed_v1,
            )
        )

    async def export(self, workflow_id: str, run_id: str | None = None) -> dict[str, Any]:
        """The audit bundle of a run (docs/checkpoint-spec.md, section 9).

        Raises:
            StoreError: the store cannot be read, or holds no such run (the message names it).
        """
        from ledgerflow.checkpoint.verify import export_run

        self._require_store()
        return await self._guarded(asyncio.to_thread(export_run, self.runtime, workflow_id, run_id))

    async def verify_bundle(
        self, bundle: dict[str, Any] | str, *, allow_unsealed_v1: bool = False
    ) -> BundleReport:
        """Verify an audit bundle against this client's chain and deployments file."""
        from ledgerflow.checkpoint.bundle import Web3Chain, verify_bundle
        from ledgerflow.checkpoint.verify import trust_root

        return await verify_bundle(
            bundle,
            trust_root(self.runtime),
            Web3Chain(self.runtime.w3),
            allow_unsealed_v1=allow_unsealed_v1,
        )

    async def proof(
        self,
        workflow_id: str,
        step: int,
        run_id: str | None = None,
        *,
        include_preimages: bool = False,
    ) -> dict[str, Any]:
        """The self-contained proof document of one step (see docs/checkpoint-spec.md)."""
        from ledgerflow.checkpoint.proofs import build_step_proof

        self._require_store()
        return await self._guarded(
            build_step_proof(
                self.runtime, workflow_id, step, run_id, include_preimages=include_preimages
            )
        )

    async def verify_proof(self, document: dict[str, Any] | str) -> ProofCheck:
        """Check a proof document offline and against this client's chain, trusting only the
        registry and chain of the deployments file."""
        from ledgerflow.checkpoint.proofs import verify_proof_document_async
        from ledgerflow.checkpoint.verify import trust_root

        return await verify_proof_document_async(
            document, w3=self.runtime.w3, trust=trust_root(self.runtime)
        )

    async def list_runs(self, limit: int = 20) -> list[RunSummary]:
        """The latest checkpointed runs in the store, newest first.

        Raises:
            StoreError: the store cannot be read (the message names it).
        """
        rows = await self._store(lambda st: st.list_runs(limit))
        return [RunSummary.model_validate(r, from_attributes=True) for r in rows]

    async def close(self) -> None:
        """Release the chain connection (the Temporal client needs no closing)."""
        if self._runtime is not None:
            await self._runtime.aclose()

    # -- helpers --

    async def _registration(self, workflow_id: str) -> registry.Registration:
        with _temporal_errors(workflow_id, action="describe"):
            desc = await self.temporal.get_workflow_handle(workflow_id).describe()
        for reg in registry.registrations():
            if reg.name == desc.workflow_type:
                return reg
        raise ConfigError(f"workflow type {desc.workflow_type!r} of {workflow_id!r} is not loaded")

    def _store_url(self) -> str:
        url = self._runtime.store.url if self._runtime is not None else self.settings.database_url
        return redact_url(url)

    def _require_store(self) -> None:
        """A SQLite store must exist: a reader never creates an empty one somewhere else."""
        url = self._runtime.store.url if self._runtime is not None else self.settings.database_url
        if url.startswith("sqlite:///"):
            path = url[len("sqlite:///") :].partition("?")[0]
            if path and path != ":memory:" and not Path(path).is_file():
                raise StoreError(
                    f"no ledgerflow store at {url}: run where the stack's state directory is, "
                    "or set LEDGERFLOW_HOME (or LEDGERFLOW_DATABASE_URL) to it"
                )

    async def _store(self, fn: Callable[[Store], T]) -> T:
        """``fn(store)`` in a thread; failures as StoreError naming the store."""
        self._require_store()
        store = self.runtime.store
        return await self._guarded(asyncio.to_thread(fn, store))

    async def _guarded(self, aw: Awaitable[T]) -> T:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return await aw
        except StoreError as exc:
            if self._store_url() in str(exc):
                raise
            raise type(exc)(f"{exc} (store {self._store_url()})") from exc
        except SQLAlchemyError as exc:
            # str() of a SQLAlchemy error carries SQL and parameters: the driver's type only.
            orig = getattr(exc, "orig", None)
            what = type(orig).__name__ if orig is not None else type(exc).__name__
            raise StoreUnavailable(f"the store at {self._store_url()} failed ({what})") from None


def _model(model: Any) -> type[BaseModel] | None:
    """``model`` if it is a pydantic model class, else None."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model
    return None


def _result_model(workflow_type: str) -> type[BaseModel] | None:
    for reg in registry.registrations():
        if reg.name == workflow_type:
            return _model(reg.result_model)
    return None


def _state_model(workflow_type: str) -> type[BaseModel] | None:
    for reg in registry.registrations():
        if reg.name == workflow_type:
            return _model(getattr(reg.cls, "State", None))
    return None


def _field(value: Any, name: str) -> Any:
    if isinstance(value, BaseModel):
        return getattr(value, name, None)
    if isinstance(value, dict):
        return value.get(name)
    return None


def _message_arg(
    reg: registry.Registration,
    kind: registry.SteerKind,
    name: str,
    arg: BaseModel | dict[str, Any] | None,
) -> BaseModel:
    model = reg.steering(kind).get(name)
    if model is None:
        known = ", ".join(sorted(reg.steering(kind))) or "(none)"
        raise ConfigError(f"{reg.name} has no {kind} {name!r}; known: {known}")
    if isinstance(arg, model):
        return arg
    data = arg.model_dump(mode="json") if isinstance(arg, BaseModel) else (arg or {})
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(input)'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid {kind} {name} for {reg.name}: {details}") from None


def workflow_id_prefix(name: str) -> str:
    """``ProcurementWorkflow`` → ``procurement``: the prefix of generated workflow ids."""
    out = []
    for i, ch in enumerate(name.removesuffix("Workflow")):
        if ch.isupper() and i:
            out.append("-")
        out.append(ch.lower())
    return "".join(out)
