"""The documentation tells the truth about the code.

README, docs/ and docker-compose.yml name settings, CLI commands and options, workflow inputs and
files; these tests check each of those names against the code, so a rename breaks a test rather
than a reader's afternoon.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
from pydantic import BaseModel

from ledgerflow.cli.main import app
from ledgerflow.settings import Settings
from ledgerflow.workflows.procurement import (
    ProcurementRequest,
)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOC_FILES = sorted((ROOT / "docs").glob("*.md"))
MARKDOWN = [README, *DOC_FILES]
#: The user guide checked in depth here (other docs/ files have their own tests).
GUIDE = [
    README,
    *(ROOT / "docs" / f"{name}.md" for name in ("architecture", "configuration", "operations")),
    ROOT / "docs" / "procurement.md",
]
#: Files that must never leak local paths or name a package registry's host.
OWNED = [*GUIDE, COMPOSE, DOCKERFILE, ROOT / "docker" / "healthcheck.py"]
#: The DESIGN's fixed CLI interface: README documents each of these that exists.
FIXED_COMMANDS = {"up", "worker", "api", "deploy", "start", "status", "verify", "proof", "bench"}

SETTING_VARS = {f"LEDGERFLOW_{name.upper()}" for name in Settings.model_fields}
#: Every setting can also be read from a file named by its variable plus ``_FILE``.
FILE_VARS = {f"{name}_FILE" for name in SETTING_VARS}
#: LEDGERFLOW_ names the docs may mention that are not settings: read by the test suite only.
TEST_ONLY_VARS = {"LEDGERFLOW_TEST_PG_URL", "LEDGERFLOW_BATTERY_DIR"}
VAR_RE = re.compile(r"\bLEDGERFLOW_[A-Z0-9_]+")

README_INPUT = {"sku": "WIDGET-42", "quantity": 25, "simulate_delivery_after_seconds": 2}

COMPOSE_SERVICES = (
    "postgresql",
    "temporal-schema",
    "temporal",
    "temporal-namespace",
    "temporal-ui",
    "anvil",
    "deploy",
    "worker",
    "api",
)


def _fenced(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)


def _code(text: str) -> list[str]:
    """Every fenced block and inline code span, continuation lines joined."""
    blocks = [body for _, body in _fenced(text)]
    prose = re.sub(r"^```\w*\n.*?^```", "", text, flags=re.M | re.S)
    spans = re.findall(r"``(.+?)``|`([^`\n]+)`", prose)
    parts = blocks + [a or b for a, b in spans]
    return [p.replace("\\\n", " ") for p in parts]


def _shown(value: Any) -> str:
    """A default as docs/configuration.md writes it."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


# ---- README ---------------------------------------------------------------------------------


def test_readme_opens_with_the_two_commands() -> None:
    text = README.read_text()
    assert "make run" in text and "make test" in text
    _info, first = _fenced(text)[0]
    commands = [line.split("#")[0].strip() for line in first.splitlines() if line.strip()]
    assert commands == ["make run", "make test"], first
    assert text.index("make run") < text.index("## ")  # before any other section
    for needed in ("Python 3.11", "Node 20", ".venv", "contracts/node_modules"):
        assert needed in text


def test_readme_procurement_json_is_a_valid_request() -> None:
    text = README.read_text()
    blocks = [body for info, body in _fenced(text) if info == "json"]
    assert blocks, "README shows no JSON input"
    for body in blocks:
        ProcurementRequest.model_validate_json(body)
    assert json.loads(blocks[0]) == README_INPUT
    # It must complete on its own: a simulated supplier confirms the delivery.
    assert ProcurementRequest.model_validate(README_INPUT).simulate_delivery_after_seconds
    assert "temporal workflow start --task-queue ledgerflow --type ProcurementWorkflow" in text


INPUT_RE = re.compile(r"--input '([^']*)'")


def _commands(text: str) -> list[str]:
    """Every shell command of the document's code blocks, continuation lines joined."""
    out: list[str] = []
    for part in _code(text):
        current = ""
        for line in part.splitlines():
            current += line.rstrip().removesuffix("\\") + " "
            if not line.rstrip().endswith("\\"):
                out.append(current.strip())
                current = ""
        if current.strip():
            out.append(current.strip())
    return out


_ID_RE = re.compile(r"(?:--workflow-id|--id)\s+(\S+)")


def _input_model(command: str, types_by_id: dict[str, str]) -> type[BaseModel]:
    """The model of a command's --input: the workflow's input, or the signal's/update's."""
    from ledgerflow.flow import registry

    known = registry.public()
    for workflow_type, reg in known.items():
        if f"--type {workflow_type}" in command or f"start {workflow_type}" in command:
            return reg.input_model
    name = re.search(r"--name (\w+)", command)
    wf_id = _ID_RE.search(command)
    if name and wf_id:
        reg = known.get(types_by_id.get(wf_id.group(1), "ProcurementWorkflow"))
        if reg is not None:
            model = reg.signals.get(name.group(1)) or reg.updates.get(name.group(1))
            if model is not None:
                return model
    raise AssertionError(f"no known input model for: {command}")


@pytest.mark.parametrize("doc", GUIDE, ids=lambda p: p.name)
def test_every_input_in_commands_parses(doc: Path) -> None:
    from ledgerflow.flow import registry

    commands = _commands(doc.read_text())
    types_by_id: dict[str, str] = {}
    for command in commands:
        wf_id = _ID_RE.search(command)
        for workflow_type in registry.public():
            if wf_id and (
                f"--type {workflow_type}" in command or f"start {workflow_type}" in command
            ):
                types_by_id[wf_id.group(1)] = workflow_type
    checked = 0
    for command in commands:
        for raw in INPUT_RE.findall(command):
            if raw.startswith("<"):
                continue  # a placeholder such as '<json>'
            _input_model(command, types_by_id).model_validate_json(raw)
            checked += 1
    if "--input" in doc.read_text():
        assert checked, f"{doc.name}: no --input was checked"


