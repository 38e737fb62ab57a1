"""Thin entry point: ``python worker.py`` is ``ledgerflow worker``."""

from ledgerflow.cli import main

if __name__ == "__main__":
    main(["worker"])
