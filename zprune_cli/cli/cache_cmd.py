from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from zprune_cli.verbs import cache
from zprune_cli.cli import options as opt
from zprune_cli.cli.app import app
from zprune_cli.cli.common import common
from zprune_cli.cli.output import emit_json, stdout_console
from zprune_cli.cli.render import human_bytes
from zprune_cli.evaluation.protocol_cache import stale_records

cache_app = typer.Typer(help="List, inspect, verify and remove cached statistics (noun, then verb).", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

Key = Annotated[str, typer.Argument(help="A statistics key, or a unique prefix of one (6+ characters).")]
OptionalKey = Annotated[Optional[str], typer.Argument(help="A statistics key or unique prefix; default: every entry.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")]


@cache_app.command("ls")
def ls(ctx: typer.Context, cache_dir: opt.CacheDir = None, quiet: opt.Quiet = False, json: opt.Json = False) -> None:
    """List statistics entries: key, kind, model, data, windows, size, creation time.

    Kind "propagated" marks what a --propagate pruned run cached on top of a dense entry (Gram-sized for
    SparseGPT); zprune cache gc --propagated frees them.

    \b
    Examples:
      zprune cache ls
      zprune cache ls --json | jq '.[].key'
    """
    c = common(ctx, cache_dir=cache_dir, quiet=quiet, json=json)
    rows = cache.list_entries(c.cache_dir)
    if c.json:
        emit_json(rows)
        return
    table = Table(title=escape(f"statistics in {cache.stats_root(c.cache_dir)}"))
    for col in ("key", "kind", "model", "data", "samples x seqlen", "seed", "gram", "size", "created"):
        table.add_column(col, justify="right" if col in ("size", "seed") else "left")
    for r in rows:
        if r["problem"]:
            table.add_row(escape(r["key"]), "corrupt", f"[red]{escape(r['problem'])}[/]", "", "", "", "", human_bytes(r["size_bytes"]), "")
            continue
        kind = "propagated" if r.get("propagated") else "dense"
        table.add_row(escape(r["key"]), kind, escape(str(r["model"])), escape(str(r["data"])), f"{r['nsamples']} x {r['seqlen']}", str(r["seed"]),
                      "yes" if r["gram"] else "no", human_bytes(r["size_bytes"]), escape(str(r["created"])))
    stdout_console().print(table)


@cache_app.command("info")
def info(ctx: typer.Context, key: Key, cache_dir: opt.CacheDir = None, quiet: opt.Quiet = False, json: opt.Json = False) -> None:
    """Show what an entry was made from and what it holds.

    \b
    Examples:
      zprune cache info 5a2dbc
    """
    c = common(ctx, cache_dir=cache_dir, quiet=quiet, json=json)
    data = cache.entry_info(c.cache_dir, key)
    if c.json:
        emit_json(data)
        return
    console = stdout_console()
    console.print(f"[bold]{escape(data['key'])}[/]  {escape(data['path'])}  ({human_bytes(data['size_bytes'])})")
    for name, value in data["settings"].items():
        console.print(escape(f"  {name:18} {value}"))
    console.print(f"  {'created':18} {data['created']}")
    console.print(f"  {'input groups':18} {data['groups_per_block']} per block, {data['n_blocks']} blocks")


@cache_app.command("rm")
def rm(ctx: typer.Context, key: Key, dry_run: DryRun = False, cache_dir: opt.CacheDir = None, quiet: opt.Quiet = False,
       json: opt.Json = False) -> None:
    """Remove one entry (an exact key first, else a unique prefix of 6+ characters).

    \b
    Examples:
      zprune cache rm 5a2dbc --dry-run
      zprune cache rm 5a2dbcf602bd679555a1
    """
    c = common(ctx, cache_dir=cache_dir, quiet=quiet, json=json)
    removed = cache.remove_entry(c.cache_dir, key, dry_run=dry_run)
    _report(c, [removed], dry_run)


@cache_app.command("verify")
def verify(ctx: typer.Context, key: OptionalKey = None, cache_dir: opt.CacheDir = None, quiet: opt.Quiet = False,
           json: opt.Json = False) -> None:
    """Check every file of one entry (or of all) against its recorded size and sha256; exit 1 if any is bad.

    \b
    Examples:
      zprune cache verify
      zprune cache verify 5a2dbc
    """
    c = common(ctx, cache_dir=cache_dir, quiet=quiet, json=json)
    rows = cache.verify(c.cache_dir, key)
    if c.json:
        emit_json(rows)
    else:
        for row in rows:
            stdout_console().print(escape(f"{row['key']}  {'ok' if row['ok'] else row['problem']}"))
        stdout_console().print(f"{sum(r['ok'] for r in rows)} of {len(rows)} entries verified")
    if not all(r["ok"] for r in rows):
        raise typer.Exit(1)


@cache_app.command("gc")
def gc(ctx: typer.Context, dry_run: DryRun = False,
       propagated: Annotated[bool, typer.Option("--propagated", help="Also remove the statistics cached by --propagate pruned runs.")] = False,
       cache_dir: opt.CacheDir = None, quiet: opt.Quiet = False, json: opt.Json = False) -> None:
    """Remove what killed runs left behind (temporary folders, incomplete or corrupt entries, unheld locks) and
    the evaluation protocols remembered for model files that have since changed or gone.

    \b
    Examples:
      zprune cache gc --dry-run
      zprune cache gc --propagated      # also the propagation caches (Gram-sized for SparseGPT)
    """
    c = common(ctx, cache_dir=cache_dir, quiet=quiet, json=json)
    stale = stale_records(cache.resolve_cache_dir(c.cache_dir))  # protocols no run can read again
    _report(c, cache.collect_garbage(c.cache_dir, dry_run=dry_run, propagated=propagated, also=stale), dry_run)
    count, size = cache.propagated_summary(c.cache_dir)
    if count and not c.json:
        stdout_console().print(f"kept {count} propagated entr{'y' if count == 1 else 'ies'} ({human_bytes(size)}): "
                               "zprune cache gc --propagated removes them")


def _report(c, removed: list[dict], dry_run: bool) -> None:
    if c.json:
        emit_json({"dry_run": dry_run, "removed": removed})
        return
    verb = "would remove" if dry_run else "removed"
    total = sum(r["size_bytes"] for r in removed)
    for r in removed:
        stdout_console().print(escape(f"{verb} {r['name']} ({human_bytes(r['size_bytes'])})"))
    stdout_console().print(f"{verb} {len(removed)} item(s), {human_bytes(total)}")
