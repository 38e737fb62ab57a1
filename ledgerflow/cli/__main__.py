"""``python -m ledgerflow.cli``."""

from ledgerflow.cli.main import main

main()
