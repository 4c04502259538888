"""The `zprune` command line: parse, call the library, render. No math here."""

from __future__ import annotations

import typer
from typer.completion import completion_init

from zprune_cli import __version__
from zprune_cli.cli import options as opt
from zprune_cli.cli.common import RootFlags, ZpruneGroup
from zprune_cli.methods import method_titles


ROOT_HELP = """Prune large language models after training, with no retraining, over a cached
activation-statistics store: calibrate once, then prune, evaluate and compare from it.

Data goes to stdout (--json for machines); logs and progress go to stderr.

\b
Methods (--method NAME; several: --method wanda,ria):
{methods}

\b
Examples:
  zprune prune smollm2-135m --method zpruner --sparsity 0.5       # saves ./smollm2-135m-zpruner-50
  zprune prune smollm2-135m --method sparsegpt --pattern 2:4 --data c4-sample --no-save
  zprune eval smollm2-135m-zpruner-50 --eval wikitext2 --baseline
  zprune compare smollm2-135m --method wanda,zpruner,sparsegpt --sparsity 0.5,0.6
  zprune export smollm2-135m-zpruner-50 --to exported --format sparse
  zprune cache ls
Each command has its own --help, with more examples.

Exit codes: 0 success, 1 failed run, 2 bad usage, 130 / 143 interrupted (Ctrl-C / SIGTERM).
"""


def root_help() -> str:
    """`zprune --help`: what it does, every registered method (a new one appears by itself), examples."""
    titles = method_titles()
    width = max(map(len, titles))
    return ROOT_HELP.format(methods="\n".join(f"  {name:{width}}  {title}" for name, title in titles.items()))


app = typer.Typer(
    name="zprune",
    cls=ZpruneGroup,
    no_args_is_help=True,
    rich_markup_mode=None,  # help text is plain: [brackets] in it are shown, never parsed
    context_settings={"help_option_names": ["-h", "--help"]},
    help=root_help(),
    pretty_exceptions_enable=False,
    add_completion=False,  # `zprune completions SHELL` prints the scripts; no duplicate global options
)


completion_init()  # runtime completion for `zprune completions` scripts, without Typer's own install options


def _version(value: bool) -> None:
    if value:
        typer.echo(f"zprune {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    cache_dir: opt.CacheDir = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    quiet: opt.Quiet = False,
    json: opt.Json = False,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """The global options; the help is `root_help()`."""
    ctx.obj = RootFlags(cache_dir=cache_dir, device=device, dtype=dtype, quiet=quiet, json=json)


def _register() -> None:
    # One module per command; each adds itself to `app`.
    from zprune_cli.cli import (  # noqa: F401
        cache_cmd,
        calibrate_cmd,
        compare_cmd,
        completions_cmd,
        eval_cmd,
        export_cmd,
        prune_cmd,
    )


_register()


def main() -> None:
    """Kept for old entry points; `zprune_cli.cli.main` installs the signal handling first."""
    from zprune_cli.cli import main as entry

    entry()
