"""The Python SDK: a typed, async client for starting, steering and verifying runs."""

from ledgerflow.sdk.client import Connecting, LedgerflowClient, RunStatus, RunSummary

__all__ = ["Connecting", "LedgerflowClient", "RunStatus", "RunSummary"]
