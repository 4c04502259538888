"""Library side of `zprune cache`: list, describe and remove statistics entries."""

from __future__ import annotations

from pathlib import Path

from zprune_cli.settings import Settings
from zprune_cli.stats.store import StatsStore


def resolve_cache_dir(cache_dir=None) -> Path:
    """The given cache folder (the CLI passes its resolved settings'), else the environment's default."""
    return Path(cache_dir).expanduser() if cache_dir else Settings.from_env().cache_dir


def stats_root(cache_dir=None) -> Path:
    return StatsStore(resolve_cache_dir(cache_dir)).root


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def list_entries(cache_dir=None) -> list[dict]:
    rows = []
    for path, entry, problem in StatsStore(resolve_cache_dir(cache_dir)).entries():
        row = {"key": path.name, "path": str(path), "size_bytes": _size(path), "problem": problem}
        if entry is not None:
            s = entry.manifest["settings"]
            row.update(model=s["model"], data=s["data_description"], nsamples=s["nsamples"], seqlen=s["seqlen"],
                       seed=s["seed"], gram=s["gram"], dtype=s["dtype"], created=entry.manifest["created"])
        rows.append(row)
    return rows


def entry_info(cache_dir, key: str) -> dict:
    store = StatsStore(resolve_cache_dir(cache_dir))
    entry = store.open(store.resolve_prefix(key))
    return {
        "key": entry.key,
        "path": str(entry.path),
        "size_bytes": entry.size_bytes(),
        "created": entry.manifest["created"],
        "settings": entry.manifest["settings"],
        "n_blocks": entry.n_blocks,
        "groups_per_block": len(entry.manifest["blocks"][0]["groups"]) if entry.n_blocks else 0,
        "groups": [g["members"] for g in entry.manifest["blocks"][0]["groups"]] if entry.n_blocks else [],
    }


def remove_entry(cache_dir, key: str, dry_run: bool = False) -> dict:
    store = StatsStore(resolve_cache_dir(cache_dir))
    path = store.resolve_prefix(key)
    size = _size(path)
    if not dry_run:
        store.remove(path)
    return {"name": path.name, "size_bytes": size}


def collect_garbage(cache_dir=None, dry_run: bool = False) -> list[dict]:
    store = StatsStore(resolve_cache_dir(cache_dir))
    removed = []
    for path in store.garbage():
        removed.append({"name": path.name, "size_bytes": _size(path)})
        if not dry_run:
            store.remove(path)
    return removed
