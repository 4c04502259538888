"""Library side of `zprune cache`: list, describe and remove statistics entries."""

from __future__ import annotations

from pathlib import Path

from zprune_cli.base.errors import ZpruneError
from zprune_cli.base.settings import Settings
from zprune_cli.stats.store import StatsStore


def resolve_cache_dir(cache_dir=None) -> Path:
    """The given cache folder (the CLI passes its resolved settings'), else the environment's default."""
    return Path(cache_dir).expanduser() if cache_dir else Settings.from_env().cache_dir


def stats_root(cache_dir=None) -> Path:
    return StatsStore(resolve_cache_dir(cache_dir)).root


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def list_entries(cache_dir=None) -> list[dict]:
    rows = []
    for path, entry, problem in StatsStore(resolve_cache_dir(cache_dir)).entries():
        row = {"key": path.name, "path": str(path), "size_bytes": _size(path), "problem": problem}
        if entry is not None:
            s = entry.manifest.settings
            row.update(model=s.get("model"), data=s.get("data_description"), nsamples=s.get("nsamples"),
                       seqlen=s.get("seqlen"), seed=s.get("seed"), gram=s.get("gram"), dtype=s.get("dtype"),
                       created=entry.manifest.created, propagated="propagated" in s)
        rows.append(row)
    return rows


def entry_info(cache_dir, key: str) -> dict:
    store = StatsStore(resolve_cache_dir(cache_dir))
    entry = store.open(store.resolve_prefix(key))
    return {
        "key": entry.key,
        "path": str(entry.path),
        "size_bytes": entry.size_bytes(),
        "created": entry.manifest.created,
        "settings": entry.manifest.settings,
        "n_blocks": entry.n_blocks,
        "groups_per_block": len(entry.manifest.blocks[0].groups) if entry.n_blocks else 0,
        "groups": [g.members for g in entry.manifest.blocks[0].groups] if entry.n_blocks else [],
    }


def remove_entry(cache_dir, key: str, dry_run: bool = False) -> dict:
    store = StatsStore(resolve_cache_dir(cache_dir))
    path = store.resolve_prefix(key)
    size = _size(path)
    if not dry_run:
        store.remove(path)
    return {"name": path.name, "size_bytes": size}


def collect_garbage(cache_dir=None, dry_run: bool = False, propagated: bool = False, also: list[Path] = ()) -> list[dict]:
    """Remove dead writers' folders, corrupt entries, unheld locks and the files in `also` (the CLI passes
    the stale evaluation protocols); with `propagated`, also the statistics cached by pruned-propagation
    runs (`<key>-p<run>`: Gram-sized for SparseGPT)."""
    store = StatsStore(resolve_cache_dir(cache_dir))
    removed = []
    junk = store.garbage() + list(also)
    if propagated:
        junk += [path for path, entry, _ in store.entries() if entry is not None and is_propagated(path)]
    for path in junk:
        removed.append({"name": path.name, "size_bytes": _size(path)})
        if not dry_run:
            store.remove(path)
    return removed


def is_propagated(path: Path) -> bool:
    """An entry a `--propagate pruned` run collected on top of a dense one (named <key>-p<run>)."""
    return "-p" in path.name


def propagated_summary(cache_dir=None) -> tuple[int, int]:
    """(how many, bytes) of the propagated entries: what `cache gc --propagated` would free."""
    rows = [r for r in list_entries(cache_dir) if r.get("propagated") or is_propagated(Path(r["path"]))]
    return len(rows), sum(r["size_bytes"] for r in rows)


def verify(cache_dir=None, key: str | None = None) -> list[dict]:
    """Re-read every file of one entry (or all) against its manifest's sizes and sha256."""
    from zprune_cli.stats import store as store_module

    store = StatsStore(resolve_cache_dir(cache_dir))
    store_module._VERIFIED.clear()  # verify means reading the bytes again, not trusting this process
    paths = [store.resolve_prefix(key)] if key is not None else [path for path, _, _ in store.entries()]
    rows = []
    for path in paths:
        try:
            store.open(path)
            rows.append({"key": path.name, "ok": True, "problem": None})
        except ZpruneError as exc:
            rows.append({"key": path.name, "ok": False, "problem": str(exc)})
    return rows
