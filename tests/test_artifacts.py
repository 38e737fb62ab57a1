"""The committed contract artifacts are exactly what the pinned compiler makes of the sources."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ledgerflow.chain.artifacts import artifacts_dir, load_artifact
from ledgerflow.chain.deploy import CONTRACT_NAMES
from ledgerflow.dev.stack import repo_root

BUILD = repo_root() / "contracts" / "build.js"


def run_build(*args: str) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is required to check the contract artifacts (install Node 20)")
    return subprocess.run(
        [node, str(BUILD), *args],
        cwd=repo_root(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_committed_artifacts_are_reproducible() -> None:
    result = run_build("--check")
    assert result.returncode == 0, result.stderr


def test_check_fails_on_drift(tmp_path: Path) -> None:
    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts_dir(), copy)

    flipped = copy / "CheckpointRegistry.json"
    data = json.loads(flipped.read_text())
    code = data["bytecode"]
    data["bytecode"] = code[:-1] + ("0" if code[-1] != "0" else "1")  # one nibble of the code
    flipped.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (copy / "Escrow.json").unlink()
    (copy / "Leftover.json").write_text("{}\n")

    result = run_build("--check", "--artifacts-dir", str(copy))
    assert result.returncode != 0
    assert "CheckpointRegistry.json: differs" in result.stderr
    assert "Escrow.json: missing" in result.stderr
    assert "Leftover.json: stale" in result.stderr
    assert "TestUSD.json" not in result.stderr


def test_artifact_format() -> None:
    files = sorted(p.name for p in artifacts_dir().glob("*.json"))
    assert files == sorted(f"{name}.json" for name in CONTRACT_NAMES)
    for name in CONTRACT_NAMES:
        path = artifacts_dir() / f"{name}.json"
        text = path.read_text()
        data = json.loads(text)
        # Sorted keys, 2-space indent, trailing newline: the same bytes Python would write.
        assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
        assert data["contractName"] == name
        assert data["sourceName"] == f"src/{name}.sol"
        assert data["bytecode"].startswith("0x") and len(data["bytecode"]) > 2
        assert data["deployedBytecode"].startswith("0x")
        artifact = load_artifact(name)
        assert artifact.name == name and artifact.abi == data["abi"]
        # No machine paths leak into committed files.
        assert "/home/" not in text and "node_modules/@openzeppelin" not in data["sourceName"]
