"""Processes the many-workers tests start: each is a real OS process with its own engine, web3
session and signer, as a worker would be.

    python -m tests.support.worker_procs send --db URL --rpc URL --key-file F --prefix P \\
        --count N --to ADDRESS --out RESULT.json
    LEDGERFLOW_...=... python -m tests.support.worker_procs anchor

``send`` sends ``count`` concurrent 1-wei transfers through one Signer (keys ``P:0`` ...) and
writes what happened to ``--out``. ``anchor`` runs the batch anchorer (with its lease) until
killed, configured by ``LEDGERFLOW_*`` variables like a worker (the key in
``LEDGERFLOW_ORCHESTRATOR_KEY_FILE``). Keys are passed in files, never on the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any


async def _send(args: argparse.Namespace) -> None:
    from ledgerflow.chain.rpc import connect_async
    from ledgerflow.chain.signer import Signer
    from ledgerflow.store import Store

    store = Store(args.db)
    w3 = connect_async([args.rpc])
    key = Path(args.key_file).read_text().strip()
    signer = Signer(w3, key, store, 31337, timeout=60.0, rebroadcast_every=0.5)
    errors: list[str] = []

    async def one(i: int) -> None:
        try:
            await signer.send_tx(f"{args.prefix}:{i}", to=args.to, value=1)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(args.count)))
    result: dict[str, Any] = {
        "sent": args.count - len(errors),
        "errors": errors,
        "nonce_errors": signer.nonce_errors,
        "seconds": round(time.monotonic() - t0, 3),
        "address": signer.address,
    }
    Path(args.out).write_text(json.dumps(result))
    await w3.provider.disconnect()  # type: ignore[attr-defined]


async def _anchor(args: argparse.Namespace) -> None:
    from ledgerflow.checkpoint.anchorer import Anchorer
    from ledgerflow.log import configure_logging
    from ledgerflow.runtime import Runtime
    from ledgerflow.settings import Settings

    configure_logging("INFO", "json")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    runtime = Runtime(settings)
    await asyncio.to_thread(runtime.store.migrate)
    anchorer = Anchorer(
        runtime, batch_size=settings.anchor_batch_size, max_wait=settings.anchor_max_wait_seconds
    )
    stop = asyncio.Event()
    await anchorer.run(stop)  # until killed


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    send = sub.add_parser("send")
    for name in ("--db", "--rpc", "--key-file", "--prefix", "--to", "--out"):
        send.add_argument(name, required=True)
    send.add_argument("--count", type=int, required=True)
    sub.add_parser("anchor")
    args = parser.parse_args(argv)
    asyncio.run(_send(args) if args.cmd == "send" else _anchor(args))


if __name__ == "__main__":
    main(sys.argv[1:])
