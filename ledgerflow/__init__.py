"""ledgerflow: durable Temporal workflows where AI decides and an EVM chain keeps the books."""

from ledgerflow.errors import (
    ChainError,
    ConfigError,
    ContractRevert,
    EngineUnavailable,
    LedgerflowError,
    LLMError,
    RunAlreadyStarted,
    RunError,
    RunFailed,
    RunNotFound,
    StackError,
    StoreError,
    UpdateRejected,
    VerificationError,
    WebhookError,
)

__version__ = "0.1.0"

__all__ = [
    "ChainError",
    "ConfigError",
    "ContractRevert",
    "EngineUnavailable",
    "LLMError",
    "LedgerflowClient",
    "LedgerflowError",
    "RunAlreadyStarted",
    "RunError",
    "RunFailed",
    "RunNotFound",
    "StackError",
    "StoreError",
    "UpdateRejected",
    "VerificationError",
    "WebhookError",
    "__version__",
]


def __getattr__(name: str) -> object:
    # The client pulls in Temporal and web3; import it only when asked for.
    if name == "LedgerflowClient":
        from ledgerflow.sdk.client import LedgerflowClient

        return LedgerflowClient
    raise AttributeError(name)
