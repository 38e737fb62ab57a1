"""Named timeouts and retry policies shared by every workflow (one place to tune them)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

__all__ = [
    "ACTIVITY_RETRY_POLICY",
    "ACTIVITY_START_TO_CLOSE_TIMEOUT",
    "CHAIN_READ_START_TO_CLOSE_TIMEOUT",
    "CHAIN_RETRY_POLICY",
    "CHAIN_TX_START_TO_CLOSE_TIMEOUT",
    "LLM_RETRY_POLICY",
    "LLM_START_TO_CLOSE_TIMEOUT",
]

CHAIN_READ_START_TO_CLOSE_TIMEOUT = timedelta(seconds=30)
CHAIN_TX_START_TO_CLOSE_TIMEOUT = timedelta(minutes=2)
LLM_START_TO_CLOSE_TIMEOUT = timedelta(seconds=60)
ACTIVITY_START_TO_CLOSE_TIMEOUT = timedelta(seconds=30)

#: Infrastructure failures retry; a contract's refusal is a business outcome (the saga decides).
CHAIN_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=20,
    non_retryable_error_types=["ContractRevert", "ConfigError"],
)
#: Temporal owns every LLM attempt (the SDK runs with max_retries=0): a bad answer may get better
#: on a retry, a refusal or a credentials problem will not.
LLM_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=3,
    non_retryable_error_types=[
        "LLMRefusal",
        "LLMAuthError",
        "LLMRequestRejected",
        "LLMConfigError",
    ],
)
ACTIVITY_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
