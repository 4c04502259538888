"""Global options (given before or after the command) and the translation of library errors."""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import click
import typer
from typer.core import TyperCommand, TyperGroup

from zprune_cli.base.choices import RECONSTRUCTIONS
from zprune_cli.cli.output import error, setup_logging
from zprune_cli.cli.progress import progress_for
from zprune_cli.cli import Terminated, interrupted, swallowed_signal
from zprune_cli.base import distributed
from zprune_cli.base.errors import ZpruneUsageError, translate
from zprune_cli.base.settings import Settings, load_settings


@dataclass
class RootFlags:
    """Global options given before the command name, as typed (resolved later, with the command's own)."""

    cache_dir: Optional[Path] = None
    device: Optional[str] = None
    dtype: Optional[str] = None
    quiet: bool = False
    json: bool = False


@dataclass
class Common:
    settings: Settings
    quiet: bool = False
    json: bool = False

    @property
    def progress(self):
        # JSON goes to stdout, progress to stderr: they never meet, so only --quiet silences progress
        return progress_for(self.quiet)

    @property
    def cache_dir(self) -> Path:
        return self.settings.cache_dir


def common(ctx: typer.Context, cache_dir=None, device=None, dtype=None, quiet=False, json=False, **flags) -> Common:
    """Resolve the settings once: defaults < zprune.toml < ZPRUNE_* < flags (the command's own over the
    global ones given before it). `flags` are the command's data_dir, data, nsamples, seqlen, seed."""
    base: RootFlags = ctx.find_root().obj or RootFlags()
    quiet, json = quiet or base.quiet, json or base.json
    setup_logging(quiet or json)
    settings = load_settings({"cache_dir": cache_dir or base.cache_dir, "device": device or base.device,
                              "dtype": dtype or base.dtype, **flags})
    return Common(settings, quiet, json)


def model_handle(model: str, c: Common, revision: Optional[str] = None, trust_remote_code: bool = False,
                 offload: str = "none", dry_run: bool = False):
    """The model a command works on: resolved now (fails fast on a bad spec), loaded when first needed
    (never for a dry run, which reads its config alone)."""
    from zprune_cli.models.handle import ModelHandle

    return ModelHandle(model, c.settings.device, c.settings.dtype, revision, trust_remote_code, offload, config_only=dry_run)


class AliasedCommand(TyperCommand):
    """A command that still accepts the old spellings of renamed options, for one release, saying so."""

    aliases: dict[str, str] = {}
    # Options that may be given bare, and the value that means; e.g. `--reconstruct` alone is `--reconstruct obs`.
    bare: dict[str, tuple[str, tuple[str, ...]]] = {"--reconstruct": ("obs", RECONSTRUCTIONS)}

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        renamed = []
        for i, arg in enumerate(args):
            name, eq, value = arg.partition("=")
            if arg == "--":
                renamed += args[i:]
                break
            if name in self.aliases:
                sys.stderr.write(f"warning: {name} is the old spelling of {self.aliases[name]}; it goes in the next release\n")
                arg = self.aliases[name] + eq + value
            renamed.append(arg)
            if arg in self.bare and not _is_value(args[i + 1] if i + 1 < len(args) else None, self.bare[arg][1]):
                renamed.append(self.bare[arg][0])
        return super().parse_args(ctx, renamed)


def _is_value(token: str | None, choices: tuple[str, ...]) -> bool:
    """Whether `token` is the value of an option that takes one of `choices` (or a comma list of them). A comma
    list, or a near-miss of a choice ("obz"), is the value too, so the option's own check names the bad part
    (taken as a second model argument, it failed with click's "unexpected extra argument")."""
    if token is None or token.startswith("-"):
        return False
    parts = [part.strip().lower() for part in token.split(",")]
    return all(p in choices for p in parts) or len(parts) > 1 or bool(difflib.get_close_matches(parts[0], choices, cutoff=0.6))


def aliased(**old_to_new: str) -> type[AliasedCommand]:
    """aliased(methods="method") -> a command class mapping --methods to --method."""
    mapping = {("-" if len(old) == 1 else "--") + old.replace("_", "-"): ("--" + new.replace("_", "-"))
               for old, new in old_to_new.items()}
    return type("Aliased", (AliasedCommand,), {"aliases": mapping})


def _framework(exc: Exception) -> bool:
    """Typer's and click's own control flow (--help, usage errors, typer.Exit): theirs to handle."""
    return type(exc).__module__.split(".")[0] in ("typer", "click")


class ZpruneGroup(TyperGroup):
    """Turns every failure into one red line and an exit code (1 failed run, 2 bad usage, 130/143 when
    interrupted); `ZPRUNE_DEBUG=1` shows the full traceback instead."""

    def list_commands(self, ctx):  # keep the order the commands were added
        return list(self.commands)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise typer.Exit(interrupted("interrupted", error)) from None
        except Terminated:
            raise typer.Exit(interrupted("terminated", error)) from None
        except Exception as exc:
            if os.environ.get("ZPRUNE_DEBUG") or _framework(exc):
                raise
            if swallowed := swallowed_signal():
                raise typer.Exit(interrupted(swallowed[1], error)) from None
            translated = translate(exc)
            if distributed.is_main():
                error(str(translated))
            elif not isinstance(translated, ZpruneUsageError):  # bad usage is the same on every rank: rank 0 says it
                error(f"process {distributed.rank()}: {translated}")
            raise typer.Exit(translated.exit_code) from None

    def resolve_command(self, ctx: click.Context, args):
        name, command, rest = super().resolve_command(ctx, args)
        if distributed.active() and name not in RUN_BY_RANKS:
            raise ZpruneUsageError(f"`zprune {name}` runs as one process; under torchrun only "
                                   f"{' and '.join(RUN_BY_RANKS)} split their windows across processes")
        return name, command, rest


RUN_BY_RANKS = ("calibrate", "prune")  # the commands whose work torchrun splits (the others would repeat it)
