"""What the worker's activities share: settings, the store, the chain connection and signers.

Built once per process from settings; nothing here runs at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from functools import cached_property
from typing import Any, cast

import structlog
from eth_typing import ChecksumAddress
from web3 import AsyncWeb3
from web3.contract import AsyncContract

from ledgerflow.chain.artifacts import load_artifact
from ledgerflow.chain.fees import FeePolicy
from ledgerflow.chain.keys import LocalKey, RemoteSigner, TxSigner
from ledgerflow.chain.rpc import connect_async
from ledgerflow.chain.signer import LostDecision, LostTxPolicy, Signer
from ledgerflow.errors import ConfigError
from ledgerflow.settings import DEV_CHAIN_ID, Settings
from ledgerflow.store import OutboxTx, Store
from ledgerflow.store.lease import Lease

__all__ = ["AnchorEvents", "Runtime"]

log = structlog.get_logger(__name__)

#: Which dev key plays which role when none is configured on a local dev chain.
_DEV_KEY_INDEX = {"orchestrator": 0, "agent": 1, "approver": 2}
ROLES = tuple(_DEV_KEY_INDEX)
#: The lease that keeps a SQLite store to one worker.
SQLITE_WORKER_LEASE = "worker:sqlite"


def _activity_heartbeat() -> None:
    """Heartbeat the current Temporal activity, if the caller runs in one."""
    from temporalio import activity

    if activity.in_activity():
        activity.heartbeat()


class AnchorEvents:
    """Wakes those waiting for an anchoring in this process (the anchorer notifies).

    A waiter names its run (``wait((workflow_id, run_id))``) and is woken only when a batch
    holding that run's steps or seal is confirmed, so a confirmation costs one wake-up per run
    in it, not one per waiting run. ``wait()`` without a run is woken by every confirmation.
    """

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None
        self._runs: dict[tuple[str, str], asyncio.Future[None]] = {}

    def wait(self, run: tuple[str, str] | None = None) -> asyncio.Future[None]:
        """A future that completes at the next :meth:`notify` naming ``run`` (or any, without
        one). Take it before checking, and :meth:`forget` the run when done waiting."""
        if run is not None:
            fut = self._runs.get(run)
            if fut is None or fut.done():
                fut = self._runs[run] = asyncio.get_running_loop().create_future()
            return asyncio.shield(fut)
        if self._future is None or self._future.done():
            self._future = asyncio.get_running_loop().create_future()
        return asyncio.shield(self._future)

    def forget(self, run: tuple[str, str]) -> None:
        self._runs.pop(run, None)

    def notify(self, runs: Iterable[tuple[str, str]] | None = None) -> None:
        """Wake the waiters of ``runs`` (every waiter when None) and all unnamed waiters."""
        if self._future is not None and not self._future.done():
            self._future.set_result(None)
        self._future = None
        if runs is None:
            woken = list(self._runs.values())
            self._runs.clear()
        else:
            woken = [f for r in runs if (f := self._runs.pop(r, None)) is not None]
        for fut in woken:
            if not fut.done():
                fut.set_result(None)


class Runtime:
    """Shared, lazily-connected resources of one process."""

    def __init__(self, settings: Settings, *, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.database_url)
        self._signers: dict[str, Signer] = {}
        self._signer_lock = asyncio.Lock()
        self._deployment: Any = None
        self.anchor_events = AnchorEvents()
        self._contracts: dict[tuple[str, str], AsyncContract] = {}
        #: Owners of idempotency keys, by the key's prefix before ``:`` (``escrow.open``): asked
        #: what to do when the chain loses one of their transactions (see :meth:`own_keys`).
        self.lost_tx_owners: dict[str, LostTxPolicy] = {}
        self._worker_lease: Lease | None = None

    @cached_property
    def w3(self) -> AsyncWeb3:
        """The chain, through every configured endpoint with failover (LEDGERFLOW_RPC_URLS).

        Each endpoint's chain id is checked against the deployment's before first use.
        """
        chain_id: int | None = None
        with contextlib.suppress(ConfigError, OSError, ValueError):
            chain_id = self.chain_id
        return connect_async(
            self.settings.rpc_endpoints,
            timeout=self.settings.rpc_timeout_seconds,
            cooldown=self.settings.rpc_cooldown_seconds,
            chain_id=chain_id,
        )

    async def aclose(self) -> None:
        """Close the JSON-RPC sessions and remote signers (if any were opened)."""
        for signer in {id(s): s for s in self._signers.values()}.values():
            if isinstance(signer.account, RemoteSigner):
                await signer.account.aclose()
        if "w3" in self.__dict__:
            await self.w3.provider.disconnect()  # type: ignore[attr-defined]
        if self._worker_lease is not None:
            await self._worker_lease.release()

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
        """A contract's checksummed address (``LEDGERFLOW_REGISTRY_ADDRESS``, in any case,
        overrides the deployment's CheckpointRegistry).

        Raises:
            ConfigError: the contract is unknown or the configured address is not one.
        """
        if name == "CheckpointRegistry" and self.settings.registry_address:
            from web3 import Web3

            value = self.settings.registry_address.strip()
            if not Web3.is_address(value.lower()):
                raise ConfigError(
                    f"LEDGERFLOW_REGISTRY_ADDRESS {value!r} is not a 20-byte 0x-hex address"
                )
            return str(Web3.to_checksum_address(value.lower()))
        try:
            return str(self.deployment.contracts[name])
        except KeyError:
            raise ConfigError(f"contract {name} is not in the deployment file") from None

    def contract(self, name: str) -> AsyncContract:
        """The deployed contract ``name`` (built once per address: building one parses its ABI,
        about 1 ms, and the anchorer and every chain activity ask for one)."""
        address = cast(ChecksumAddress, self.address(name))
        built = self._contracts.get((name, address))
        if built is None:
            built = self.w3.eth.contract(address=address, abi=load_artifact(name).abi)
            self._contracts[(name, address)] = built
        return built

    @property
    def chain_id(self) -> int:
        return int(self.deployment.chain_id)

    def key_for(self, role: str) -> str:
        """The private key for a role (``LEDGERFLOW_<ROLE>_KEY`` or ``..._KEY_FILE``); dev keys
        only on the local dev chain.

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
        raise ConfigError(
            f"no key configured for the {role} (set LEDGERFLOW_{role.upper()}_KEY or "
            f"LEDGERFLOW_{role.upper()}_KEY_FILE, or LEDGERFLOW_REMOTE_SIGNER_URL with "
            f"LEDGERFLOW_{role.upper()}_ADDRESS)"
        )

    def tx_signer(self, role: str) -> TxSigner:
        """Who signs for ``role``: its configured key, else the remote signer for its
        configured address, else (dev chain only) a development key.

        Raises:
            ConfigError: nothing is configured for the role on a non-dev chain.
        """
        s = self.settings
        key = {
            "orchestrator": s.orchestrator_key,
            "agent": s.agent_key,
            "approver": s.approver_key,
        }[role]
        address = {
            "orchestrator": s.orchestrator_address,
            "agent": s.agent_address,
            "approver": s.approver_address,
        }[role]
        if key is None and address and s.remote_signer_url is not None:
            return RemoteSigner(
                s.remote_signer_url.get_secret_value(),
                address,
                method=s.remote_signer_method,
                timeout=s.remote_signer_timeout_seconds,
                role=role,
            )
        return LocalKey(self.key_for(role), role=role)

    def fee_policy(self) -> FeePolicy:
        s = self.settings
        return FeePolicy(
            max_fee=s.max_fee_wei(self.chain_id),
            min_tip=int(s.min_priority_fee_gwei * 10**9),
            max_tip=int(s.max_priority_fee_gwei * 10**9),
            percentile=s.priority_fee_percentile,
            bump_percent=s.fee_bump_percent,
        )

    def own_keys(self, prefix: str, policy: LostTxPolicy) -> None:
        """Declare the owner of the idempotency keys ``<prefix>:...``: when the chain loses
        one of their transactions, ``policy(row)`` says whether to send it again
        (``"resend"``) or fill its nonce with a no-op (``"void"``). A key closed with
        :meth:`Signer.close` is always voided; keys without an owner are re-sent."""
        self.lost_tx_owners[prefix] = policy

    async def _on_lost(self, row: OutboxTx) -> LostDecision:
        policy = self.lost_tx_owners.get(row.key.split(":", 1)[0])
        return "resend" if policy is None else await policy(row)

    async def signer(self, role: str) -> Signer:
        """The process's one signer for ``role`` (orchestrator, agent or approver)."""
        existing = self._signers.get(role)
        if existing is not None:
            return existing
        account = self.tx_signer(role)
        async with self._signer_lock:
            if role not in self._signers:
                for other in self._signers.values():
                    if other.address == account.address:
                        self._signers[role] = other
                        break
            if role not in self._signers:
                s = self.settings
                if s.confirmations == 0 and self.chain_id != DEV_CHAIN_ID:
                    log.warning(
                        "LEDGERFLOW_CONFIRMATIONS is 0 on a chain that can reorganise: a "
                        "receipt counts at once, and a reorg can undo an effect already reported",
                        chain_id=self.chain_id,
                    )
                self._signers[role] = Signer(
                    self.w3,
                    account,
                    self.store,
                    self.chain_id,
                    confirmations=s.confirmations,
                    timeout=s.tx_timeout_seconds,
                    fees=self.fee_policy(),
                    replace_after=s.replace_after_seconds,
                    heartbeat=_activity_heartbeat,
                    on_lost=self._on_lost,
                )
            return self._signers[role]

    # ---- the worker's background duties ---------------------------------------------------

    async def claim_store(self) -> None:
        """On SQLite: take the single-worker lease, or say who holds it.

        Raises:
            ConfigError: another live worker uses this SQLite store.
        """
        if not self.store.is_sqlite:
            return
        lease = Lease(self.store, SQLITE_WORKER_LEASE, ttl=self.settings.lease_seconds)
        if not await lease.acquire():
            row = lease.current
            who = f"pid {row.pid} on host {row.host}" if row else "another process"
            raise ConfigError(
                f"another ledgerflow worker ({who}) uses this SQLite store; SQLite supports one "
                "worker per store, because only one process may sign with its keys. Stop that "
                "worker, or use PostgreSQL (LEDGERFLOW_DATABASE_URL) to run several."
            )
        lease.keep()
        self._worker_lease = lease

    async def serve(self, stop: asyncio.Event) -> None:
        """Until ``stop``: check every configured signer's transactions against the chain at
        start and every ``chain_check_seconds`` (lost blocks, nonce gaps, orphaned sends)."""
        signers: list[Signer] = []
        for role in ROLES:
            try:
                signer = await self.signer(role)
            except ConfigError as exc:
                log.info("no signer for role", role=role, reason=str(exc))
                continue
            if all(signer is not other for other in signers):
                signers.append(signer)
        every = self.settings.chain_check_seconds
        await asyncio.gather(*(s.watch_chain(stop, every) for s in signers))
        await stop.wait()  # no signer to watch (or every watch ended): stay until asked to stop

    def active_signers(self) -> dict[str, Signer]:
        """The signers built so far, by role (a role that sent nothing yet has none)."""
        return dict(self._signers)
