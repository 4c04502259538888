"""Global options (given before or after the command) and the translation of library errors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import click
import typer
from typer.core import TyperGroup

from zprune_cli.cli.output import RichProgress, error, setup_logging
from zprune_cli.errors import ZpruneError


@dataclass
class Common:
    cache_dir: Optional[Path] = None
    device: str = "auto"
    dtype: str = "auto"
    quiet: bool = False
    json: bool = False

    @property
    def progress(self) -> RichProgress:
        return RichProgress(quiet=self.quiet or self.json and not os.environ.get("ZPRUNE_PROGRESS_WITH_JSON"))


def common(ctx: typer.Context, cache_dir=None, device=None, dtype=None, quiet=False, json=False) -> Common:
    """Merge a command's own global options over those given before the command name."""
    base: Common = (ctx.find_root().obj if ctx.find_root().obj else Common())
    merged = Common(
        cache_dir=cache_dir or base.cache_dir,
        device=device or base.device,
        dtype=dtype or base.dtype,
        quiet=quiet or base.quiet,
        json=json or base.json,
    )
    setup_logging(merged.quiet or merged.json)
    return merged


class ZpruneGroup(TyperGroup):
    """Turns library errors into one red line and an exit code (1 failed run, 2 bad usage).

    ZPRUNE_DEBUG=1 shows the full traceback instead.
    """

    def list_commands(self, ctx):  # keep the order the commands were added
        return list(self.commands)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ZpruneError as exc:
            if os.environ.get("ZPRUNE_DEBUG"):
                raise
            error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            error("interrupted; nothing half-written was kept")
            raise typer.Exit(130) from None
