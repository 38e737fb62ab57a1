"""A workflow the ledgerflow registry does not know (its result is a plain dict)."""

from __future__ import annotations

from typing import Any

from temporalio import workflow


@workflow.defn(name="SdkPlainDictWorkflow")
class PlainDictWorkflow:
    @workflow.run
    async def run(self, arg: dict[str, Any]) -> dict[str, Any]:
        return {"echo": arg.get("x"), "n": 3}
