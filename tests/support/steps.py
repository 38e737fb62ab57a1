"""Reading a run's recorded steps in tests."""

from __future__ import annotations

import json
from typing import Any

from ledgerflow.store import StepRow, Store


def business_steps(store: Store, workflow_id: str) -> list[StepRow]:
    """The run's steps without its closing ``run.outcome`` step (checked to be there, last,
    naming the run's workflow type and final status)."""
    run = store.get_run(workflow_id)
    steps = store.get_steps(workflow_id, run.run_id)
    if run.spec_version >= 2 and run.status != "running":
        last = steps[-1]
        assert (last.kind, last.name, last.status) == ("outcome", "run.outcome", "ok"), last
        recorded: dict[str, Any] = json.loads(last.input_preimage or "{}")
        assert recorded == {"workflow_type": run.workflow_type, "status": run.status}, recorded
        return steps[:-1]
    return steps
