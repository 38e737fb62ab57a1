"""What the worker's activities share: settings, the store, the chain connection and signers.

Built once per process from settings; nothing here runs at import time.
"""

from __future__ import annotations

import asyncio
from functools import cached_property
from typing import Any, cast

from eth_typing import ChecksumAddress
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.contract import AsyncContract

from ledgerflow.chain.artifacts import load_artifact
from ledgerflow.chain.signer import Signer
from ledgerflow.errors import ConfigError
from ledgerflow.settings import DEV_CHAIN_ID, Settings
from ledgerflow.store import Store

__all__ = ["AnchorEvents", "Runtime"]

#: Which dev key plays which role when none is configured on a local dev chain.
_DEV_KEY_INDEX = {"orchestrator": 0, "agent": 1, "approver": 2}


class AnchorEvents:
    """Wakes everyone waiting for an anchoring in this process (the anchorer notifies)."""

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def wait(self) -> asyncio.Future[None]:
        """A future that completes at the next :meth:`notify` (take it before checking)."""
        if self._future is None or self._future.done():
            self._future = asyncio.get_running_loop().create_future()
        return asyncio.shield(self._future)

    def notify(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)
        self._future = None


class Runtime:
    """Shared, lazily-connected resources of one process."""

    def __init__(self, settings: Settings, *, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.database_url)
        self._signers: dict[str, Signer] = {}
        self._signer_lock = asyncio.Lock()
        self._deployment: Any = None
        self.anchor_events = AnchorEvents()

    @cached_property
    def w3(self) -> AsyncWeb3:
        return AsyncWeb3(AsyncHTTPProvider(self.settings.rpc_url, request_kwargs={"timeout": 30}))

    async def aclose(self) -> None:
        """Close the JSON-RPC session (if one was opened)."""
        if "w3" in self.__dict__:
            await self.w3.provider.disconnect()  # type: ignore[attr-defined]

    @property
    def deployment(self) -> Any:
        """The contracts' addresses, from ``.ledgerflow/deployments.json`` (read once).

        Raises:
            ConfigError: no deployment file (run ``ledgerflow deploy``).
        """
        if self._deployment is None:
            from ledgerflow.chain.deploy import load_deployment

            path = self.settings.deployments_path
            if not path.exists():
                raise ConfigError(
                    f"no deployment file at {path}; run `ledgerflow deploy` (or `make run`)"
                )
            self._deployment = load_deployment(path)
        return self._deployment

    def address(self, name: str) -> str:
        if name == "CheckpointRegistry" and self.settings.registry_address:
            return self.settings.registry_address
        try:
            return str(self.deployment.contracts[name])
        except KeyError:
            raise ConfigError(f"contract {name} is not in the deployment file") from None

    def contract(self, name: str) -> AsyncContract:
        address = cast(ChecksumAddress, self.address(name))
        return self.w3.eth.contract(address=address, abi=load_artifact(name).abi)

    @property
    def chain_id(self) -> int:
        return int(self.deployment.chain_id)

    def key_for(self, role: str) -> str:
        """The private key for a role; dev keys only on the local dev chain.

        Raises:
            ConfigError: no key is configured for the role on a non-dev chain.
        """
        configured = {
            "orchestrator": self.settings.orchestrator_key,
            "agent": self.settings.agent_key,
            "approver": self.settings.approver_key,
        }[role]
        if configured is not None:
            return configured.get_secret_value()
        if self.chain_id == DEV_CHAIN_ID:
            return self.settings.dev_key(_DEV_KEY_INDEX[role])
        raise ConfigError(f"no key configured for the {role} (set LEDGERFLOW_{role.upper()}_KEY)")

    async def signer(self, role: str) -> Signer:
        """The process's one signer for ``role`` (orchestrator, agent or approver)."""
        key = self.key_for(role)
        async with self._signer_lock:
            for existing in self._signers.values():
                if existing.owns(key):
                    self._signers.setdefault(role, existing)
            if role not in self._signers:
                self._signers[role] = Signer(
                    self.w3,
                    key,
                    self.store,
                    self.chain_id,
                    confirmations=self.settings.confirmations,
                    timeout=self.settings.tx_timeout_seconds,
                )
            return self._signers[role]

    def active_signers(self) -> dict[str, Signer]:
        """The signers built so far, by role (a role that sent nothing yet has none)."""
        return dict(self._signers)
