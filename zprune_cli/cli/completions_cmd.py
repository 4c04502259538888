from __future__ import annotations

from zprune_cli.cli.app import app
from zprune_cli.errors import NotImplementedYet


@app.command("completions")
def completions_command() -> None:
    """Not implemented yet."""
    raise NotImplementedYet("zprune completions is not implemented yet")
