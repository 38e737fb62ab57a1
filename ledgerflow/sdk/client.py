"""The Python SDK: a typed, async client for starting, steering and verifying runs."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from pydantic import BaseModel
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from ledgerflow.flow import registry
from ledgerflow.runtime import Runtime
from ledgerflow.settings import Settings, get_settings
from ledgerflow.temporal import connect
from ledgerflow.workflows.procurement import (
    ApprovalDecision,
    DeliveryConfirmation,
)

__all__ = [
    "LedgerflowClient",
    "RunStatus",
    "workflow_id_prefix",
]


_SA_STATUS = SearchAttributeKey.for_keyword("LedgerflowStatus")
_SA_MODE = SearchAttributeKey.for_keyword("LedgerflowAnchorMode")


class RunStatus(BaseModel):
    workflow_id: str
    run_id: str
    workflow_type: str
    status: str
    anchor_state: str | None = None
    steps: int | None = None
    head: str | None = None
    result: dict[str, Any] | None = None
    state: dict[str, Any] | None = None


class LedgerflowClient:
    """Async client. ``async with LedgerflowClient.connect() as lf: ...``"""

    def __init__(self, client: Client, settings: Settings, runtime: Runtime | None = None) -> None:
        self.temporal = client
        self.settings = settings
        self._runtime = runtime

    @classmethod
    async def connect(cls, settings: Settings | None = None) -> LedgerflowClient:
        settings = settings or get_settings()
        client = await connect(settings, timeout=10)
        return cls(client, settings)

    async def __aenter__(self) -> LedgerflowClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = Runtime(self.settings)
        return self._runtime

    async def start(
        self,
        workflow_type: str,
        input: BaseModel | dict[str, Any] | str,
        *,
        workflow_id: str | None = None,
        conflict_policy: WorkflowIDConflictPolicy = WorkflowIDConflictPolicy.FAIL,
        reuse_policy: WorkflowIDReusePolicy = WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    ) -> WorkflowHandle[Any, Any]:
        """Start a run. ``anchor_mode`` left empty takes the global setting."""
        arg = registry.parse_input(workflow_type, input)
        # Per-run checkpoint options left empty take the global settings, fixed at start so that
        # the run replays the same way whatever the worker's settings are later.
        defaults = {
            "anchor_mode": self.settings.anchor_mode,
            "wait_for_anchor": self.settings.wait_for_anchor,
        }
        fill = {k: v for k, v in defaults.items() if getattr(arg, k, "unset") is None}
        if fill:
            arg = arg.model_copy(update=fill)
        wf_id = workflow_id or f"{workflow_id_prefix(workflow_type)}-{uuid.uuid4().hex[:12]}"
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
                    SearchAttributePair(_SA_MODE, getattr(arg, "anchor_mode", None) or "batched"),
                ]
            ),
        )

    async def result(self, workflow_id: str, run_id: str | None = None) -> dict[str, Any]:
        handle = self.temporal.get_workflow_handle(workflow_id, run_id=run_id)
        value = await handle.result()
        return value.model_dump() if isinstance(value, BaseModel) else dict(value)

    async def status(self, workflow_id: str, run_id: str | None = None) -> RunStatus:
        handle = self.temporal.get_workflow_handle(workflow_id, run_id=run_id)
        desc = await handle.describe()
        status = desc.status.name.lower() if desc.status else "unknown"
        out = RunStatus(
            workflow_id=workflow_id,
            run_id=desc.run_id,
            workflow_type=desc.workflow_type,
            status=status,
            anchor_state=desc.typed_search_attributes.get(
                SearchAttributeKey.for_keyword("LedgerflowAnchorState")
            ),
        )
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            out.result = await self.result(workflow_id, desc.run_id)
            out.steps = out.result.get("steps")
            out.head = out.result.get("head")
        elif desc.status == WorkflowExecutionStatus.RUNNING:
            try:
                state = await handle.query("state")
                out.state = state if isinstance(state, dict) else None
                if out.state:
                    out.steps, out.head = out.state.get("steps"), out.state.get("head")
            except Exception:
                out.state = None
        try:
            run = await asyncio.to_thread(self.runtime.store.get_run, workflow_id, desc.run_id)
            pending = await asyncio.to_thread(
                self.runtime.store.unanchored_count, workflow_id, desc.run_id
            )
            out.anchor_state = "anchored" if pending == 0 and run.steps else "pending"
        except Exception:
            pass
        return out

    async def approve(self, workflow_id: str, approver: str = "operator", reason: str = "") -> str:
        handle = self.temporal.get_workflow_handle(workflow_id)
        return str(
            await handle.execute_update(
                "approve", ApprovalDecision(approver=approver, reason=reason)
            )
        )

    async def reject(self, workflow_id: str, approver: str = "operator", reason: str = "") -> str:
        handle = self.temporal.get_workflow_handle(workflow_id)
        return str(
            await handle.execute_update(
                "reject", ApprovalDecision(approver=approver, reason=reason)
            )
        )

    async def confirm_delivery(self, workflow_id: str, reference: str = "") -> None:
        handle = self.temporal.get_workflow_handle(workflow_id)
        await handle.signal("confirm_delivery", DeliveryConfirmation(reference=reference))

    async def verify(
        self, workflow_id: str, run_id: str | None = None, *, allow_unsealed_v1: bool = False
    ) -> Any:
        """Verify a run as its audit bundle (preimages, chain, seal, Temporal history while it is
        retained) against the deployments file; returns a ``VerifyReport``."""
        from ledgerflow.checkpoint.verify import verify_run

        return await verify_run(
            self.runtime,
            workflow_id,
            run_id,
            client=self.temporal,
            allow_unsealed_v1=allow_unsealed_v1,
        )

    async def export(self, workflow_id: str, run_id: str | None = None) -> dict[str, Any]:
        """The audit bundle of a run (docs/checkpoint-spec.md, section 9)."""
        import asyncio

        from ledgerflow.checkpoint.verify import export_run

        return await asyncio.to_thread(export_run, self.runtime, workflow_id, run_id)

    async def verify_bundle(
        self, bundle: dict[str, Any] | str, *, allow_unsealed_v1: bool = False
    ) -> Any:
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

        return await build_step_proof(
            self.runtime, workflow_id, step, run_id, include_preimages=include_preimages
        )

    async def verify_proof(self, document: dict[str, Any] | str) -> Any:
        """Check a proof document offline and against this client's chain, trusting only the
        registry and chain of the deployments file (``ProofCheck``)."""
        from ledgerflow.checkpoint.proofs import verify_proof_document_async
        from ledgerflow.checkpoint.verify import trust_root

        return await verify_proof_document_async(
            document, w3=self.runtime.w3, trust=trust_root(self.runtime)
        )

    async def close(self) -> None:
        """Release the chain connection (the Temporal client needs no closing)."""
        if self._runtime is not None:
            await self._runtime.aclose()

    async def list_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(self.runtime.store.list_runs, limit)
        return [r.model_dump(mode="json") for r in rows]


def workflow_id_prefix(name: str) -> str:
    """``ProcurementWorkflow`` → ``procurement``: the prefix of generated workflow ids."""
    out = []
    for i, ch in enumerate(name.removesuffix("Workflow")):
        if ch.isupper() and i:
            out.append("-")
        out.append(ch.lower())
    return "".join(out)
