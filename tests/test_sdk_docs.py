"""Every Python example in docs/sdk.md runs against the real stack."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from ledgerflow.settings import get_settings
from tests.conftest import Stack

DOC = Path(__file__).resolve().parents[1] / "docs" / "sdk.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_has_examples_that_assert_their_outcome() -> None:
    assert len(EXAMPLES) >= 5
    # Each example checks what it describes (printing alone proves nothing).
    assert all("assert " in source for source in EXAMPLES)
    # ... and uses the client the way the page says (the async context manager of connect()).
    assert all("async with LedgerflowClient.connect() as lf:" in source for source in EXAMPLES)


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
async def test_example_runs(
    stack: Stack, index: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    s = stack.settings
    for name, value in {
        "LEDGERFLOW_TEMPORAL_ADDRESS": s.temporal_address,
        "LEDGERFLOW_TASK_QUEUE": s.task_queue,
        "LEDGERFLOW_RPC_URL": s.rpc_url,
        "LEDGERFLOW_DATABASE_URL": s.database_url,
        "LEDGERFLOW_DEPLOYMENTS_FILE": str(s.deployments_path),
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    source = EXAMPLES[index]
    # The examples end with asyncio.run(main()); here the test's event loop runs main() instead,
    # because the worker under test lives in this loop.
    assert source.rstrip().endswith("asyncio.run(main())")
    namespace: dict[str, Any] = {"__name__": "sdk_example"}
    exec(compile(source.rstrip().removesuffix("asyncio.run(main())"), str(DOC), "exec"), namespace)
    try:
        await namespace["main"]()
    finally:
        get_settings.cache_clear()
    assert capsys.readouterr().out.strip()
