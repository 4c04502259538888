from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from zprune_cli import cache
from zprune_cli.cli import options as opt
from zprune_cli.cli.app import app
from zprune_cli.cli.common import common
from zprune_cli.cli.output import emit_json, stdout_console
from zprune_cli.cli.render import human_bytes

cache_app = typer.Typer(help="List, inspect and remove cached statistics (noun, then verb).", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

Key = Annotated[str, typer.Argument(help="A statistics key, or a unique prefix of one (6+ characters).")]
OptionalKey = Annotated[Optional[str], typer.Argument(help="A statistics key or unique prefix; default: every entry.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")]


@cache_app.command("ls")
def ls(ctx: typer.Context, cache_dir: opt.CacheDir = None, json: opt.Json = False) -> None:
    """List statistics entries: key, model, data, windows, size, creation time."""
    c = common(ctx, cache_dir=cache_dir, json=json)
    rows = cache.list_entries(c.cache_dir)
    if c.json:
        emit_json(rows)
        return
    table = Table(title=f"statistics in {cache.stats_root(c.cache_dir)}")
    for col in ("key", "model", "data", "samples x seqlen", "seed", "gram", "size", "created"):
        table.add_column(col, justify="right" if col in ("size", "seed") else "left")
    for r in rows:
        if r["problem"]:
            table.add_row(escape(r["key"]), f"[red]{escape(r['problem'])}[/]", "", "", "", "", human_bytes(r["size_bytes"]), "")
            continue
        table.add_row(escape(r["key"]), escape(str(r["model"])), escape(str(r["data"])), f"{r['nsamples']} x {r['seqlen']}", str(r["seed"]),
                      "yes" if r["gram"] else "no", human_bytes(r["size_bytes"]), r["created"])
    stdout_console().print(table)


@cache_app.command("info")
def info(ctx: typer.Context, key: Key, cache_dir: opt.CacheDir = None, json: opt.Json = False) -> None:
    """Show what an entry was made from and what it holds."""
    c = common(ctx, cache_dir=cache_dir, json=json)
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
def rm(ctx: typer.Context, key: Key, dry_run: DryRun = False, cache_dir: opt.CacheDir = None, json: opt.Json = False) -> None:
    """Remove one entry."""
    c = common(ctx, cache_dir=cache_dir, json=json)
    removed = cache.remove_entry(c.cache_dir, key, dry_run=dry_run)
    _report(c, [removed], dry_run)


@cache_app.command("verify")
def verify(ctx: typer.Context, key: OptionalKey = None, cache_dir: opt.CacheDir = None, json: opt.Json = False) -> None:
    """Check every file of one entry (or of all) against its recorded size and sha256; exit 1 if any is bad.

    \b
    Examples:
      zprune cache verify
      zprune cache verify 5a2dbc
    """
    c = common(ctx, cache_dir=cache_dir, json=json)
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
def gc(ctx: typer.Context, dry_run: DryRun = False, cache_dir: opt.CacheDir = None, json: opt.Json = False) -> None:
    """Remove what killed runs left behind: temporary folders and incomplete or corrupt entries."""
    c = common(ctx, cache_dir=cache_dir, json=json)
    _report(c, cache.collect_garbage(c.cache_dir, dry_run=dry_run), dry_run)


def _report(c, removed: list[dict], dry_run: bool) -> None:
    if c.json:
        emit_json({"dry_run": dry_run, "removed": removed})
        return
    verb = "would remove" if dry_run else "removed"
    total = sum(r["size_bytes"] for r in removed)
    for r in removed:
        stdout_console().print(escape(f"{verb} {r['name']} ({human_bytes(r['size_bytes'])})"))
    stdout_console().print(f"{verb} {len(removed)} item(s), {human_bytes(total)}")
