"""Settings, read from ``LEDGERFLOW_*`` environment variables and ``.env``.

Nothing is read at import time: call :func:`get_settings`.


Every setting can also come from a file: ``LEDGERFLOW_X_FILE=/run/secrets/x`` reads the value
of ``LEDGERFLOW_X`` from that file (surrounding whitespace stripped), the convention of Docker and
Kubernetes secrets. Setting both is an error.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ledgerflow.errors import ConfigError

__all__ = [
    "ANVIL_DEFAULT_KEYS",
    "FILE_SETTINGS",
    "AnchorMode",
    "Settings",
    "get_settings",
    "parse_codec_keys",
]

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

#: The secrets the compose stack passes as files (``LEDGERFLOW_X_FILE``); any setting can be.
FILE_SETTINGS = (
    "orchestrator_key",
    "agent_key",
    "approver_key",
    "webhook_secret",
    "openai_api_key",
    "database_url",
)
_FILE_SUFFIX = "_FILE"


def _env_names(name: str, field: FieldInfo, prefix: str) -> list[str]:
    names = [f"{prefix}{name}".upper()]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        names += [str(c).upper() for c in alias.choices if isinstance(c, str)]
    elif isinstance(alias, str):
        names.append(alias.upper())
    return list(dict.fromkeys(names))


class _FileValues(PydanticBaseSettingsSource):
    """``LEDGERFLOW_X_FILE``: the value of ``LEDGERFLOW_X`` read from a file."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        env = {k.upper(): v for k, v in os.environ.items()}
        prefix = str(self.config.get("env_prefix", ""))
        out: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            for var in _env_names(name, field, prefix):
                path = env.get(var + _FILE_SUFFIX)
                if not path:
                    continue
                if env.get(var):
                    raise ConfigError(f"{var} and {var}{_FILE_SUFFIX} are both set; set one")
                try:
                    value = Path(path).read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError) as exc:
                    why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                    raise ConfigError(f"cannot read {var}{_FILE_SUFFIX} ({path}): {why}") from None
                if not value:
                    raise ConfigError(f"{var}{_FILE_SUFFIX} ({path}) is empty")
                out[name] = value
                break
        return out


#: A codec key is 32 bytes (AES-256); its id is a short public name.
CODEC_KEY_BYTES = 32
CODEC_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_codec_keys(text: str) -> dict[str, bytes]:
    """``id:base64key,...`` (commas or whitespace between entries) → ``{id: key}`` in order:
    the keys of encrypted history (:mod:`ledgerflow.codec`).

    Raises:
        ConfigError: an entry is malformed, an id repeats, or a key is not 32 bytes of base64;
            the message names the entry's id or position, never key material.
    """
    keys: dict[str, bytes] = {}
    entries = [e for e in re.split(r"[\s,]+", text) if e]
    if not entries:
        raise ConfigError("LEDGERFLOW_CODEC_KEYS is empty; unset it or give id:base64key")
    for n, entry in enumerate(entries, 1):
        key_id, sep, encoded = entry.partition(":")
        if not sep or not CODEC_KEY_ID.match(key_id):
            raise ConfigError(
                f"LEDGERFLOW_CODEC_KEYS entry {n} is not id:base64key (an id of letters, digits, "
                "'.', '_' or '-', at most 64 characters, then ':' and the key)"
            )
        if key_id in keys:
            raise ConfigError(f"LEDGERFLOW_CODEC_KEYS lists key id {key_id!r} twice")
        try:
            padded = encoded + "=" * (-len(encoded) % 4)
            key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(
                f"LEDGERFLOW_CODEC_KEYS key {key_id!r} is not base64 "
                "(make one with `openssl rand -base64 32`)"
            ) from None
        if len(key) != CODEC_KEY_BYTES:
            raise ConfigError(
                f"LEDGERFLOW_CODEC_KEYS key {key_id!r} is {len(key)} bytes; AES-256 needs "
                f"{CODEC_KEY_BYTES} (make one with `openssl rand -base64 32`)"
            )
        keys[key_id] = key
    return keys


def _split_urls(value: Any) -> Any:
    """``a,b`` or one URL per line (a file) → a list; lists pass through."""
    if isinstance(value, str):
        return [u for u in re.split(r"[\s,]+", value) if u]
    return value


