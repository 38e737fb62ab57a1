"""Test-side chain administration: new SKUs, offers, policy changes, balances (sync web3)."""

from __future__ import annotations

from typing import Any

from web3 import Web3

from ledgerflow.chain.deploy import (
    DEV_KEYS,
    TUSD,
    Deployment,
    connect,
    contract,
    role_id,
    sku_to_bytes32,
)


class ChainAdmin:
    def __init__(self, rpc_url: str, deployment: Deployment) -> None:
        self.w3: Web3 = connect(rpc_url)
        self.d = deployment

    def c(self, name: str) -> Any:
        return contract(self.w3, name, self.d.contracts[name])

    def send(self, key: str, fn: Any) -> Any:
        acct = self.w3.eth.account.from_key(key)
        tx = fn.build_transaction(
            {
                "from": acct.address,
                "nonce": self.w3.eth.get_transaction_count(acct.address, "pending"),
            }
        )
        receipt = self.w3.eth.wait_for_transaction_receipt(
            self.w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction)
        )
        assert receipt["status"] == 1
        return receipt

    def address(self, key: str) -> str:
        return self.w3.eth.account.from_key(key).address

    def new_sku(self, sku: str, *, stock: int, threshold: int, target: int) -> None:
        inv = self.c("InventoryLedger")
        self.send(DEV_KEYS[0], inv.functions.setItem(sku_to_bytes32(sku), stock, threshold, target))

    def post_offer(
        self, supplier_key: str, sku: str, price_tusd: float, lead: int, max_qty: int, text: str
    ) -> None:
        m = self.c("Marketplace")
        supplier = self.address(supplier_key)
        if not m.functions.hasRole(role_id("SUPPLIER_ROLE"), supplier).call():
            self.send(DEV_KEYS[0], m.functions.grantRole(role_id("SUPPLIER_ROLE"), supplier))
        price = round(price_tusd * TUSD)
        self.send(
            supplier_key, m.functions.postOffer(sku_to_bytes32(sku), price, lead, max_qty, text)
        )

    def allow(self, supplier_key: str, allowed: bool = True) -> None:
        p = self.c("AgentPolicy")
        fn = p.functions.setCounterparty(self.d.agent, self.address(supplier_key), allowed)
        self.send(DEV_KEYS[0], fn)

    def set_agent_limits(
        self,
        cap_tusd: int,
        budget_tusd: int,
        *,
        unsigned_limit_tusd: int | None = None,
        window_seconds: int = 86_400,
        buckets: int = 4,
        lifetime_tusd: int = 10**12,
        budget_units: int | None = None,
    ) -> None:
        """Set the agent's limits (the unsigned limit defaults to four times the cap;
        ``budget_units``, in token units, overrides ``budget_tusd``)."""
        p = self.c("AgentPolicy")
        unsigned = 4 * cap_tusd if unsigned_limit_tusd is None else unsigned_limit_tusd
        limits = (
            cap_tusd * TUSD,
            unsigned * TUSD,
            budget_tusd * TUSD if budget_units is None else budget_units,
            window_seconds,
            buckets,
            lifetime_tusd * TUSD,
        )
        self.send(DEV_KEYS[0], p.functions.setAgent(self.d.agent, limits))

    def mint(self, to: str, amount_tusd: int) -> None:
        self.send(DEV_KEYS[0], self.c("TestUSD").functions.mint(to, amount_tusd * TUSD))

    def fund_vault(self, agent: str, amount_tusd: int) -> None:
        """Mint test tokens and deposit them into ``agent``'s AgentVault balance."""
        token, vault = self.c("TestUSD"), self.c("AgentVault")
        admin = self.address(DEV_KEYS[0])
        self.send(DEV_KEYS[0], token.functions.mint(admin, amount_tusd * TUSD))
        self.send(DEV_KEYS[0], token.functions.approve(vault.address, amount_tusd * TUSD))
        self.send(DEV_KEYS[0], vault.functions.deposit(agent, amount_tusd * TUSD))

    def vault_balance(self, agent: str) -> int:
        return int(self.c("AgentVault").functions.balanceOf(agent).call())

    def balance(self, who: str) -> int:
        return int(self.c("TestUSD").functions.balanceOf(who).call())

    def escrow_opened_events(self, order_id: str) -> int:
        esc = self.c("Escrow")
        logs = esc.events.EscrowOpened.get_logs(
            argument_filters={"orderId": bytes.fromhex(order_id[2:])}, from_block=0
        )
        return len(logs)

    def escrow_opened(self, order_id: str) -> list[Any]:
        """The EscrowOpened events' arguments of ``order_id``."""
        esc = self.c("Escrow")
        logs = esc.events.EscrowOpened.get_logs(
            argument_filters={"orderId": bytes.fromhex(order_id[2:])}, from_block=0
        )
        return [log["args"] for log in logs]

    def reservation(self, order_id: str) -> dict[str, Any]:
        """The InventoryLedger reservation of ``order_id`` (status 0 none, 1 open, 2 filled,
        3 cancelled)."""
        sku, qty, status = (
            self.c("InventoryLedger").functions.reservation(bytes.fromhex(order_id[2:])).call()
        )
        return {"sku": sku, "qty": int(qty), "status": int(status)}

    def stock(self, sku: str) -> int:
        return int(self.c("InventoryLedger").functions.item(sku_to_bytes32(sku)).call()[0])
