"""The ``ledgerflow`` command line."""

from ledgerflow.cli.main import app, main

__all__ = ["app", "main"]
