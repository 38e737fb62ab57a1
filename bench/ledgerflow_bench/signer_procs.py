"""One worker process of the signer bench's shared-key measurement (``ledgerflow bench``).

    LEDGERFLOW_DATABASE_URL=URL python -m ledgerflow_bench.signer_procs --rpc URL \\
        --key-file F --registry ADDRESS --chain-id N --prefix P --count N --out RESULT.json

Each process is what a worker is to the signer: its own engine on the shared PostgreSQL store,
its own JSON-RPC session and its own :class:`~ledgerflow.chain.signer.Signer` for the one key
that every process shares (nonces through the store's sender lock and counter). It sets itself
up (imports, connections, one warm-up send), prints ``ready``, waits for a line on stdin, then
sends ``count`` ``anchorRoot`` calls (random roots) concurrently with keys ``P:0`` ... and
writes what happened to ``--out``: when it started and finished (``time.monotonic``, which is
one clock for every process of the machine), how many were mined, errors, nonce errors and
HTTP requests. The key is passed in a file and the store's URL in the environment, never on
the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


async def _run(args: argparse.Namespace) -> None:
    from ledgerflow.chain.artifacts import load_artifact
    from ledgerflow.chain.rpc import connect_async
    from ledgerflow.chain.signer import Signer
    from ledgerflow.log import configure_logging
    from ledgerflow.store import Store

    configure_logging("WARNING", "json")  # as `ledgerflow bench` does; to stderr
    store = Store(os.environ["LEDGERFLOW_DATABASE_URL"])
    w3 = connect_async([args.rpc], chain_id=args.chain_id)
    key = Path(args.key_file).read_text().strip()
    signer = Signer(w3, key, store, args.chain_id, timeout=120.0)
    registry = w3.eth.contract(address=args.registry, abi=load_artifact("CheckpointRegistry").abi)

    def call() -> Any:
        return registry.functions.anchorRoot(os.urandom(32), 1, [])

    await signer.send(f"{args.prefix}:warmup", call(), contract="CheckpointRegistry")
    calls = [call() for _ in range(args.count)]
    requests_before = signer.rpc_requests
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    errors: list[str] = []

    async def one(i: int, c: Any) -> bool:
        try:
            receipt = await signer.send(f"{args.prefix}:{i}", c, contract="CheckpointRegistry")
            return receipt.ok
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            return False

    started, cpu = time.monotonic(), time.process_time()
    results = await asyncio.gather(*(one(i, c) for i, c in enumerate(calls)))
    finished, cpu = time.monotonic(), time.process_time() - cpu
    out: dict[str, Any] = {
        "started": started,
        "finished": finished,
        "sent": args.count,
        "mined_ok": sum(results),
        "errors": errors[:5],
        "error_count": len(errors),
        "nonce_errors": signer.nonce_errors,
        "rpc_requests": signer.rpc_requests - requests_before,
        "cpu_seconds": cpu,
        "address": signer.address,
    }
    Path(args.out).write_text(json.dumps(out))
    await w3.provider.disconnect()  # type: ignore[attr-defined]
    store.engine.dispose()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for name in ("--rpc", "--key-file", "--registry", "--prefix", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--chain-id", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    asyncio.run(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
