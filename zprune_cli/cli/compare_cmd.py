from __future__ import annotations

from zprune_cli.cli.app import app
from zprune_cli.errors import NotImplementedYet


@app.command("compare", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def compare_command() -> None:
    """Not implemented yet."""
    raise NotImplementedYet("zprune compare is not implemented yet")
