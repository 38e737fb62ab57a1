"""Anvils of a test's own (reorgs, automine off, fee spikes and kills must not disturb the
session's chain), and the JSON-RPC calls that steer them."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account

from ledgerflow.dev.stack import ManagedProcess, find_anvil, free_port, port_in_use

__all__ = ["LocalAnvil", "fund", "rpc"]


def rpc(url: str, method: str, params: Sequence[Any] = ()) -> Any:
    """One JSON-RPC call; returns ``result`` or raises with the node's error."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    req = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = json.loads(resp.read())
    if answer.get("error"):
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer.get("result")


def fund(url: str, wei: int = 10**21) -> str:
    """A new key with ``wei`` on the chain (never a shared dev key)."""
    acct = Account.create()
    rpc(url, "anvil_setBalance", [acct.address, hex(wei)])
    return "0x" + bytes(acct.key).hex()


@dataclass
class LocalAnvil:
    """An anvil on a free port, which the test may stop, kill and restart on the same port."""

    workdir: Path
    extra_args: Sequence[str] = ()
    chain_id: int = 31337
    port: int = field(default_factory=free_port)
    proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalAnvil:
        argv = [str(find_anvil()), "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--chain-id", str(self.chain_id), "--silent", *self.extra_args]
        self.proc = ManagedProcess(
            "anvil", argv, log_path=self.workdir / f"anvil-{self.port}.log"
        ).start()
        self.proc.wait_ready(lambda: port_in_use(self.port), timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # listening is not answering yet
            try:
                rpc(self.url, "eth_chainId")
                break
            except OSError:
                time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL: no final state dump (what a crash or an OOM kill does)."""
        assert self.proc is not None and self.proc.proc is not None
        os.killpg(self.proc.proc.pid, signal.SIGKILL)
        self.proc.proc.wait(10)
        deadline = time.monotonic() + 10
        while port_in_use(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def call(self, method: str, *params: Any) -> Any:
        return rpc(self.url, method, params)

    def mine(self, blocks: int = 1) -> None:
        for _ in range(blocks):
            self.call("evm_mine")

    def block_number(self) -> int:
        return int(self.call("eth_blockNumber"), 16)

    def nonce(self, address: str, tag: str = "latest") -> int:
        return int(self.call("eth_getTransactionCount", address, tag), 16)

    def balance(self, address: str) -> int:
        return int(self.call("eth_getBalance", address, "latest"), 16)
