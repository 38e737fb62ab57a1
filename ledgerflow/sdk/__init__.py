"""The Python SDK: a typed, async client for starting, steering and verifying runs."""

from ledgerflow.sdk.client import LedgerflowClient

__all__ = ["LedgerflowClient"]
