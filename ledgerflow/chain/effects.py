"""Chain effects as checkpoint spec v2 records them: the transaction and the log that prove it.

A state-changing chain step's output is a :class:`~ledgerflow.types.TxResult`: the transaction's
hash, block number and block hash, the contract it was sent to, its gas, and the one log that
proves the effect (``EscrowOpened`` for ``escrow.open``, ...). A verifier re-reads the receipt
from the trusted chain and checks each of them, so a payment whose block the chain lost is
reported, not verified (checkpoint spec v2, "Chain effects").

When the effect was made by an earlier attempt whose receipt this attempt does not hold (its
outbox row lost), :func:`find_effect` finds that earlier transaction by its event.
"""

from __future__ import annotations

from typing import Any

from ledgerflow.errors import ChainError
from ledgerflow.types import TxEvent, TxResult

__all__ = ["event_topic", "find_effect", "tx_result"]


def _hex(value: Any) -> str:
    if isinstance(value, str):
        return value.lower() if value.startswith("0x") else "0x" + value.lower()
    return "0x" + bytes(value).hex()


def event_topic(contract: Any, event: str) -> str:
    """topic0 (the signature hash, 0x-hex) of ``contract``'s event ``event``."""
    return _hex(contract.events[event]().topic)


def tx_result(
    receipt: Any,
    contract: Any,
    event: str | None,
    *,
    already_done: bool = False,
    first_log: bool = False,
) -> TxResult:
    """The TxResult v2 of ``receipt``: ``event`` is the log (from ``contract``) that proves the
    effect; with ``event`` None, the first log the contract emitted (``first_log``, for generic
    calls) or none.

    Raises:
        ChainError: the receipt has no such log (the call did not do what it was meant to).
    """
    proof: TxEvent | None = None
    address = str(contract.address)
    if event is None and first_log:
        for log in receipt["logs"]:
            if str(log["address"]).lower() == address.lower() and log["topics"]:
                topics = [_hex(t) for t in log["topics"]]
                proof = TxEvent(address=address, topics=topics, log_index=int(log["logIndex"]))
                break
    if event is not None:
        topic = event_topic(contract, event)
        for log in receipt["logs"]:
            topics = [_hex(t) for t in log["topics"]]
            if str(log["address"]).lower() == address.lower() and topics and topics[0] == topic:
                proof = TxEvent(address=address, topics=topics, log_index=int(log["logIndex"]))
                break
        if proof is None:
            raise ChainError(f"transaction {_hex(receipt['transactionHash'])} emitted no {event}")
    return TxResult(
        tx_hash=_hex(receipt["transactionHash"]),
        block_number=int(receipt["blockNumber"]),
        block_hash=_hex(receipt["blockHash"]),
        to=str(receipt.get("to") or address),
        gas_used=int(receipt["gasUsed"]),
        already_done=already_done,
        event=proof,
    )


async def find_effect(
    w3: Any, contract: Any, event: str, argument_filters: dict[str, Any]
) -> TxResult | None:
    """The earliest transaction whose ``event`` log (filtered by indexed arguments) shows the
    effect was made, as a TxResult with ``already_done``; None if the chain holds none."""
    logs = await contract.events[event].get_logs(argument_filters=argument_filters, from_block=0)
    if not logs:
        return None
    receipt = await w3.eth.get_transaction_receipt(logs[0]["transactionHash"])
    return tx_result(receipt, contract, event, already_done=True)