class Settings(BaseSettings):
    """All of ledgerflow's settings. Each field ``x`` is read from ``LEDGERFLOW_X``."""

    model_config = SettingsConfigDict(
        env_prefix="LEDGERFLOW_", env_file=".env", extra="ignore", populate_by_name=True
    )

    home: Path = Field(Path(".ledgerflow"), description="state directory of the embedded stack")

    # Temporal: these two override Temporal's own environment configuration (TEMPORAL_ADDRESS,
    # TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*, TOML profiles) only when set; see
    # ledgerflow.temporal.
    temporal_address: str = "localhost:7233"
    namespace: str = "default"
    task_queue: str = "ledgerflow"
    temporal_ui_port: int = 8233
    temporal_ui_url: str = "http://localhost:8233"

    # Chain
    rpc_url: str = "http://127.0.0.1:8545"
    rpc_urls: Annotated[list[str], NoDecode] = Field(
        [],
        description="JSON-RPC endpoints in order of preference (comma-separated); the first "
        "healthy one is used. Empty: rpc_url alone.",
    )
    rpc_timeout_seconds: float = Field(10.0, gt=0, description="timeout of one JSON-RPC call")
    rpc_cooldown_seconds: float = Field(
        15.0, ge=0, description="a failed endpoint is skipped this long before it is tried again"
    )
    confirmations: int = Field(0, ge=0)
    orchestrator_key: SecretStr | None = Field(
        None, description="orchestrator key: writes checkpoints, restocks (0x-hex)"
    )
    agent_key: SecretStr | None = Field(None, description="procurement agent key (pays escrow)")
    approver_key: SecretStr | None = Field(None, description="key that grants approved exceptions")
    remote_signer_url: SecretStr | None = Field(
        None, description="JSON-RPC signer (Web3Signer, Clef, a KMS bridge) for roles without a key"
    )
    remote_signer_method: Literal["eth_signTransaction", "account_signTransaction"] = (
        "eth_signTransaction"
    )
    remote_signer_timeout_seconds: float = Field(10.0, gt=0)
    orchestrator_address: str | None = Field(None, description="with a remote signer")
    agent_address: str | None = Field(None, description="with a remote signer")
    approver_address: str | None = Field(None, description="with a remote signer")
    deployments_file: Path | None = None
    registry_address: str | None = None
    tx_timeout_seconds: float = 60.0
    anvil_bin: Path | None = Field(
        None, description="anvil binary for `ledgerflow up` (default: checkout's npm package, PATH)"
    )

    # Fees (EIP-1559, from eth_feeHistory)
    max_fee_gwei: float = Field(
        200.0, gt=0, description="the most paid per gas (base fee + tip) on any chain"
    )
    max_fee_gwei_by_chain: dict[int, float] = Field(
        {}, description='per-chain maximum, JSON: {"1": 80, "8453": 1}'
    )
    priority_fee_percentile: float = Field(50.0, ge=0, le=100)
    min_priority_fee_gwei: float = Field(0.01, ge=0)
    max_priority_fee_gwei: float = Field(10.0, ge=0)
    replace_after_seconds: float = Field(
        30.0, gt=0, description="a transaction pending this long is replaced with higher fees"
    )
    fee_bump_percent: float = Field(12.5, ge=10.0, le=1000.0)
    chain_check_seconds: float = Field(
        30.0, gt=0, description="how often lost blocks, nonce gaps and orphaned sends are checked"
    )

    # Coordination between processes
    lease_seconds: float = Field(
        15.0, gt=0, description="the anchorer's lease (and the SQLite worker lock) lasts this long"
    )

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
    llm_max_response_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="larger HTTP bodies from the LLM endpoint are refused before they are parsed",
    )
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
    webhook_max_body_bytes: int = Field(256 * 1024, ge=1024, le=16 * 1024 * 1024)
    webhook_read_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="a request body not received within this time is 408"
    )

    # Encrypted history (ledgerflow.codec): off unless codec_keys is set
    codec_keys: SecretStr | None = Field(
        None,
        description="AES-256 keys that encrypt Temporal payloads, `id:base64key,...`; the first "
        "encrypts, every one decrypts (key rotation). Unset: payloads are not encrypted",
    )
    codec_server_token: SecretStr | None = Field(
        None,
        description="bearer token the codec server (/codec/decode, /codec/encode) requires; "
        "unset: the codec server answers 503",
    )
    codec_server_allow_loopback: bool = Field(
        False,
        description="the codec server also answers unauthenticated requests from loopback "
        "addresses (the embedded stack's Temporal UI in the operator's browser)",
    )
    codec_cors_origins: Annotated[list[str], NoDecode] = Field(
        [],
        description="origins whose browsers may call the codec server (comma-separated); "
        "empty: the origin of temporal_ui_url",
    )

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

    # Content credentials (C2PA)
    c2pa_cert_chain: Path | None = Field(
        None, description="PEM certificate chain (end-entity first) that signs C2PA manifests"
    )
    c2pa_private_key: Path | None = Field(
        None, description="PEM private key of the C2PA signing certificate"
    )
    c2pa_signing_alg: Literal["ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "Ed25519"] = (
        "ES256"
    )
    c2pa_tsa_url: str | None = Field(
        None, description="RFC 3161 time-stamp authority for C2PA signatures (off when unset)"
    )
    c2pa_trust_anchors: Path | None = Field(
        None, description="PEM roots whose C2PA signers are trusted when reading credentials"
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            _FileValues(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    @field_validator("rpc_urls", mode="before")
    @classmethod
    def _rpc_urls(cls, value: Any) -> Any:
        return _split_urls(value)

    @field_validator("codec_cors_origins", mode="before")
    @classmethod
    def _codec_origins(cls, value: Any) -> Any:
        return _split_urls(value)

    @field_validator("codec_keys", mode="after")
    @classmethod
    def _codec_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                parse_codec_keys(value.get_secret_value())  # names no key
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @property
    def codec_origins(self) -> list[str]:
        """The origins allowed to call the codec server (``codec_cors_origins``, else the
        origin of ``temporal_ui_url``)."""
        if self.codec_cors_origins:
            return [o.rstrip("/") for o in self.codec_cors_origins]
        from urllib.parse import urlsplit

        ui = urlsplit(self.temporal_ui_url)
        return [f"{ui.scheme}://{ui.netloc}"] if ui.scheme and ui.netloc else []

    @property
    def rpc_endpoints(self) -> list[str]:
        """The JSON-RPC endpoints in order of preference (``rpc_urls``, else ``rpc_url``)."""
        return list(self.rpc_urls) or [self.rpc_url]

    def max_fee_wei(self, chain_id: int) -> int:
        """The most this process pays per gas on ``chain_id``, in wei."""
        gwei = self.max_fee_gwei_by_chain.get(chain_id, self.max_fee_gwei)
        return int(gwei * 10**9)

    @property
    def deployments_path(self) -> Path:
        return self.deployments_file or self.home / "deployments.json"

    def dev_key(self, index: int) -> str:
        return ANVIL_DEFAULT_KEYS[index]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
