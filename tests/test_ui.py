"""The Temporal UI in a real browser (Debian's Chromium via Playwright, no browser download):
fill the Start Workflow form with README's JSON, start a ProcurementWorkflow, and check that the
run completes and verifies."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
from temporalio.service import RPCError

from tests.conftest import Stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
README_INPUT = {"sku": "WIDGET-42", "quantity": 25, "simulate_delivery_after_seconds": 2}

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `make test` installs Debian's chromium package")
        pytest.skip("chromium is not installed (make test installs it where apt-get works)")
    return CHROMIUM


async def _wait_started(stack: Stack, wf_id: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    handle = stack.client.temporal.get_workflow_handle(wf_id)
    while loop.time() < deadline:
        try:
            await handle.describe()
            return
        except RPCError:
            await asyncio.sleep(0.2)
    raise AssertionError(f"the Start Workflow form did not start {wf_id}")


async def test_start_workflow_form_starts_a_run_that_verifies(
    stack: Stack, chromium: str, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    ui = os.environ["LEDGERFLOW_TEST_UI_URL"]
    wf_id = f"ui-{uuid.uuid4().hex[:10]}"
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            await page.goto(f"{ui}/namespaces/default/workflows/start-workflow")
            await page.fill("#workflowId", wf_id)
            await page.fill("#taskQueue", stack.settings.task_queue)
            await page.fill("#workflowType", "ProcurementWorkflow")
            editor = page.locator('.cm-content[aria-label="Data"]')
            await editor.click()
            # insert_text types the payload as one input event (no bracket auto-closing); the
            # editor keeps its state only from real input events, not from a DOM fill.
            await page.keyboard.insert_text(json.dumps(README_INPUT))
            await page.locator("#workflowType").click()
            # Wait for the form to settle (the UI checks the task queue's pollers), then start.
            await page.get_by_text("Task Queue is Active").wait_for(timeout=30_000)
            start = page.get_by_test_id("start-workflow-button")
            await start.click()
            await _wait_started(stack, wf_id)
            await page.screenshot(path=str(tmp_path / "started.png"))
        finally:
            await browser.close()

    result = (await stack.client.result(wf_id)).model_dump(mode="json")
    assert result["outcome"] == "completed"
    assert result["quantity"] == 25
    report = await stack.client.verify(wf_id)
    assert report.ok, report.problems
