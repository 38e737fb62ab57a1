"""Settings, read from ``LEDGERFLOW_*`` environment variables and ``.env``.

Nothing is read at import time: call :func:`get_settings`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ANVIL_DEFAULT_KEYS", "AnchorMode", "Settings", "get_settings"]

AnchorMode = Literal["batched", "per-step"]

#: anvil's well-known development keys (mnemonic "test test ... junk"). Used only when no key is
#: configured and the chain is a local dev chain (chain id 31337); never on any other chain.
ANVIL_DEFAULT_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
)
DEV_CHAIN_ID = 31337


class Settings(BaseSettings):
    """All of ledgerflow's settings. Each field ``x`` is read from ``LEDGERFLOW_X``."""

    model_config = SettingsConfigDict(
        env_prefix="LEDGERFLOW_", env_file=".env", extra="ignore", populate_by_name=True
    )

    home: Path = Field(Path(".ledgerflow"), description="state directory of the embedded stack")

    # Temporal
    temporal_address: str = "localhost:7233"
    namespace: str = "default"
    task_queue: str = "ledgerflow"
    temporal_ui_port: int = 8233
    temporal_ui_url: str = "http://localhost:8233"

    # Chain
    rpc_url: str = "http://127.0.0.1:8545"
    confirmations: int = Field(0, ge=0)
    orchestrator_key: SecretStr | None = Field(
        None, description="orchestrator key: writes checkpoints, restocks (0x-hex)"
    )
    agent_key: SecretStr | None = Field(None, description="procurement agent key (pays escrow)")
    approver_key: SecretStr | None = Field(None, description="key that grants approved exceptions")
    deployments_file: Path | None = None
    registry_address: str | None = None
    tx_timeout_seconds: float = 60.0

    # Store
    database_url: str = Field(
        "sqlite:///.ledgerflow/ledgerflow.db",
        description="SQLAlchemy URL of the store; by default ledgerflow.db in the state directory",
    )

    # Checkpoints
    anchor_mode: AnchorMode = "batched"
    anchor_batch_size: int = Field(128, ge=1, le=65536)
    anchor_max_wait_seconds: float = Field(1.0, gt=0)
    wait_for_anchor: bool = True

    # LLM
    llm_provider: Literal["offline", "openai"] = "offline"
    llm_model: str = "gpt-4o-mini"
    llm_timeout_seconds: float = 30.0
    llm_max_tokens: int = 800
    openai_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LEDGERFLOW_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        None, validation_alias=AliasChoices("LEDGERFLOW_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    )

    # API / webhooks
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    webhook_secret: SecretStr | None = None
    webhook_max_body_bytes: int = 256 * 1024

    # Generic HTTP steps
    http_allowed_hosts: list[str] = Field(
        default_factory=list, description="hosts an http.request step may call (exact names)"
    )
    http_credentials: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="named Authorization header values for http.request steps (JSON object)",
    )

    # Workflows
    workflow_modules: list[str] = Field(
        default_factory=list,
        description="modules with a team's own @register'ed workflows, loaded by every process",
    )

    # Logging
    log_level: str = "INFO"
    log_format: Literal["auto", "console", "json"] = "auto"
    temporal_core_log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = Field(
        "WARN", description="level of the Temporal SDK core's own log lines (forwarded to logging)"
    )

    # Metrics and traces
    metrics_host: str = Field("127.0.0.1", description="address the /metrics endpoints bind to")
    metrics_port: int = Field(
        9464, ge=0, le=65535, description="the worker's Prometheus endpoint (0: none)"
    )
    api_metrics_port: int = Field(
        9465, ge=0, le=65535, description="the API's Prometheus endpoint (0: none)"
    )
    metrics_sample_seconds: float = Field(
        5.0, gt=0, description="how often the worker samples pending leaves and signer nonces"
    )
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP traces endpoint (e.g. http://collector:4318/v1/traces); "
        "tracing is off when unset",
    )

    @model_validator(mode="after")
    def _store_in_home(self) -> Settings:
        # The default store lives in the state directory, wherever LEDGERFLOW_HOME points. Set
        # through __dict__ so the field still counts as not set explicitly.
        if "database_url" not in self.model_fields_set:
            self.__dict__["database_url"] = f"sqlite:///{self.home / 'ledgerflow.db'}"
        return self

    @property
    def deployments_path(self) -> Path:
        return self.deployments_file or self.home / "deployments.json"

    def dev_key(self, index: int) -> str:
        return ANVIL_DEFAULT_KEYS[index]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
