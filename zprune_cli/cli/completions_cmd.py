"""Shell completion scripts, generated from the app.

The scripts call back into `zprune` (with _ZPRUNE_COMPLETE set) at completion time, so they stay valid
as commands and options change; only the program name and the shells are baked in. The copies under
completions/ are regenerated with `python completions/generate.py` (tests/test_completions.py fails
when they are stale).
"""

from __future__ import annotations

from typing import Annotated

import typer
from typer.completion import get_completion_script

from zprune_cli.cli.app import app
from zprune_cli.base.errors import ZpruneUsageError

SHELLS = ("bash", "zsh", "fish")
PROG_NAME = "zprune"
COMPLETE_VAR = "_ZPRUNE_COMPLETE"  # the variable Typer's runtime completion reads for prog "zprune"
FILE_NAMES = {"bash": "zprune.bash", "zsh": "_zprune", "fish": "zprune.fish"}


def completion_script(shell: str) -> str:
    """The completion script for `shell`, ending in a newline, exactly as `zprune completions` prints it."""
    if shell not in SHELLS:
        raise ZpruneUsageError(f"unknown shell {shell!r} (use {', '.join(SHELLS)})")
    return get_completion_script(prog_name=PROG_NAME, complete_var=COMPLETE_VAR, shell=shell) + "\n"


def _complete_shell(incomplete: str) -> list[str]:
    return [s for s in SHELLS if s.startswith(incomplete)]


Shell = Annotated[str, typer.Argument(help="bash, zsh or fish.", autocompletion=_complete_shell, show_default=False)]


@app.command("completions")
def completions_command(shell: Shell) -> None:
    """Print a shell completion script for zprune.

    \b
    Examples:
      zprune completions bash > ~/.local/share/bash-completion/completions/zprune
      zprune completions zsh > ~/.zfunc/_zprune      # with fpath+=(~/.zfunc) before compinit
      zprune completions fish > ~/.config/fish/completions/zprune.fish
    """
    typer.echo(completion_script(shell), nl=False)
