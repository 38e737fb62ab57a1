"""Run Slither over contracts/src and fail on any finding above informational that the triage
file does not accept (and on triage entries that no longer match a finding).

Slither compiles through contracts/tools/solc, a wrapper around the project's pinned solc-js, so
no native compiler is downloaded. Run it with the Python of .venv-slither (`make slither`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CONTRACTS = Path(__file__).resolve().parent.parent
TRIAGE = CONTRACTS / "tools" / "slither-triage.json"
FAILING = {"High", "Medium", "Low"}


def run_slither() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "slither.json"
        cmd = [
            str(Path(sys.executable).with_name("slither")),
            "src/",
            "--solc",
            "./tools/solc",
            "--solc-standard-json",
            "--solc-remaps",
            "@openzeppelin/=node_modules/@openzeppelin/",
            "--filter-paths",
            "node_modules",
            "--exclude-informational",
            "--exclude-optimization",
            "--json",
            str(out),
        ]
        proc = subprocess.run(cmd, cwd=CONTRACTS, capture_output=True, text=True, check=False)
        if not out.exists():
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit("slither produced no report")
        report = json.loads(out.read_text())
    if not report.get("success"):
        raise SystemExit(f"slither failed: {report.get('error')}")
    return list(report.get("results", {}).get("detectors", []))


def function_of(finding: dict) -> str:
    for el in finding.get("elements", []):
        if el.get("type") == "function":
            parent = el.get("type_specific_fields", {}).get("parent", {}).get("name", "?")
            return f"{parent}.{el.get('name')}"
    return "?"


def main() -> int:
    accepted = json.loads(TRIAGE.read_text())["accepted"]
    used = [False] * len(accepted)
    problems = []
    findings = [f for f in run_slither() if f.get("impact") in FAILING]
    for f in findings:
        where = function_of(f)
        match = next(
            (
                i
                for i, a in enumerate(accepted)
                if a["check"] == f["check"] and a["function"] in ("*", where)
            ),
            None,
        )
        if match is None:
            text = f["description"].strip()
            problems.append(f"[{f['impact']}] {f['check']} in {where}:\n  {text}")
        else:
            used[match] = True
    for a, hit in zip(accepted, used, strict=True):
        if not hit:
            stale = f"{a['check']} {a['function']}"
            problems.append(f"stale triage entry (no such finding any more): {stale}")
    print(
        f"slither: {len(findings)} finding(s) above informational, {sum(used)} triage entries used"
    )
    if problems:
        print("\n".join(problems))
        print(f"fix the contracts, or accept a finding with its reason in {TRIAGE.name}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
