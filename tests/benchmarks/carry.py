"""A leaderboard run's progress carried across machines: the cache's results rows in one small file.

A complete run takes more machine time than one session has, and a session's machine may be a fresh one with
an empty cache. compare skips a cell only when it finds the cell in the cache's results store, so the run JSON
alone cannot resume a grid half done. `--progress FILE` keeps every results row in FILE (gzip-compressed JSON,
rewritten every minute and after each grid) and, on a new machine, hands them back to the store through its
pending folder (the rows a busy database kept aside), which the store adds the next time it opens. Only rows of
the same measured commit come back: a cell computed by other code is not this run's. No zprune import but
the store's file hash.

The rows are keyed by the model's fingerprint, which trusts each weights file's path, size and modification time
(a cheap staleness check). A new machine installs the same model file with a new time, and every cell would be
computed again (it happened once: 78 rows lost). So the file also records each model file's time and sha256,
and a file found again with the same bytes gets its recorded time back.
"""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
from pathlib import Path

PENDING = Path("results-pending") / "carried.json"  # the results store's pending folder: added when it next opens


def save_progress(cache: Path, path: Path, commit: str, files: list[dict] | None = None) -> int:
    """Write the results rows of `cache` (and `files`, the model files' records) to `path` whole or not at all;
    returns how many rows (0: none yet, no file)."""
    database = cache / "results.sqlite"
    if not database.exists():
        return 0
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=60) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY created, run_id")]
    if not rows:
        return 0
    partial = path.with_name(path.name + ".partial")
    with gzip.open(partial, "wt", encoding="utf-8") as f:
        json.dump({"commit": commit, "rows": rows, "files": files or []}, f, separators=(",", ":"))
    os.replace(partial, path)
    return len(rows)


def restore_progress(path: Path, cache: Path, commit: str) -> int:
    """Hand the rows saved in `path` to the results store of `cache`; returns how many (0: no file).
    Raises ValueError when they were measured at another commit."""
    if not path.exists():
        return 0
    with gzip.open(path, "rt", encoding="utf-8") as f:
        saved = json.load(f)
    if saved["commit"] != commit:
        raise ValueError(f"the progress file {path} holds cells of commit {saved['commit']}, this tree is at {commit}: "
                         "give --progress a new file")
    pending = cache / PENDING
    pending.parent.mkdir(parents=True, exist_ok=True)
    pending.write_text(json.dumps(saved["rows"]))
    return len(saved["rows"])


def file_records(paths: list[Path]) -> list[dict]:
    """What the model fingerprint trusts of each file (path, size, modification time) and what the file is."""
    records = []
    for path in paths:
        stat = path.stat()
        records.append({"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _sha256(path)})
    return records


def restore_file_times(path: Path) -> list[str]:
    """Give each model file recorded in the progress file `path` its recorded modification time back when its
    path, size and content are the same (a reinstall); returns a line for each file it changed or could not."""
    if not path.exists():
        return []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        records = json.load(f).get("files", [])
    said = []
    for record in records:
        file = Path(record["path"])
        if not file.is_file() or file.stat().st_size != record["size"]:
            said.append(f"warning: {file} is not the run's model file (missing or resized): its cells are computed again")
            continue
        stat = file.stat()
        if stat.st_mtime_ns == record["mtime_ns"]:
            continue
        if _sha256(file) != record["sha256"]:
            said.append(f"warning: {file} differs from the run's model file: its cells are computed again")
            continue
        os.utime(file, ns=(stat.st_atime_ns, record["mtime_ns"]))
        said.append(f"{file}: the same bytes as the run's model file, its recorded modification time restored")
    return said


def _sha256(path: Path) -> str:
    from zprune_cli.stats.store import sha256_of  # imported only here: the rest of this module needs no zprune

    return sha256_of(path)
