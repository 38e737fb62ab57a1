"""A chain of its own for tests that run a ledgerflow worker as a separate process.

The session's in-process worker signs with anvil's dev keys on the session's anvil; a second
worker process with the same keys on the same chain would race it for nonces (one signer per key
is the rule on SQLite). Tests that start ``ledgerflow worker`` as a process give it this: a fresh
anvil on a free port with the contracts deployed and the demo seeded, a deployment file, and a
store of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ledgerflow.chain.deploy import deploy_all, save_deployment, seed_demo
from ledgerflow.dev.stack import free_port, start_anvil
from ledgerflow.settings import ANVIL_DEFAULT_KEYS as DEV

__all__ = ["IsolatedChain", "clean_env", "isolated_chain"]


@dataclass(frozen=True)
class IsolatedChain:
    rpc_url: str
    deployments_file: Path
    home: Path

    def ledgerflow_env(self, *, task_queue: str | None = None) -> dict[str, str]:
        """``LEDGERFLOW_*`` for a worker or CLI on this chain (Temporal left to the caller)."""
        return {
            "LEDGERFLOW_HOME": str(self.home),
            "LEDGERFLOW_RPC_URL": self.rpc_url,
            "LEDGERFLOW_DEPLOYMENTS_FILE": str(self.deployments_file),
            "LEDGERFLOW_DATABASE_URL": f"sqlite:///{self.home}/store.db",
            "LEDGERFLOW_TASK_QUEUE": task_queue or f"isolated-{uuid.uuid4().hex[:8]}",
            "LEDGERFLOW_LLM_PROVIDER": "offline",
            "LEDGERFLOW_ANCHOR_MAX_WAIT_SECONDS": "0.2",
            "LEDGERFLOW_LOG_LEVEL": "WARNING",
            "LEDGERFLOW_LOG_FORMAT": "json",
            # Many of these run on one machine (and next to `make run`): no metrics endpoint.
            "LEDGERFLOW_METRICS_PORT": "0",
        }


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any ``LEDGERFLOW_*`` or ``TEMPORAL_*`` variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGERFLOW_", "TEMPORAL_"))}
    env.update(extra or {})
    return env


@contextmanager
def isolated_chain(directory: Path) -> Iterator[IsolatedChain]:
    """Start anvil, deploy and seed; stop anvil on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = start_anvil(port, log_path=directory / "anvil.log")
    try:
        rpc_url = f"http://127.0.0.1:{port}"
        d = deploy_all(rpc_url, DEV[0], agent_key=DEV[1], approver_key=DEV[2])
        seed_demo(rpc_url, d, DEV[0], DEV[1])
        home = directory / "home"
        home.mkdir(exist_ok=True)
        path = home / "deployments.json"
        save_deployment(path, d)
        yield IsolatedChain(rpc_url=rpc_url, deployments_file=path, home=home)
    finally:
        proc.stop()
