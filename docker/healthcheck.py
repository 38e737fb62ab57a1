"""Container health checks used by docker-compose.yml. Exit 0 when healthy, 1 otherwise.

    python docker/healthcheck.py http URL   # GET URL answers 2xx (the API's /health)
    python docker/healthcheck.py rpc URL    # the EVM node answers eth_chainId (anvil)
    python docker/healthcheck.py worker     # a worker in this container polls the task queue

The worker check asks Temporal which workers polled the task queue (``LEDGERFLOW_TASK_QUEUE``,
connecting exactly like the worker does: ``LEDGERFLOW_TEMPORAL_ADDRESS`` or Temporal's
environment configuration, with TLS and API keys) and looks for one whose identity is ``<pid>@<this hostname>``,
the Temporal SDK's default identity, so it checks this container's worker, not another one.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import urllib.request

TIMEOUT_SECONDS = 5.0


def check_http(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as resp:
        return bool(200 <= resp.status < 300)


def check_rpc(url: str) -> bool:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as resp:
        answer = json.load(resp)
    return isinstance(answer.get("result"), str) and answer["result"].startswith("0x")


async def _worker_polls() -> bool:
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    from ledgerflow.settings import get_settings
    from ledgerflow.temporal import connect

    settings = get_settings()
    # The worker's own connection settings (envconfig, TLS, API key): see ledgerflow.temporal.
    client = await connect(settings, timeout=TIMEOUT_SECONDS / 2)
    resp = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=settings.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    suffix = f"@{socket.gethostname()}"
    return any(p.identity.endswith(suffix) for p in resp.pollers)


def check_worker() -> bool:
    return asyncio.run(asyncio.wait_for(_worker_polls(), TIMEOUT_SECONDS))


def main(argv: list[str]) -> int:
    try:
        if len(argv) == 2 and argv[0] == "http":
            ok = check_http(argv[1])
        elif len(argv) == 2 and argv[0] == "rpc":
            ok = check_rpc(argv[1])
        elif argv == ["worker"]:
            ok = check_worker()
        else:
            sys.stderr.write(__doc__ or "")
            return 2
    except Exception as exc:  # a health check reports, it never crashes
        sys.stderr.write(f"unhealthy: {type(exc).__name__}: {exc}\n")
        return 1
    if not ok:
        sys.stderr.write("unhealthy\n")
    return 0 if ok else 1


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalization: the Temporal SDK's native threads may still be running, and
    # tearing them down can abort the process after the check has already answered.
    os._exit(code)
