"""The off-chain store (SQLite or PostgreSQL through SQLModel): the only place that writes SQL."""

from ledgerflow.store.store import (
    SCHEMA_VERSION,
    AnchorRow,
    OutboxTx,
    RunRow,
    SealRow,
    StepRow,
    Store,
    WebhookDelivery,
)

__all__ = [
    "SCHEMA_VERSION",
    "AnchorRow",
    "OutboxTx",
    "RunRow",
    "SealRow",
    "StepRow",
    "Store",
    "WebhookDelivery",
]
