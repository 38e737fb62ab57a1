"""The README's "A first session": its commands, in order, and a runner that follows them the way
a newcomer would (reading ``ledgerflow status`` until the run waits for what the next command
answers)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTION = "## A first session"
#: Commands that set up the reader's shell, not part of what runs against the stack.
SHELL_SETUP = ("source ",)


def first_session_commands(readme: Path = README) -> list[str]:
    """Every command of the README's first-session section, continuation lines joined."""
    text = readme.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith("#") and not line.startswith(SHELL_SETUP):
                commands.append(line)
    return commands


@dataclass
class Ran:
    command: str
    returncode: int
    output: str


def run_first_session(
    env: Mapping[str, str], cwd: Path, *, timeout: float = 120, wait_for_status: float = 90
) -> list[Ran]:
    """Run the section's commands in order with ``bash``; a ``ledgerflow status`` is repeated
    (as a reader would) until the run waits for something or has ended."""
    ran: list[Ran] = []
    for command in first_session_commands():
        deadline = time.monotonic() + wait_for_status
        while True:
            proc = subprocess.run(
                ["bash", "-c", command],
                env=dict(env),
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            output = proc.stdout + proc.stderr
            settled = "waiting for" in output or "outcome " in output
            if not command.startswith("ledgerflow status ") or settled:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        ran.append(Ran(command, proc.returncode, output))
        if proc.returncode != 0:
            break
    return ran
