from __future__ import annotations

from zprune_cli.cli.app import app
from zprune_cli.errors import NotImplementedYet


@app.command("prune", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def prune_command() -> None:
    """Not implemented yet."""
    raise NotImplementedYet("zprune prune is not implemented yet")
