"""Compiled contract artifacts, committed under contracts/artifacts/ by contracts/build.js."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ledgerflow.errors import ConfigError

__all__ = ["Artifact", "artifacts_dir", "load_artifact"]


def artifacts_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "contracts" / "artifacts"


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str  # 0x-hex creation code

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.abi if e.get("type") == "error"]


@cache
def load_artifact(name: str) -> Artifact:
    """Load ``contracts/artifacts/<name>.json``.

    Raises:
        ConfigError: the artifact is missing (run ``make contracts``).
    """
    path = artifacts_dir() / f"{name}.json"
    if not path.exists():
        raise ConfigError(f"contract artifact {name} is missing; run `make contracts`")
    data = json.loads(path.read_text())
    return Artifact(name=data["contractName"], abi=data["abi"], bytecode=data["bytecode"])
