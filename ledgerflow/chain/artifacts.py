"""Compiled contract artifacts, shipped inside the package.

``ledgerflow/chain/contract-artifacts`` is package data (a directory name that cannot be
imported, on purpose). In the repository it is a link to ``contracts/artifacts``, the one
committed copy, written by ``contracts/build.js`` and checked against a fresh build by the
tests; a wheel or sdist carries the files themselves, so an installed ledgerflow needs no
checkout to deploy, call or verify.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ledgerflow.errors import ConfigError

__all__ = ["Artifact", "artifact_names", "artifacts_dir", "load_artifact"]


def artifacts_dir() -> Path:
    """The directory of the ``<ContractName>.json`` artifacts inside the installed package."""
    return Path(__file__).resolve().parent / "contract-artifacts"


def artifact_names() -> list[str]:
    """The names of every shipped contract artifact, sorted."""
    return sorted(p.stem for p in artifacts_dir().glob("*.json"))


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str  # 0x-hex creation code

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.abi if e.get("type") == "error"]


@cache
def load_artifact(name: str) -> Artifact:
    """Load the artifact of contract ``name``.

    Raises:
        ConfigError: no such artifact in this installation (the message says where it looked).
    """
    path = artifacts_dir() / f"{name}.json"
    if not path.is_file():
        raise ConfigError(
            f"contract artifact {name} is missing from {artifacts_dir()}; this installation of "
            "ledgerflow is incomplete (reinstall it; in a checkout run `make contracts`)"
        )
    data = json.loads(path.read_text())
    return Artifact(name=data["contractName"], abi=data["abi"], bytecode=data["bytecode"])
