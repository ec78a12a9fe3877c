"""The CLI as the tests call it, in this process (the installed executable costs a fresh torch
import: seconds): one torch thread, and a terminal wide enough that a message is one line."""

from __future__ import annotations

from typer.testing import CliRunner

from vaekit_cli.main import app


def invoke(*args):
    """`vaekit --threads 1 ARGS...` (paths and numbers are turned into text)."""
    return CliRunner().invoke(app, ["--threads", "1", *map(str, args)], env={"COLUMNS": "300"})


def one_line_refusal(r, code: int = 2) -> bool:
    """Whether a result is a refusal as vaekit gives one: the exit code, one line, no traceback."""
    return r.exit_code == code and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


def one_line_exit_2(r) -> str:
    """Assert that `r` is a one-line refusal with exit code 2; its text."""
    assert one_line_refusal(r), r.output
    return r.output
