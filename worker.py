"""Thin entry point: ``python worker.py`` is ``ledgerflow worker``."""

from ledgerflow.cli.main import main

if __name__ == "__main__":
    main(["worker"])
