"""Named step policies (timeouts, retries, heartbeats) shared by every workflow: one place to tune.

Each :class:`~ledgerflow.flow.StepPolicy` is attached to its activities by ``@step_activity``;
workflows never repeat them. Non-retryable failures are listed as :class:`ErrorType` members.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from ledgerflow.flow.activity import StepPolicy
from ledgerflow.types import ErrorType

__all__ = [
    "ACTIVITY",
    "ACTIVITY_RETRY_POLICY",
    "ACTIVITY_START_TO_CLOSE_TIMEOUT",
    "CHAIN_READ",
    "CHAIN_READ_START_TO_CLOSE_TIMEOUT",
    "CHAIN_RETRY_POLICY",
    "CHAIN_TX",
    "CHAIN_TX_START_TO_CLOSE_TIMEOUT",
    "HEARTBEAT_TIMEOUT",
    "HTTP",
    "LLM",
    "LLM_RETRY_POLICY",
    "LLM_START_TO_CLOSE_TIMEOUT",
]

CHAIN_READ_START_TO_CLOSE_TIMEOUT = timedelta(seconds=30)
CHAIN_TX_START_TO_CLOSE_TIMEOUT = timedelta(minutes=2)
LLM_START_TO_CLOSE_TIMEOUT = timedelta(seconds=60)
ACTIVITY_START_TO_CLOSE_TIMEOUT = timedelta(seconds=30)
HTTP_START_TO_CLOSE_TIMEOUT = timedelta(seconds=60)
#: A worker that dies inside a step is noticed after this long (the step is then retried on
#: another worker); steps heartbeat at a third of it while they run.
HEARTBEAT_TIMEOUT = timedelta(seconds=10)

#: Infrastructure failures retry; a contract's refusal is a business outcome (the saga decides).
CHAIN_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=20,
    # web3's own errors for arguments that do not fit the ABI (a call built against other
    # contracts than the deployed ones) fail the same way on every attempt.
    non_retryable_error_types=[
        ErrorType.CONTRACT_REVERT,
        ErrorType.CONFIG_ERROR,
        "MismatchedABI",
        "Web3ValidationError",
    ],
)
#: Temporal owns every LLM attempt (the SDK runs with max_retries=0): a bad answer may get better
#: on a retry, a refusal or a credentials problem will not.
LLM_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=3,
    non_retryable_error_types=[
        ErrorType.LLM_REFUSAL,
        ErrorType.LLM_AUTH_ERROR,
        ErrorType.LLM_REQUEST_REJECTED,
        ErrorType.LLM_CONFIG_ERROR,
    ],
)
ACTIVITY_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=[ErrorType.CONFIG_ERROR],
)
HTTP_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
    non_retryable_error_types=[ErrorType.CONFIG_ERROR, ErrorType.HTTP_REJECTED],
)

#: Reads of chain state (eth_call, eth_getLogs).
CHAIN_READ = StepPolicy(
    CHAIN_READ_START_TO_CLOSE_TIMEOUT, CHAIN_RETRY_POLICY, heartbeat=HEARTBEAT_TIMEOUT
)
#: Transactions through the signer's outbox (a retry finds the receipt or rebroadcasts).
CHAIN_TX = StepPolicy(
    CHAIN_TX_START_TO_CLOSE_TIMEOUT, CHAIN_RETRY_POLICY, heartbeat=HEARTBEAT_TIMEOUT
)
#: LLM decisions (structured outputs).
LLM = StepPolicy(LLM_START_TO_CLOSE_TIMEOUT, LLM_RETRY_POLICY, heartbeat=HEARTBEAT_TIMEOUT)
#: Plain, short activities (pure computation, store reads).
ACTIVITY = StepPolicy(ACTIVITY_START_TO_CLOSE_TIMEOUT, ACTIVITY_RETRY_POLICY)
#: HTTP requests to enterprise APIs (with an idempotency key).
HTTP = StepPolicy(HTTP_START_TO_CLOSE_TIMEOUT, HTTP_RETRY_POLICY, heartbeat=HEARTBEAT_TIMEOUT)