def test_procurement_doc_examples_are_valid_requests() -> None:
    text = (ROOT / "docs" / "procurement.md").read_text()
    inputs = text.split("## Inputs", 1)[1].split("\n## ", 1)[0]
    blocks = [body for info, body in _fenced(inputs) if info == "json"]
    assert blocks
    for body in blocks:
        ProcurementRequest.model_validate_json(body)
    documented = set(re.findall(r"^\| `(\w+)` \|", inputs, flags=re.M))
    assert documented == set(ProcurementRequest.model_fields)


# ---- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", [*MARKDOWN, COMPOSE, DOCKERFILE], ids=lambda p: p.name)
def test_every_ledgerflow_variable_mentioned_is_a_setting(doc: Path) -> None:
    unknown = set(VAR_RE.findall(doc.read_text())) - SETTING_VARS - FILE_VARS - TEST_ONLY_VARS
    assert not unknown, f"{doc.name} names variables that are not settings: {sorted(unknown)}"


def test_test_only_variables_exist_in_the_tests() -> None:
    me = Path(__file__).resolve()
    sources = "".join(p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.resolve() != me)
    for name in TEST_ONLY_VARS:
        assert name in sources, name


def test_configuration_lists_every_setting_with_its_default() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = dict(re.findall(r"^\| `(LEDGERFLOW_[A-Z0-9_]+)` \| `([^`]*)` \|", text, flags=re.M))
    assert set(rows) == SETTING_VARS, sorted(SETTING_VARS ^ set(rows))
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        assert rows[f"LEDGERFLOW_{name.upper()}"] == _shown(default), name
    for alias in ("OPENAI_API_KEY", "OPENAI_BASE_URL", ".env"):
        assert alias in text


# ---- CLI ------------------------------------------------------------------------------------


def _cli_options() -> dict[str, set[str]]:
    group = typer.main.get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    return {
        name: {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
        for name, cmd in commands.items()
    }


CLI_RE = re.compile(r"(?<![\w./-])ledgerflow ([a-z][a-z-]*)(.*)")


def _cli_lines(doc: Path) -> list[tuple[str, str]]:
    """(command, rest of the line) of every `ledgerflow <command> ...` in the doc's code."""
    found = []
    for part in _code(doc.read_text()):
        for line in part.splitlines():
            match = CLI_RE.search(line)
            if match is None:
                continue
            before = line[: match.start()].split()
            if before and before[-1].startswith("-"):
                continue  # an option's value, e.g. `pg_dump -U ledgerflow ledgerflow`
            found.append((match.group(1), match.group(2)))
    return found


@pytest.mark.parametrize("doc", GUIDE, ids=lambda p: p.name)
def test_documented_cli_commands_and_options_exist(doc: Path) -> None:
    options = _cli_options()
    for command, rest in _cli_lines(doc):
        assert command in options, f"{doc.name}: no command `ledgerflow {command}`"
        for opt in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest):
            assert opt in options[command], f"{doc.name}: `ledgerflow {command}` has no {opt}"


def test_readme_documents_the_fixed_cli_commands() -> None:
    text = README.read_text()
    for command in FIXED_COMMANDS & set(_cli_options()):
        assert f"`ledgerflow {command}" in text, command


# ---- links and hygiene ----------------------------------------------------------------------


@pytest.mark.parametrize("doc", GUIDE, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert file.exists(), f"{doc.name}: broken link {target}"
        if anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f"{doc.name}: no anchor {target}"


# ---- docker ---------------------------------------------------------------------------------


def test_dockerfile_copies_files_that_exist() -> None:
    for line in DOCKERFILE.read_text().splitlines():
        if not line.startswith("COPY ") or "--from=" in line:
            continue
        *sources, _dest = line.split()[1:]
        for src in sources:
            assert (ROOT / src).exists(), f"docker/Dockerfile copies missing {src}"


def test_compose_services_and_their_settings() -> None:
    text = COMPOSE.read_text()
    for service in COMPOSE_SERVICES:
        assert f"\n  {service}:\n" in text, f"service {service} missing"
    assert "temporalio/server:" in text and "temporalio/ui:" in text
    assert "dockerfile: docker/Dockerfile" in text
    assert "LEDGERFLOW_DATABASE_URL_FILE" in text  # the URL itself is a secret file
    for script in re.findall(r"/app/(docker/[\w./-]+)", text):
        assert (ROOT / script).exists(), script
    # Commands of the ledgerflow services are real CLI commands.
    options = _cli_options()
    for command in re.findall(r'\["ledgerflow", "([a-z-]+)"', text):
        assert command in options, command

    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:  # PyYAML is not a dependency; the string checks above still hold
        return
    data = yaml.safe_load(text)
    services = data["services"]
    assert set(services) == set(COMPOSE_SERVICES)
    for name, service in services.items():
        env = service.get("environment") or {}
        unknown = {k for k in env if k.startswith("LEDGERFLOW_")} - SETTING_VARS - FILE_VARS
        assert not unknown, (name, unknown)
        for dep, cond in (service.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], (name, dep)
    for name in ("worker", "api", "deploy"):
        assert services[name]["command"][0] == "ledgerflow"
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
