"""Imports point down: entry points > workflows > activities > flow > core > vocabulary.

A layer may import its own and the layers below it, never one above (lazy imports inside
functions count too). This keeps the checkpoint core, the chain, the LLM plumbing and the store
usable without the workflows, and the workflows free of entry-point code.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Top to bottom. A module belongs to the first prefix it matches.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "entry points",
        (
            "ledgerflow.cli",
            "ledgerflow.api",
            "ledgerflow.sdk",
            "ledgerflow.dev",
            "ledgerflow.worker",
            "ledgerflow_bench",
        ),
    ),
    ("workflows", ("ledgerflow.workflows",)),
    ("activities", ("ledgerflow.activities",)),
    ("authoring API", ("ledgerflow.flow",)),
    (
        "core",
        (
            "ledgerflow.checkpoint",
            "ledgerflow.chain",
            "ledgerflow.provenance",
            "ledgerflow.llm",
            "ledgerflow.store",
            "ledgerflow.runtime",
            "ledgerflow.temporal",
            "ledgerflow.converter",
            "ledgerflow.codec",
        ),
    ),
    (
        "vocabulary",
        (
            "ledgerflow.types",
            "ledgerflow.errors",
            "ledgerflow.settings",
            "ledgerflow.log",
            "ledgerflow.observability",
            "ledgerflow.jsonsafe",
        ),
    ),
]


def _layer(module: str) -> int | None:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for base, package in (
        (ROOT / "ledgerflow", "ledgerflow"),
        (ROOT / "bench" / "ledgerflow_bench", "ledgerflow_bench"),
    ):
        # os.walk follows ledgerflow/workflows and ledgerflow/activities (links); rglob would not.
        paths = [Path(d) / f for d, _, files in os.walk(base, followlinks=True) for f in files]
        for path in (p for p in paths if p.suffix == ".py"):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)
    return found


def test_the_layout_is_the_documented_one() -> None:
    modules = _modules()
    assert "ledgerflow.workflows.procurement" in modules  # through the ledgerflow/workflows link
    assert "ledgerflow.activities.procurement" in modules
    unplaced = sorted(m for m in modules if _layer(m) is None and m != "ledgerflow")
    assert not unplaced, f"modules outside every layer: {unplaced}"


@pytest.mark.parametrize("module", sorted(_modules()), ids=str)
def test_imports_point_down(module: str) -> None:
    path = _modules()[module]
    mine = _layer(module)
    if mine is None:  # the package's facade (__init__) re-exports lazily; nothing to check
        return
    upward = []
    for name in sorted(_imports(path, module)):
        if name.split(".")[0] in ("workflows", "activities", "worker"):
            upward.append(f"{name} (a top-level name: import ledgerflow.{name} instead)")
            continue
        theirs = _layer(name)
        if theirs is not None and theirs < mine:
            upward.append(f"{name} ({LAYERS[theirs][0]})")
    assert not upward, f"{module} ({LAYERS[mine][0]}) imports upward: {upward}"
