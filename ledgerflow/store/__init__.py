"""The off-chain store (SQLite or PostgreSQL through SQLModel): the only place that writes SQL."""

from ledgerflow.store.store import (
    FINAL_STATUSES,
    SCHEMA_VERSION,
    AnchorRow,
    InvoiceReconciliation,
    LeaseRow,
    OutboxAttempt,
    OutboxClosure,
    OutboxTx,
    RunRow,
    SealRow,
    SenderLock,
    SignerNonce,
    StepRow,
    Store,
    WebhookDelivery,
)

__all__ = [
    "FINAL_STATUSES",
    "SCHEMA_VERSION",
    "AnchorRow",
    "InvoiceReconciliation",
    "LeaseRow",
    "OutboxAttempt",
    "OutboxClosure",
    "OutboxTx",
    "RunRow",
    "SealRow",
    "SenderLock",
    "SignerNonce",
    "StepRow",
    "Store",
    "WebhookDelivery",
]
