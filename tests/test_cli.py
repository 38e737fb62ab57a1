"""The ``ledgerflow`` command line, run as a real subprocess against the test stack."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

from ledgerflow.dev.stack import free_port
from tests.conftest import Stack


async def _cli(stack: Stack, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    s = stack.settings
    base = {
        **os.environ,
        "LEDGERFLOW_TEMPORAL_ADDRESS": s.temporal_address,
        "LEDGERFLOW_TASK_QUEUE": s.task_queue,
        "LEDGERFLOW_RPC_URL": s.rpc_url,
        "LEDGERFLOW_DATABASE_URL": s.database_url,
        "LEDGERFLOW_DEPLOYMENTS_FILE": str(s.deployments_path),
        "LEDGERFLOW_HOME": str(s.home),
        "LEDGERFLOW_LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ledgerflow.cli",
        *args,
        env={**base, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_start_wait_status_verify_and_prove_a_step(stack: Stack, tmp_path: Path) -> None:
    wf_id = f"cli-{uuid.uuid4().hex[:8]}"
    payload = {"sku": "WIDGET-42", "quantity": 4, "simulate_delivery_after_seconds": 1}
    code, out, err = await _cli(
        stack,
        "start",
        "ProcurementWorkflow",
        "--input",
        json.dumps(payload),
        "--id",
        wf_id,
        "--wait",
        "--json",
    )
    assert code == 0, err
    started = json.loads(out)
    assert started["workflow_id"] == wf_id and started["result"]["outcome"] == "completed"

    code, out, _ = await _cli(stack, "status", wf_id, "--json")
    status = json.loads(out)
    assert code == 0 and status["status"] == "completed" and status["anchor_state"] == "anchored"

    code, out, err = await _cli(stack, "verify", wf_id, "--json", "--allow-unsealed-v1")
    report = json.loads(out)
    assert code == 0, err
    assert report["ok"] is True and report["first_bad_step"] is None
    assert {"workflow_id", "run_id", "steps", "head", "anchors"} <= report.keys()
    assert report["head"] == started["result"]["head"]

    proof_file = tmp_path / "step2.json"
    code, _, err = await _cli(stack, "proof", wf_id, "--step", "2", "--out", str(proof_file))
    assert code == 0, err
    doc = json.loads(proof_file.read_text())
    assert doc["step"]["seq"] == 2 and doc["step"]["name"] == "llm.choose_supplier"
    code, out, err = await _cli(stack, "verify-proof", str(proof_file), "--json")
    assert code == 0, (out, err)
    assert json.loads(out)["ok"] is True

    doc["step"]["name"] = "llm.something_else"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    code, out, _ = await _cli(stack, "verify-proof", str(forged), "--json")
    assert code == 1 and json.loads(out)["ok"] is False


async def test_invalid_input_is_a_clear_error(stack: Stack) -> None:
    code, _, err = await _cli(
        stack, "start", "ProcurementWorkflow", "--input", '{"quantity": -3, "colour": "red"}'
    )
    assert code == 2
    assert "quantity" in err and "colour" in err and "Traceback" not in err
    code, _, err = await _cli(stack, "start", "NoSuchWorkflow")
    assert code == 2 and "unknown workflow type" in err


async def test_stack_not_up_says_what_to_run(stack: Stack) -> None:
    dead = f"127.0.0.1:{free_port()}"
    code, _, err = await _cli(
        stack, "status", "anything", env={"LEDGERFLOW_TEMPORAL_ADDRESS": dead}
    )
    assert code == 2 and "make run" in err and "Traceback" not in err
