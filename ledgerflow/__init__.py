"""ledgerflow: durable Temporal workflows where AI decides and an EVM chain keeps the books."""

from ledgerflow.errors import (
    ChainError,
    ConfigError,
    ContractRevert,
    LedgerflowError,
    LLMError,
    StackError,
    VerificationError,
    WebhookError,
)

__version__ = "0.1.0"

__all__ = [
    "ChainError",
    "ConfigError",
    "ContractRevert",
    "LLMError",
    "LedgerflowClient",
    "LedgerflowError",
    "StackError",
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
