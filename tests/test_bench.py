"""``ledgerflow bench`` at tiny sizes: every section reports figures next to its baseline.

Behaviour only, never timings: the sections run against the bench's own Temporal dev server
and anvil, and each reports a baseline, a ratio, a target and whether it was met.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from ledgerflow_bench.harness import (
    SECTIONS,
    BenchConfig,
    config_from_options,
    percentile,
    render_report,
    run_bench,
)
from rich.console import Console

from ledgerflow.errors import ConfigError


@pytest.fixture(scope="module")
async def report() -> dict[str, Any]:
    return await run_bench(BenchConfig.quick())


def test_every_section_has_a_baseline_a_ratio_and_a_verdict(report: dict[str, Any]) -> None:
    json.dumps(report)  # one JSON object, as `ledgerflow bench --json` prints it
    assert report["machine"]["nproc"] >= 1
    for section in SECTIONS:
        part = report[section]
        assert part["baseline"], section
        assert isinstance(part["ratio"], float) and part["ratio"] > 0, section
        assert part["target"], section
        assert isinstance(part["met"], bool), section
    assert [row["section"] for row in report["summary"]] == [
        "throughput",
        "history events/step",
        "gas",
        "signer",
        "verification",
        "webhook",
        "memory",
        "anchor latency",
    ]


def test_memory_measures_the_same_waiting_runs_with_and_without_checkpoints(
    report: dict[str, Any],
) -> None:
    cfg = BenchConfig.quick()
    mem = report["memory"]
    for part in (mem["batched"], mem["baseline"]):
        assert part["runs_waiting"] == cfg.memory_runs and part["steps_each"] == cfg.memory_steps
        assert part["rss_waiting_mb"] >= part["rss_idle_mb"] > 0
    assert mem["ratio"] == round(
        mem["batched"]["rss_waiting_mb"] / mem["baseline"]["rss_waiting_mb"], 4
    )


def test_anchor_latency_covers_every_step_of_its_runs(report: dict[str, Any]) -> None:
    a = report["anchor_latency"]
    # every step record (the activity steps and each run's outcome step) was anchored and timed
    assert a["steps_measured"] == a["steps_expected"] == a["runs"] * (BenchConfig.quick().steps + 1)
    assert a["p95_ms"] >= a["p50_ms"] > 0
    assert a["baseline"]["max_wait_ms"] == BenchConfig.quick().latency_max_wait * 1000


def test_throughput_runs_every_mode_and_counts_history_events(report: dict[str, Any]) -> None:
    cfg = BenchConfig.quick()
    t = report["throughput"]
    assert t["baseline"]["mode"] == "none"
    assert set(t["modes"]) == {"none", "batched", "per-step"}
    for mode, row in t["modes"].items():
        assert row["runs"] == cfg.runs * cfg.rounds and row["failed"] == 0, mode
        assert row["runs_per_s"] > 0 and row["p95_ms"] >= row["p50_ms"] > 0, mode
        assert row["history_events_per_step"] > 0, mode
    assert t["unanchored_runs"] == 0  # batched runs waited for their anchoring
    events = t["modes"]
    # batched adds no activity per step; per-step adds one activity (and a task) per step
    assert events["batched"]["workflow_tasks_per_run"] == events["none"]["workflow_tasks_per_run"]
    assert (
        events["per-step"]["history_events_per_step"] > events["batched"]["history_events_per_step"]
    )
    assert set(t["ratios"]) >= {"batched_vs_none", "per_step_vs_none"}


def test_gas_rows_cover_every_batch_size_next_to_per_step(report: dict[str, Any]) -> None:
    g = report["gas"]
    sizes = [r["steps_per_tx"] for r in g["rows"] if r["mode"] == "batched"]
    assert sizes == [1, 16, 128, 1024]
    assert g["baseline"]["mode"] == "per-step"
    per_step = [r for r in g["rows"] if r["mode"] == "batched"]
    assert per_step[-1]["gas_per_step"] < per_step[0]["gas_per_step"]
    assert g["met"]  # amortization is a property of the contract, not of the machine


def test_signer_sends_everything_exactly_once_in_order(report: dict[str, Any]) -> None:
    s = report["signer"]
    assert s["baseline"]["mined_ok"] == s["baseline"]["txs"]
    assert s["signer"]["mined_ok"] == s["signer"]["txs"]
    assert s["signer"]["errors"] == 0
    assert s["nonce_errors"] == 0 and s["stuck"] == 0
    assert s["signer"]["rpc_requests_per_send"] < 3  # requests are shared, not 3 per send


def test_signer_two_processes_share_one_key_on_postgres(report: dict[str, Any]) -> None:
    """Two worker processes, one key, one PostgreSQL store: every send mined exactly once,
    nonces contiguous, nothing stuck (or the measurement says why it was skipped)."""
    two = report["signer"]["two_processes"]
    assert two["processes"] == 2
    if two.get("skipped"):
        assert two["met"] is False and "PostgreSQL" in two["skipped"]
        return
    cfg = BenchConfig.quick()
    assert two["baseline"]["mined_ok"] == two["baseline"]["txs"]
    sg = two["signer"]
    assert sg["txs"] == (cfg.signer_txs // 2) * 2 * cfg.signer_rounds == sg["mined_ok"]
    assert sg["errors"] == 0 and sg["nonce_errors"] == 0 and sg["stuck"] == 0
    assert sg["every_send_mined_exactly_once"]
    assert isinstance(two["ratio"], float) and two["ratio"] > 0
    assert report["signer"]["met"] == (report["signer"]["met_one_process"] and two["met"])


def test_signer_two_processes_skipped_without_postgres(tmp_path: Any) -> None:
    """No PostgreSQL server: the shared-key measurement is skipped with its reason, not met."""
    import asyncio

    from ledgerflow_bench.harness import _signer_shared_key

    class World:
        runtime = None
        tmp = tmp_path

    cfg = BenchConfig.quick(signer_pg_url="postgresql+psycopg://nobody@127.0.0.1:1/none")

    async def never() -> Any:
        raise AssertionError("nothing is measured without a store")

    out = asyncio.run(_signer_shared_key(World(), cfg, never, never))  # type: ignore[arg-type]
    assert out["met"] is False and out["ratio"] is None
    assert out["skipped"].startswith("PostgreSQL unreachable")


def test_verification_and_webhook_sections_verify_and_start(report: dict[str, Any]) -> None:
    v = report["verification"]
    assert v["spec_version"] == 2 and v["roots"] >= 1
    for path in ("store", "bundle"):  # every check, sealed, nothing found
        assert v[path]["ok"] and v[path]["sealed"] and v[path]["findings"] == 0, path
        assert {"parse", "records", "proofs", "chain", "seal"} <= set(v[path]["phases"]), path
    assert "load" in v["store"]["phases"]
    assert v["baseline"]["ok"]
    cli = v["cli"]
    assert cli["ok"] and cli["steps"] == 10 and cli["startup_s"] > 0 and cli["wall_s"] > 0
    assert isinstance(cli["met"], bool) and set(v["met_detail"]) == {"store", "bundle", "cli"}
    w = report["webhook"]
    assert w["webhook"]["refused"] == 0
    assert w["transport"].startswith("real HTTP")
    # Served as deployed: `ledgerflow api` in a process of its own, whose own latency histogram
    # the bench reads; the aiohttp client's deliveries were accepted too (counted in refused).
    assert w["server"] == "process"
    assert w["server_mean_ms"]["webhook_in_api"] is not None
    assert w["webhook_aiohttp"]["p50_ms"] > 0
    assert set(w["components_p50_ms"]) >= {"http_round_trip", "store_bind", "start", "rest"}


def test_report_renders_as_tables(report: dict[str, Any]) -> None:
    buf = io.StringIO()
    render_report(report, Console(file=buf, width=140))
    text = buf.getvalue()
    for title in ("Throughput", "Gas", "Signer", "Verification", "Webhook", "Targets"):
        assert title in text


def test_options() -> None:
    cfg = config_from_options(quick=True, sections="gas,signer", gas_batch_sizes="1,16", runs=None)
    assert cfg.sections == ["gas", "signer"] and cfg.gas_batch_sizes == [1, 16]
    assert cfg.runs == BenchConfig.quick().runs
    assert config_from_options(runs=7).runs == 7
    with pytest.raises(ConfigError, match="steps"):
        config_from_options(steps=2)  # K >= 5
    with pytest.raises(ConfigError):
        config_from_options(sections="throughput,nonsense")


def test_percentile() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([3.0], 95) == 3.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(101)), 95) == 95
