"""The workflow side of the authoring API: a base for checkpointed workflows, typed steps, sagas
and human waits.

A workflow author writes business logic; the base owns the ledger, the ``state`` query, the search
attributes, the final flush and seal, and the saga::

    @register
    @workflow.defn(name="FastBuyWorkflow")
    class FastBuyWorkflow(CheckpointedWorkflow):
        confirm = signal_handler("confirm_delivery", DeliveryConfirmation, into="delivery")

        @workflow.run
        async def run(self, req: FastBuyRequest) -> FastBuyResult:
            async with self.checkpointed(req) as run:
                offers = await run.step(Activities.fetch_offers, SkuRequest(sku=req.sku))
                async with run.saga() as saga:
                    saga.compensate_with(Activities.refund_escrow, order)  # before the payment
                    await run.step(Activities.open_escrow, escrow)
                    await run.wait("delivery", timeout=req.deadline_seconds)
                    await run.step(Activities.release_escrow, order)
            return run.result(FastBuyResult)

Rules the base enforces so they cannot be forgotten: a compensation is registered before its
step; pending records are flushed before every wait; compensations run in reverse, each as a
checkpointed step, shielded from cancellation, after in-flight update handlers finish, and a
failing one fails the run loudly (``CompensationFailed``) after the record of what happened is
flushed; every run that ends is finished in the ledger (its final status recorded and anchored).

Outcomes: leaving the ``checkpointed`` block normally is ``completed``; ``run.stop(outcome,
reason)`` ends early with a typed outcome (after compensations, if any are registered); a
``Compensate`` or an activity failure inside a saga ends ``compensated``; a failure outside any
saga fails the run (after finishing the ledger); cancellation compensates, then cancels.

A step that a contract refused (``ContractRevert``: the transaction reverted, nothing changed)
undid nothing to undo: the compensations registered for it are dropped, and a refusal that ends
the run with nothing compensated ends it ``rejected`` with the contract's reason, not ``failed``
(checkpoint spec v2 runs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, ClassVar, Generic, Literal, TypeVar, overload

from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from ledgerflow.checkpoint.canonical import hash_obj, to_hex
from ledgerflow.checkpoint.records import StepKind
from ledgerflow.flow import search
from ledgerflow.flow.activity import StepMeta, step_meta
from ledgerflow.flow.ledger import SPEC_V2_PATCH, Ledger, failure_output
from ledgerflow.flow.steps import (
    CALL_CONTRACT,
    DECIDE,
    HTTP_REQUEST,
    READ_CONTRACT,
    Approval,
    ContractCall,
    ContractCallResult,
    ContractRead,
    ContractReadResult,
    DecisionSpec,
    HttpRequest,
    HttpResponse,
    LLMDecision,
)
from ledgerflow.types import AnchorMode, ErrorType, StrictModel

__all__ = [
    "CheckpointedWorkflow",
    "Compensate",
    "Run",
    "RunResult",
    "RunState",
    "Saga",
    "Stop",
    "ledger_details",
    "reason_of",
    "revert_of",
    "signal_handler",
    "tokens",
    "update_handler",
]

A = TypeVar("A")
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)
ResultT = TypeVar("ResultT", bound=BaseModel)


class RunState(StrictModel):
    """What the ``state`` query answers: the phase, what the run waits for, its ledger position.

    Workflows extend it with their own fields (``State = ProcurementState``).
    """

    phase: str = "starting"
    awaiting: str | None = None
    steps: int = 0
    head: str | None = None


class RunResult(StrictModel):
    """The fields every workflow result carries (``run.result(Model)`` fills them in)."""

    outcome: str
    reason: str = ""
    steps: int
    head: str
    anchor_mode: AnchorMode
    anchored: bool


class Stop(Exception):
    """End the run early with a typed outcome (registered compensations run first)."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


