"""The ``ledgerflow`` command line."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ledgerflow.errors import LedgerflowError
from ledgerflow.log import configure_logging
from ledgerflow.settings import Settings, get_settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="ledgerflow",
    help="Durable workflows where AI decides and a blockchain keeps the books.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _settings() -> Settings:
    s = get_settings()
    configure_logging(s.log_level, s.log_format)
    return s


def _until_signal(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``serve(stop)`` until SIGINT or SIGTERM sets ``stop``."""
    import signal

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    asyncio.run(_main())


def _serve(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """A long-running service (worker, API): with JSON logs, its fatal error is a JSON line too,
    so a log pipeline never sees plain text from it."""
    from ledgerflow.log import json_logging

    try:
        _until_signal(serve)
    except LedgerflowError as exc:
        if not json_logging():
            raise
        import structlog

        structlog.get_logger("ledgerflow.cli").error(
            "service stopped", error=type(exc).__name__, detail=str(exc)
        )
        raise typer.Exit(2) from None


def _emit(data: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        for k, v in data.items():
            out.print(f"[bold]{k}[/bold]: {v}")


@app.command()
def up(demo: Annotated[bool, typer.Option(help="run one demo workflow")] = True) -> None:
    """Start the embedded stack, deploy, run a demo, and serve until Ctrl-C.

    Exit code 0 after Ctrl-C or SIGTERM (1 if the demo run did not verify), 2 if something is in
    the way at start (a taken port, another `up` on the same state directory), 3 if a service died
    while it ran (every other one is stopped first).
    """
    from ledgerflow.dev.up import run_up

    raise typer.Exit(run_up(_settings(), demo=demo))


@app.command()
def worker(
    anchorer: Annotated[bool, typer.Option(help="also run the batch anchorer")] = True,
) -> None:
    """Run a worker (workflows, activities and the batch anchorer)."""
    from ledgerflow.worker.runner import run_worker

    settings = _settings()
    _serve(lambda stop: run_worker(settings, stop, anchorer=anchorer))


@app.command()
def api() -> None:
    """Serve the HTTP API (webhooks, health, OpenAPI at /docs)."""
    from ledgerflow.api.webhooks import serve_api

    settings = _settings()
    _serve(lambda stop: serve_api(settings, stop))


@app.command()
def deploy(
    seed: Annotated[bool, typer.Option(help="seed the procurement demo data")] = True,
    force: Annotated[bool, typer.Option(help="deploy even if the file is current")] = False,
) -> None:
    """Deploy the contracts and write the deployment file."""
    from ledgerflow.chain import deploy as d

    settings = _settings()
    path = settings.deployments_path
    if (
        not force
        and path.exists()
        and d.deployment_is_current(settings.rpc_url, d.load_deployment(path))
    ):
        out.print(f"deployment at {path} is current; use --force to redeploy")
        return
    keys = [
        (k.get_secret_value() if k else settings.dev_key(i))
        for i, k in enumerate(
            (settings.orchestrator_key, settings.agent_key, settings.approver_key)
        )
    ]
    dep = d.deploy_all(settings.rpc_url, keys[0], agent_key=keys[1], approver_key=keys[2])
    d.save_deployment(path, dep)
    if seed:
        d.seed_demo(settings.rpc_url, dep, keys[0], keys[1])
    _emit({"deployment": str(path), **dep.contracts}, False)


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except LedgerflowError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def start(
    workflow_type: Annotated[str, typer.Argument(help="e.g. ProcurementWorkflow")],
    input: Annotated[str, typer.Option("--input", "-i", help="the input as JSON")] = "{}",
    id: Annotated[str | None, typer.Option("--id", help="workflow id")] = None,
    wait: Annotated[bool, typer.Option(help="wait for the result")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Start a workflow."""
    from ledgerflow.sdk.client import LedgerflowClient

    settings = _settings()

    async def _main() -> dict[str, Any]:
        lf = await LedgerflowClient.connect(settings)
        handle = await lf.start(workflow_type, input, workflow_id=id)
        data: dict[str, Any] = {"workflow_id": handle.id, "run_id": handle.result_run_id}
        if wait:
            if not as_json:
                err.print(f"started {handle.id}; waiting for the result (Ctrl-C stops waiting)")
            data["result"] = await _wait_with_progress(lf, handle.id, show=not as_json)
        return data

    _emit(_run(_main()), as_json)


async def _wait_with_progress(lf: Any, workflow_id: str, *, show: bool) -> dict[str, Any]:
    """Wait for the result; meanwhile print each phase and step count as the run moves."""
    result_task = asyncio.ensure_future(lf.result(workflow_id))
    last: tuple[Any, ...] = ()
    while not result_task.done():
        if show:
            try:
                st = await lf.status(workflow_id)
            except Exception:  # progress is best effort; the result decides
                st = None
            if st is not None and st.state is not None:
                now = (st.phase, st.steps, st.anchor_state)
                if now != last:
                    last = now
                    waiting = f", waiting for {st.awaiting}" if st.awaiting else ""
                    err.print(
                        f"  {now[0]}: {now[1]} step(s) checkpointed, anchors {now[2] or 'pending'}"
                        f"{waiting}"
                    )
        await asyncio.wait([result_task], timeout=0.5)
    value = result_task.result()
    result: dict[str, Any] = (
        value.model_dump(mode="json") if hasattr(value, "model_dump") else dict(value)
    )
    if show:
        err.print(
            f"  done: {result.get('outcome')} after {result.get('steps')} steps, "
            f"{'anchored' if result.get('anchored') else 'anchoring pending'}"
        )
    return result


@app.command()
def status(
    workflow_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show a run's status, steps, head and anchor state."""
    from ledgerflow.sdk.client import LedgerflowClient

    settings = _settings()

    async def _main() -> dict[str, Any]:
        lf = await LedgerflowClient.connect(settings)
        return (await lf.status(workflow_id)).model_dump(mode="json")

    _emit(_run(_main()), as_json)


@app.command()
def verify(
    workflow_id: str,
    run_id: Annotated[str | None, typer.Option(help="a specific run")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    no_history: Annotated[
        bool, typer.Option("--no-history", help="skip the Temporal cross-check")
    ] = False,
) -> None:
    """Verify a run against its preimages, the chain and Temporal history. Exit 0 only if ok."""
    from ledgerflow.checkpoint.verify import verify_run
    from ledgerflow.runtime import Runtime
    from ledgerflow.temporal import connect

    settings = _settings()

    async def _main() -> Any:
        client = None
        if not no_history:
            try:
                client = await connect(settings.temporal_address, settings.namespace, timeout=5)
            except LedgerflowError:
                err.print("note: Temporal is not reachable; verifying without history")
        runtime = Runtime(settings)
        try:
            return await verify_run(runtime, workflow_id, run_id, client=client)
        finally:
            await runtime.aclose()

    report = _run(_main())
    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        mark = "[green]ok[/green]" if report.ok else "[red]FAILED[/red]"
        out.print(f"{report.workflow_id} ({report.run_id}): {mark}")
        out.print(f"steps {report.steps}, head {report.head}, mode {report.anchor_mode}")
        for p in report.problems:
            out.print(f"  - {p}")
        if report.first_bad_step is not None:
            out.print(f"first bad step: {report.first_bad_step}")
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def proof(
    workflow_id: str,
    step: Annotated[int, typer.Option("--step", "-n", help="the step's seq (0-based)")],
    run_id: Annotated[str | None, typer.Option(help="a specific run")] = None,
    output: Annotated[Path | None, typer.Option("--out", "-o", help="write to this file")] = None,
    include_preimages: Annotated[
        bool, typer.Option(help="disclose this step's own input and output values")
    ] = False,
) -> None:
    """Write the self-contained proof document of one step (reveals no other step)."""
    from ledgerflow.checkpoint.proofs import build_step_proof
    from ledgerflow.runtime import Runtime

    settings = _settings()

    async def _main() -> dict[str, Any]:
        runtime = Runtime(settings)
        try:
            return await build_step_proof(
                runtime, workflow_id, step, run_id, include_preimages=include_preimages
            )
        finally:
            await runtime.aclose()

    doc = _run(_main())
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        err.print(f"wrote the proof of step {step} of {workflow_id} to {output}")


@app.command("verify-proof")
def verify_proof(
    file: Annotated[Path, typer.Argument(help="a proof document written by `ledgerflow proof`")],
    offline: Annotated[bool, typer.Option(help="skip the chain checks")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Check a step proof offline and against the chain (RPC from settings). Exit 0 only if ok."""
    from ledgerflow.checkpoint.proofs import verify_proof_document

    settings = _settings()
    w3 = None
    if not offline:
        from ledgerflow.chain.deploy import connect as connect_chain

        w3 = connect_chain(settings.rpc_url)
    try:
        check = verify_proof_document(file.read_text(), w3=w3)
    except (OSError, LedgerflowError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(check.model_dump_json(indent=2) + "\n")
    else:
        mark = "[green]ok[/green]" if check.ok else "[red]FAILED[/red]"
        out.print(f"{file}: {mark}")
        for p in check.problems:
            out.print(f"  - {p}")
    raise typer.Exit(0 if check.ok else 1)


@app.command()
def bench(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    quick: Annotated[bool, typer.Option(help="tiny sizes: a smoke run")] = False,
    only: Annotated[
        str | None, typer.Option(help="sections, e.g. throughput,gas,signer,verification,webhook")
    ] = None,
    runs: Annotated[int | None, typer.Option(help="throughput: N concurrent runs")] = None,
    steps: Annotated[int | None, typer.Option(help="throughput: K steps per run")] = None,
    rounds: Annotated[int | None, typer.Option(help="throughput: rounds of all modes")] = None,
    gas_sizes: Annotated[str | None, typer.Option(help="gas: batch sizes, e.g. 1,16")] = None,
    signer_txs: Annotated[int | None, typer.Option(help="signer: M concurrent sends")] = None,
    verify_steps: Annotated[int | None, typer.Option(help="verification: steps")] = None,
    webhooks: Annotated[int | None, typer.Option(help="webhook: starts per path")] = None,
) -> None:
    """Measure checkpointing against its baselines on a throw-away stack of its own."""
    try:
        from ledgerflow_bench.harness import (
            config_from_options,
            progress_printer,
            render_report,
            run_bench_cli,
        )
    except ImportError:
        err.print(
            "[red]error:[/red] the benchmark harness is not installed: it lives in the "
            "repository's bench/ folder (`make test` and `make run` install it; or run "
            "`pip install -e bench/` in a checkout)"
        )
        raise typer.Exit(2) from None

    configure_logging("WARNING", "auto")
    try:
        cfg = config_from_options(
            quick=quick,
            sections=only,
            runs=runs,
            steps=steps,
            rounds=rounds,
            gas_batch_sizes=gas_sizes,
            signer_txs=signer_txs,
            verify_steps=verify_steps,
            webhooks=webhooks,
        )
    except LedgerflowError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    report = _run(run_bench_cli(cfg, progress=progress_printer()))
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        render_report(report, out)


from ledgerflow.cli.schedule import schedule_app, watch  # noqa: E402

app.add_typer(schedule_app, name="schedule")
app.command()(watch)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    code: int | str | None = 0
    try:
        app(args=list(argv) if argv is not None else None)
    except LedgerflowError as exc:
        err.print(f"[red]error:[/red] {exc}")
        code = 2
    except SystemExit as exc:
        code = exc.code
    # Everything is done and every child stopped. Leave without interpreter finalization: the
    # Temporal SDK's native runtime can abort it (PyGILState_Release, sdk-python#300), which
    # would turn a successful command into a crash.
    sys.stdout.flush()
    sys.stderr.flush()
    if isinstance(code, str):
        err.print(code)
        code = 1
    os._exit(code or 0)


if __name__ == "__main__":
    main()
