"""Reading a run's checkpoints from a SQLite store with the standard library's driver.

``ledgerflow verify <id>`` and ``ledgerflow export`` read four things of one run: the run row,
its steps, their anchors and its seal. Through :class:`ledgerflow.store.Store` that costs the
import of SQLAlchemy and SQLModel (most of the command's start-up); :class:`SqliteReader` reads
the same rows with :mod:`sqlite3`, as plain objects with the same attribute names, so
:func:`ledgerflow.checkpoint.bundle.build_bundle` builds the same bundle from either.
:func:`open_reader` picks it for a plain SQLite file URL and falls back to ``Store`` for
anything else (PostgreSQL, in-memory or URI filenames).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ledgerflow.errors import StoreError

__all__ = ["SqliteReader", "open_reader"]

_RUN_COLUMNS = (
    "id",
    "workflow_id",
    "run_id",
    "workflow_type",
    "run_key",
    "anchor_mode",
    "status",
    "head",
    "steps",
    "spec_version",
)
_ANCHOR_COLUMNS = (
    "id",
    "mode",
    "root",
    "leaf_count",
    "status",
    "tx_hash",
    "block_number",
    "chain_id",
    "registry_address",
)
_SEAL_COLUMNS = ("id", "run_key", "steps", "head", "status", "tx_hash", "block_number")
#: The columns of ``Store.step_tuples``, in its order (tests pin the two together).
STEP_COLUMNS = (
    "seq",
    "kind",
    "name",
    "status",
    "input_hash",
    "output_hash",
    "prev",
    "spec_version",
    "input_preimage",
    "output_preimage",
    "input_salt",
    "output_salt",
    "redacted_at",
    "anchor_id",
    "proof",
)


def sqlite_file(url: str) -> str | None:
    """The file of a plain ``sqlite:///PATH`` URL (as ``Store`` reads it), else None."""
    if not url.startswith("sqlite:///") or "?" in url:
        return None
    path = url[len("sqlite:///") :]
    if not path or path == ":memory:" or "://" in path or path.startswith("file:"):
        return None
    return path


class SqliteReader:
    """The read side of ``Store`` that exporting and verifying a run needs, over sqlite3."""

    def __init__(self, path: str) -> None:
        if not Path(path).is_file():
            raise StoreError(
                f"no store at sqlite:///{path} (from LEDGERFLOW_DATABASE_URL or the default, "
                f"relative to {Path.cwd()}); run this where the store is, or set "
                "LEDGERFLOW_DATABASE_URL"
            )
        self.path = path
        # One reader, used from one thread at a time (export runs in a worker thread).
        self._conn = sqlite3.connect(path, timeout=30, check_same_thread=False)

    def __repr__(self) -> str:
        return f"SqliteReader({self.path})"

    def close(self) -> None:
        self._conn.close()

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the store at {self.path}: {exc}") from None

    def get_run(self, workflow_id: str, run_id: str | None = None) -> Any:
        """As ``Store.get_run``: the run (the latest of the workflow id without ``run_id``).

        Raises:
            StoreError: no such run is stored.
        """
        sql = f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE workflow_id = ?"
        params: list[Any] = [workflow_id]
        if run_id:
            sql += " AND run_id = ?"
            params.append(run_id)
        rows = self._rows(sql + " ORDER BY id DESC LIMIT 1", params)
        if not rows:
            raise StoreError(f"no checkpointed run for workflow {workflow_id!r}")
        return SimpleNamespace(**dict(zip(_RUN_COLUMNS, rows[0], strict=True)))

    def step_tuples(self, workflow_id: str, run_id: str) -> list[tuple[Any, ...]]:
        """As ``Store.step_tuples``: the run's steps as tuples of :data:`STEP_COLUMNS`."""
        return self._rows(
            f"SELECT {', '.join(STEP_COLUMNS)} FROM steps WHERE workflow_id = ? AND run_id = ? "
            "ORDER BY seq",
            (workflow_id, run_id),
        )

    def get_anchors(self, ids: Iterable[int]) -> dict[int, Any]:
        """As ``Store.get_anchors``: the anchor rows of ``ids`` by id."""
        wanted = sorted({int(i) for i in ids})
        out: dict[int, Any] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT {', '.join(_ANCHOR_COLUMNS)} FROM anchors WHERE id IN ({marks})"
            for row in self._rows(sql, chunk):
                out[row[0]] = SimpleNamespace(**dict(zip(_ANCHOR_COLUMNS, row, strict=True)))
        return out

    def get_seal(self, workflow_id: str, run_id: str) -> Any:
        """As ``Store.get_seal``: the run's seal row, or None."""
        rows = self._rows(
            f"SELECT {', '.join(_SEAL_COLUMNS)} FROM seals WHERE workflow_id = ? AND run_id = ?",
            (workflow_id, run_id),
        )
        return SimpleNamespace(**dict(zip(_SEAL_COLUMNS, rows[0], strict=True))) if rows else None


def open_reader(url: str) -> Any:
    """A reader of the store at ``url`` that never creates it: :class:`SqliteReader` for a
    plain SQLite file, else ``Store(url, create=False)``. Close it with :func:`close_reader`."""
    path = sqlite_file(url)
    if path is not None:
        return SqliteReader(path)
    from ledgerflow.store import Store

    return Store(url, create=False)


def close_reader(reader: Any) -> None:
    if isinstance(reader, SqliteReader):
        reader.close()
    else:
        reader.engine.dispose()