class Compensate(Exception):
    """A business failure after money may have moved: compensate, then end ``compensated``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _CompensationFailed(Exception):
    def __init__(self, reason: str, failure: ActivityError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failure = failure


def revert_of(err: BaseException) -> tuple[str, dict[str, str]] | None:
    """The custom error name and arguments if ``err`` is a step a contract refused
    (``ContractRevert``: the transaction reverted, so it changed nothing), else None."""
    cause: BaseException | None = err
    while isinstance(cause, ActivityError):
        cause = cause.cause
    if not isinstance(cause, ApplicationError) or cause.type != ErrorType.CONTRACT_REVERT:
        return None
    details = cause.details[0] if cause.details else {}
    if not isinstance(details, dict):
        details = {}
    args = details.get("args")
    return str(details.get("error", "")), dict(args) if isinstance(args, dict) else {}


def reason_of(err: BaseException) -> str:
    """A one-line reason for an exception that ends a run (``Type: message`` for failures)."""
    if isinstance(err, Stop | Compensate):
        return err.reason
    if isinstance(err, asyncio.CancelledError):
        return "cancelled"
    error = failure_output(err)["error"]
    return f"{error['type']}: {error['message']}"


# ---- message handlers ---------------------------------------------------------------------------


def update_handler(
    name: str,
    model: type[M],
    *,
    into: str,
    value: Callable[[M], Any] | None = None,
    reply: str | Callable[[M], str] = "accepted",
    pending_message: str | None = None,
) -> Any:
    """An Update handler (answerable from the Temporal UI) that hands its argument to a wait.

    The update is accepted only while the run waits for ``into`` and nothing answered yet (its
    validator refuses it otherwise, with a typed, non-retryable error); the value it delivers is
    ``value(arg)`` (the argument itself by default) and the update answers ``reply``.

    Use as a class attribute: ``approve = update_handler("approve", ApprovalDecision,
    into="approval", value=lambda d: (True, d), reply="approved")``.
    """
    refusal = pending_message or f"no {into} is pending for this run"

    async def handler(self: CheckpointedWorkflow, arg: Any) -> str:
        self._deliver(into, value(arg) if value is not None else arg)
        return reply(arg) if callable(reply) else reply

    def validator(self: CheckpointedWorkflow, arg: Any) -> None:
        if self.state.awaiting != into or into in self._inbox:
            raise ApplicationError(refusal, type=ErrorType.UPDATE_REJECTED, non_retryable=True)

    for fn, ret in ((handler, str), (validator, None)):
        fn.__annotations__ = {"arg": model, "return": ret}
        fn.__name__ = fn.__qualname__ = f"{name}_{fn.__name__}"
    defined = workflow.update(name=name)(handler)
    defined.validator(validator)
    return defined


def signal_handler(
    name: str, model: type[M], *, into: str, value: Callable[[M], Any] | None = None
) -> Any:
    """A Signal handler that hands its argument to a wait; the first signal wins.

    A signal may arrive before the run waits for it (a supplier confirms early): it is kept.
    """

    def handler(self: CheckpointedWorkflow, arg: Any) -> None:
        if into not in self._inbox:
            self._deliver(into, value(arg) if value is not None else arg)

    handler.__annotations__ = {"arg": model, "return": None}
    handler.__name__ = handler.__qualname__ = f"{name}_handler"
    return workflow.signal(name=name)(handler)


# ---- the base -----------------------------------------------------------------------------------


class CheckpointedWorkflow:
    """Base of every checkpointed workflow: the ledger, the ``state`` query, the inbox."""

    #: The model of the ``state`` query (a :class:`RunState` subclass).
    State: ClassVar[type[RunState]] = RunState

    def __init__(self) -> None:
        self.state: RunState = self.State()
        self._inbox: dict[str, Any] = {}
        self._run: Run | None = None

    @workflow.query(name="state")
    def query_state(self) -> RunState:
        """Where the run is: phase, what it waits for, steps checkpointed and the head."""
        if self._run is not None and self._run.ledger is not None:
            self.state.steps = self._run.ledger.steps
            self.state.head = self._run.ledger.head
        return self.state

    # ---- what the Temporal UI shows (override per workflow) -------------------------------------

    @classmethod
    def describe(cls, request: Any) -> tuple[str, str]:
        """The static summary (one line, the runs list) and details (Markdown, the run page) a
        starter sets for ``request`` (the SDK, CLI, webhooks and the watcher use this)."""
        name = cls.__temporal_workflow_definition.name  # type: ignore[attr-defined]
        return name, f"**{name}**"

    def subject(self, request: Any) -> str | None:
        """What the run is about, for the ``LedgerflowSubject`` search attribute."""
        return None

    def search_fields(self) -> dict[str, Any]:
        """Known values of ``counterparty`` (str), ``amount`` (int) and ``approver`` (str)."""
        return {}

    def current_details(self) -> str:
        """Markdown the run page shows as its current details (phase, waits, ledger)."""
        return _default_details(self)

    def refresh_details(self) -> None:
        """Show :meth:`current_details` in the UI now (not a command: free for replay)."""
        try:
            text = self.current_details()
        except Exception as exc:  # a bug in a details renderer must never fail the run
            text = f"(details unavailable: {type(exc).__name__})"
        workflow.set_current_details(text[:20_000])

    def checkpointed(self, request: Any) -> Run:
        """The checkpointed region of the run (``async with self.checkpointed(req) as run``).

        ``request`` is the workflow's input; its optional ``anchor_mode`` and
        ``wait_for_anchor`` fields choose how this run is anchored.
        """
        self._run = Run(self, request)
        return self._run

    def _deliver(self, into: str, value: Any) -> None:
        self._inbox[into] = value

    def received(self, into: str) -> Any:
        """What a signal or update delivered to ``into`` (None if nothing yet)."""
        return self._inbox.get(into)


class Saga:
    """Compensations for the steps of one block, run in reverse if the block fails."""

    def __init__(self, run: Run) -> None:
        self._run = run
        # (activity, argument, step name, the seq of the step it was registered before)
        self._compensations: list[tuple[Callable[..., Any] | StepMeta, Any, str | None, int]] = []

    def compensate_with(
        self, activity: Callable[..., Any] | StepMeta, arg: Any, *, name: str | None = None
    ) -> None:
        """Register ``activity(arg)`` as the compensation of the step that follows.

        Register before the step: a step that timed out may still have succeeded.
        """
        step_meta(activity)  # fail at once (a bug) if it is not a step activity
        self._compensations.append((activity, arg, name, self._run.steps))

    def _refused(self, seq: int) -> None:
        """The step ``seq`` was refused by a contract: what was registered for it is void."""
        self._compensations = [c for c in self._compensations if c[3] != seq]

    def compensate_call(
        self,
        contract: str,
        function: str,
        args: list[Any] | tuple[Any, ...] = (),
        *,
        signer: Literal["orchestrator", "agent"] = "orchestrator",
        unless: tuple[str, ...] = (),
    ) -> None:
        """Register a contract call (``run.call``'s arguments) as the next step's compensation.

        A compensation must be idempotent: ``unless`` names the custom errors that mean there is
        nothing to undo (``EscrowNotOpen`` for a refund of an order that was never opened).
        """
        call = ContractCall(
            contract=contract,
            function=function,
            args=list(args),
            signer=signer,
            accept_reverts=list(unless),
        )
        self.compensate_with(CALL_CONTRACT, call, name=f"{contract}.{function}")

    def done(self) -> None:
        """Nothing registered so far needs undoing any more (e.g. the supplier was paid)."""
        self._compensations.clear()

    async def __aenter__(self) -> Saga:
        self._run._sagas.append(self)
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        run = self._run
        if run._sagas and run._sagas[-1] is self:
            run._sagas.pop()
        if exc is None or not self._compensations:
            self._compensations.clear()
            return False
        if run.v2:
            # Let in-flight update handlers finish before undoing (samples-python's rule).
            await workflow.wait_condition(workflow.all_handlers_finished)
        try:
            done = await asyncio.shield(asyncio.ensure_future(self._compensate()))
        except ActivityError as failure:
            raise _CompensationFailed(reason_of(exc), failure) from failure
        run.compensated.extend(done)
        return False

    async def _compensate(self) -> list[str]:
        run = self._run
        run.workflow.state.phase = "compensating"
        done: list[str] = []
        for activity, arg, name, _seq in reversed(self._compensations):
            meta = step_meta(activity)
            await run.step(activity, arg, name=name, kind="compensation")
            done.append(name or meta.name)
        self._compensations.clear()
        return done


class Run(Generic[ResultT]):
    """The checkpointed region of one run: steps, sagas, waits, and how the run ended."""

    def __init__(self, workflow_: CheckpointedWorkflow, request: Any) -> None:
        self.workflow = workflow_
        self.request = request
        self.ledger: Ledger | None = None
        #: Outcome and reason of the run (``completed`` unless a stop, failure or saga says else).
        self.outcome = "completed"
        self.reason = ""
        #: Fields for the result model (``run.result(Model)`` fills them in).
        self.fields: dict[str, Any] = {}
        #: Names of the compensations that ran, in the order they ran.
        self.compensated: list[str] = []
        self.v2 = False
        #: Set when the run has ended (its outcome is final).
        self.finished = False
        self._sagas: list[Saga] = []

    # -- the region --

    async def __aenter__(self) -> Run[ResultT]:
        mode = getattr(self.request, "anchor_mode", None)
        wait = getattr(self.request, "wait_for_anchor", None) is not False
        # New runs are recorded under checkpoint spec v2; runs that started before it replay as
        # version 1 (their histories hold no marker for this patch).
        self.v2 = workflow.patched(SPEC_V2_PATCH)
        self.ledger = Ledger(mode, wait_for_anchor=wait, spec=2 if self.v2 else 1)
        if self.v2:
            await self.ledger.open()
            subject = self.workflow.subject(self.request)
            workflow.upsert_search_attributes(
                [
                    search.STATUS.value_set("running"),
                    search.ANCHOR_MODE.value_set(self.ledger.mode),
                    *([search.SUBJECT.value_set(subject[:256])] if subject else []),
                ]
            )
        self.workflow.refresh_details()
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        ledger = self._ledger
        state = self.workflow.state
        self.finished = True
        if exc is None:
            pass
        elif isinstance(exc, Stop):
            self.outcome, self.reason = exc.outcome, exc.reason
        elif isinstance(exc, _CompensationFailed):
            self.outcome, self.reason = "compensation-failed", exc.reason
            await ledger.finish(
                "compensation-failed",
                reason=f"{exc.reason}; then {reason_of(exc.failure)}",
                search=self._final_search("compensation-failed"),
            )
            self.workflow.refresh_details()
            raise ApplicationError(
                f"compensation failed after {exc.reason}: {reason_of(exc.failure)}; needs a human",
                type=ErrorType.COMPENSATION_FAILED,
                non_retryable=True,
            ) from exc.failure
        elif isinstance(exc, asyncio.CancelledError):
            self.outcome, self.reason = "cancelled", "cancelled"
            await ledger.finish(
                "cancelled", reason="cancelled", search=self._final_search("cancelled")
            )
            self.workflow.refresh_details()
            return False
        elif isinstance(exc, Compensate) or (isinstance(exc, ActivityError) and self.compensated):
            self.outcome, self.reason = "compensated", reason_of(exc)
        elif isinstance(exc, ActivityError) and self.v2 and revert_of(exc) is not None:
            # A contract refused and nothing had to be undone: the rulebook said no.
            self.outcome, self.reason = "rejected", reason_of(exc)
        elif isinstance(exc, ActivityError):
            # Nothing was undone because nothing needed undoing: the run failed, loudly, after
            # its record (the failed step included) is flushed and anchored.
            self.outcome, self.reason = "failed", reason_of(exc)
            await ledger.finish("failed", reason=self.reason, search=self._final_search("failed"))
            self.workflow.refresh_details()
            return False
        else:
            return False  # a bug in workflow code: Temporal retries the task, visibly
        state.phase = self.outcome
        state.awaiting = None
        await ledger.finish(
            self.outcome, reason=self.reason, search=self._final_search(self.outcome)
        )
        self.workflow.refresh_details()
        return True

    def _known_search(self) -> list[Any]:
        fields = self.workflow.search_fields()
        out: list[Any] = []
        if fields.get("counterparty"):
            out.append(search.COUNTERPARTY.value_set(str(fields["counterparty"])))
        if isinstance(fields.get("amount"), int) and 0 <= fields["amount"] < 2**63:
            out.append(search.AMOUNT.value_set(fields["amount"]))
        if fields.get("approver"):
            out.append(search.APPROVER.value_set(str(fields["approver"])[:256]))
        return out

    def _final_search(self, outcome: str) -> list[Any]:
        """Version 2 runs also say their outcome and what they were about, at the end."""
        if not self.v2:
            return []
        return [search.OUTCOME.value_set(outcome), *self._known_search()]

    @property
    def steps(self) -> int:
        """Steps recorded so far (the seq of the next step)."""
        return self._ledger.seq

    @property
    def last_step_hash(self) -> str:
        """The step hash of the last step recorded: what a payment names as the decision that
        made it (``Escrow.open``'s ``decisionHash``), and what a step proof proves."""
        digest = self._ledger.last_step_hash
        if digest is None:
            raise RuntimeError("no step has been recorded yet")
        return digest

    @property
    def decision_hash(self) -> str:
        """The step hash of the run's latest LLM decision (a step of kind ``llm``): what a
        payment names as the decision that made it (``Escrow.open``'s ``decisionHash``), so a
        third party can go from the payment on chain to the anchored step."""
        digest = self._ledger.last_decision_hash
        if digest is None:
            raise RuntimeError("no LLM decision has been recorded yet")
        return digest

    @property
    def _ledger(self) -> Ledger:
        if self.ledger is None:
            raise RuntimeError("use the run inside `async with self.checkpointed(request)`")
        return self.ledger

    def result(self, model: type[ResultT], **fields: Any) -> ResultT:
        """The run's result: ``model`` filled with the outcome, the ledger and ``fields``."""
        ledger = self._ledger
        values: dict[str, Any] = {
            "outcome": self.outcome,
            "reason": self.reason,
            **self.fields,
            **fields,
            "steps": ledger.steps,
            "head": ledger.head,
            "anchor_mode": ledger.mode,
            "anchored": ledger.anchored,
        }
        if "compensations" in model.model_fields and self.compensated:
            values.setdefault("compensations", list(self.compensated))
        return model(**{k: v for k, v in values.items() if k in model.model_fields})

    def stop(self, outcome: str, reason: str) -> Stop:
        """``raise run.stop("rejected", "no offers")``: end early with a typed outcome."""
        return Stop(outcome, reason)

    def saga(self) -> Saga:
        """A block whose registered compensations run in reverse if it fails."""
        return Saga(self)

    # -- steps --

    @overload
    async def step(
        self,
        activity: StepMeta,
        arg: Any,
        *,
        name: str | None = None,
        kind: StepKind | None = None,
    ) -> Any: ...

    @overload
    async def step(
        self,
        activity: Callable[[A], Awaitable[R]],
        arg: A,
        *,
        name: str | None = None,
        kind: StepKind | None = None,
    ) -> R: ...

    @overload
    async def step(
        self,
        activity: Callable[[Any, A], Awaitable[R]],
        arg: A,
        *,
        name: str | None = None,
        kind: StepKind | None = None,
    ) -> R: ...

    async def step(
        self,
        activity: Callable[..., Awaitable[Any]] | StepMeta,
        arg: Any,
        *,
        name: str | None = None,
        kind: StepKind | None = None,
    ) -> Any:
        """Run ``activity(arg)`` as one checkpointed step; its kind, name, timeouts and retries
        come from its ``@step_activity`` declaration.

        A failure is recorded as a failed step (its error type and message are the output) and
        re-raised as the activity's ``ActivityError``.
        """
        meta = step_meta(activity)
        policy = meta.policy
        if getattr(arg, "idempotency_key", "") is None:
            arg = arg.model_copy(update={"idempotency_key": self.idempotency_key()})

        async def call() -> Any:
            if policy.local:
                return await workflow.execute_local_activity(
                    meta.name,
                    arg,
                    result_type=meta.result_type,
                    start_to_close_timeout=policy.start_to_close,
                    retry_policy=policy.retry,
                )
            return await workflow.execute_activity(
                meta.name,
                arg,
                result_type=meta.result_type,
                start_to_close_timeout=policy.start_to_close,
                heartbeat_timeout=policy.heartbeat,
                retry_policy=policy.retry,
                summary=meta.summary,
            )

        seq = self._ledger.seq
        try:
            return await self._ledger.step(kind or meta.kind, name or meta.name, arg, call)
        except ActivityError as err:
            if self.v2 and self._sagas and revert_of(err) is not None:
                self._sagas[-1]._refused(seq)
            raise
        finally:
            self.workflow.refresh_details()

    def record(
        self, kind: StepKind, name: str, input: Any, output: Any, *, ok: bool = True
    ) -> None:
        """Record a step that is not an activity (a signal, an update, a timer, a verdict)."""
        self._ledger.record(kind, name, input, output, ok=ok)

    async def flush(self) -> None:
        """Hand the records so far to the store (and, per step, to the chain) now."""
        await self._ledger.flush()

    # -- waiting for the outside world --

    async def wait_for(
        self, what: str, ready: Callable[[], bool], *, timeout: timedelta | float
    ) -> bool:
        """Flush, then wait until ``ready()`` or the timeout; returns False on timeout.

        While waiting, the ``state`` query says ``awaiting: what``.
        """
        state = self.workflow.state
        state.awaiting = what
        await self._ledger.flush()  # anchor what happened so far before waiting on the world
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        if self.v2:
            # The runs list can filter on what a run waits for (awaiting-approval, ...).
            workflow.upsert_search_attributes(
                [search.STATUS.value_set(f"awaiting-{what}"), *self._known_search()]
            )
        self.workflow.refresh_details()
        try:
            await workflow.wait_condition(
                ready,
                timeout=timedelta(seconds=seconds),
                timeout_summary=f"{what}: gives up after {_duration(seconds)}",
            )
            return True
        except TimeoutError:
            return False
        finally:
            state.awaiting = None
            if self.v2:
                workflow.upsert_search_attributes([search.STATUS.value_set("running")])
            self.workflow.refresh_details()

    async def wait(
        self,
        what: str,
        *,
        timeout: timedelta | float,
        kind: StepKind = "signal",
        timeout_error: str | None = None,
        timeout_message: str | None = None,
        timeout_input: Any = None,
    ) -> Any:
        """Wait for a signal or update delivered to ``what`` (see :func:`signal_handler`,
        :func:`update_handler`), recording what happened as a step.

        Arrival is recorded as ``<what>.received`` (input ``{}``, output the value); a timeout as
        the failed timer step ``<what>.timeout`` whose output is ``{"error": {"type":
        timeout_error, "message": timeout_message}}``; then ``None`` is returned.
        """
        arrived = await self.wait_for(
            what, lambda: self.workflow.received(what) is not None, timeout=timeout
        )
        if not arrived:
            seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
            self.record(
                "timer",
                f"{what}.timeout",
                timeout_input if timeout_input is not None else {"timeout_seconds": int(seconds)},
                {
                    "error": {
                        "type": timeout_error or f"{what.title().replace('-', '')}Timeout",
                        "message": timeout_message or f"no {what} before the timeout",
                    }
                },
                ok=False,
            )
            return None
        value = self.workflow.received(what)
        self.record(kind, f"{what}.received", {}, value)
        return value

    async def approval(
        self, what: str = "approval", *, timeout: timedelta | float
    ) -> Approval | None:
        """Wait for an :class:`Approval` delivered to ``what`` by an Update handler (e.g.
        ``approve = update_handler("approve", Approval, into="approval")``).

        Records ``<what>.approved`` or ``<what>.rejected`` (an ``update`` step: input the
        approval, output ``{"approved": ...}``), or the failed timer step ``<what>.timeout``;
        returns the approval, or ``None`` after the timeout.
        """
        answered = await self.wait_for(
            what, lambda: self.workflow.received(what) is not None, timeout=timeout
        )
        if not answered:
            seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
            self.record(
                "timer",
                f"{what}.timeout",
                {"timeout_seconds": int(seconds)},
                {"error": {"type": "ApprovalTimeout", "message": f"no {what} before the timeout"}},
                ok=False,
            )
            return None
        decision: Approval = self.workflow.received(what)
        verdict = "approved" if decision.approved else "rejected"
        self.record("update", f"{what}.{verdict}", decision, {"approved": decision.approved})
        return decision

    # -- generic steps --

    def key(self, purpose: str) -> str:
        """A 0x-hex 32-byte id unique to this execution chain and ``purpose`` (an order id)."""
        info = workflow.info()
        return to_hex(
            hash_obj(
                {
                    "purpose": purpose,
                    "workflow_id": info.workflow_id,
                    "first_run_id": info.first_execution_run_id,
                }
            )
        )

    def idempotency_key(self) -> str:
        """The idempotency key of the next step: ``<workflow id>/<run id>/<seq>``.

        The same step of the same run gets the same key on every attempt and after a crash, so
        the contract call or HTTP request behind it takes effect once.
        """
        info = workflow.info()
        return f"{info.workflow_id}/{info.run_id}/{self._ledger.seq}"

    async def decide(
        self,
        model: type[M],
        *,
        instructions: str,
        data: Any,
        offline: M | None = None,
        name: str | None = None,
    ) -> M:
        """An LLM decision into ``model`` (a StrictModel): strict JSON schema, refusals and
        truncation handled, re-validated in the worker and again here before it is used.

        ``data`` is untrusted (it reaches the model inside a JSON data block, never among the
        instructions); ``offline`` is the answer the offline rules give (without it the offline
        provider refuses). The step output records the answer, the model, prompt and response
        hashes and token usage.
        """
        spec = DecisionSpec(
            model=f"{model.__module__}:{model.__qualname__}",
            schema_name=model.__name__[:64],
            instructions=instructions,
            data=to_jsonable_python(data),
            offline_answer=offline.model_dump(mode="json") if offline is not None else None,
        )
        result: LLMDecision = await self.step(
            DECIDE, spec, name=name or f"llm.decide.{model.__name__}"
        )
        return model.model_validate(result.answer)

    async def call(
        self,
        contract: str,
        function: str,
        args: list[Any] | tuple[Any, ...] = (),
        *,
        signer: Literal["orchestrator", "agent"] = "orchestrator",
        value: int = 0,
        name: str | None = None,
    ) -> ContractCallResult:
        """Call ``function`` of the deployment's ``contract`` in a transaction, exactly once (the
        signer's outbox and an idempotency key from the run and the step); a revert is a
        non-retryable ``ContractRevert`` with the decoded custom error."""
        call = ContractCall(
            contract=contract, function=function, args=list(args), signer=signer, value=value
        )
        result: ContractCallResult = await self.step(
            CALL_CONTRACT, call, name=name or f"{contract}.{function}"
        )
        return result

    async def read(
        self, contract: str, function: str, args: list[Any] | tuple[Any, ...] = ()
    ) -> ContractReadResult:
        """Read ``function`` of the deployment's ``contract`` (``eth_call``) as a step."""
        read = ContractRead(contract=contract, function=function, args=list(args))
        result: ContractReadResult = await self.step(
            READ_CONTRACT, read, name=f"{contract}.{function}"
        )
        return result

    async def http(self, request: HttpRequest, *, name: str | None = None) -> HttpResponse:
        """An HTTP request to an enterprise API with an ``Idempotency-Key`` header; the response
        body is hashed into the step output."""
        result: HttpResponse = await self.step(HTTP_REQUEST, request, name=name)
        return result


# ---- details ------------------------------------------------------------------------------------


def tokens(units: int | None, *, symbol: str = "tUSD", decimals: int = 6) -> str:
    """Token units in human form: ``2_160_000_000`` -> ``2,160.00 tUSD``."""
    if units is None:
        return "?"
    whole, frac = divmod(abs(units), 10**decimals)
    cents = frac * 100 // 10**decimals
    return f"{'-' if units < 0 else ''}{whole:,}.{cents:02d} {symbol}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _short(value: str, keep: int = 10) -> str:
    return value if len(value) <= 2 * keep + 1 else f"{value[:keep]}…{value[-6:]}"


def ledger_details(run: Run | None) -> list[str]:
    """Markdown lines about a run's ledger: steps, head, anchoring, anchors."""
    if run is None or run.ledger is None:
        return []
    ledger = run.ledger
    lines = [
        f"- **Ledger**: {ledger.steps} step(s) checkpointed (spec v{ledger.spec}, "
        f"{ledger.mode}), head `{_short(ledger.head)}`"
    ]
    if ledger.anchors:
        shown = ", ".join(
            f"tx `{_short(a.tx_hash)}` (block {a.block_number}"
            + (f", root `{_short(a.root)}`" if a.root else f", step {a.step}")
            + ")"
            for a in ledger.anchors[-4:]
        )
        lines.append(f"- **Anchored**: {shown}")
    elif ledger.steps:
        lines.append("- **Anchored**: not yet (anchoring is pending)")
    return lines


def _default_details(wf: CheckpointedWorkflow) -> str:
    state = wf.state
    run = wf._run
    head = [f"**Phase**: {state.phase}"]
    if state.awaiting:
        head.append(f"**Waiting for**: {state.awaiting}")
    if run is not None and run.finished:
        head.append(f"**Outcome**: {run.outcome}" + (f": {run.reason}" if run.reason else ""))
    return "\n\n".join(head) + "\n\n" + "\n".join(ledger_details(run))
