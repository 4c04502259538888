"""A leaderboard run's progress carried across machines: the cache's results rows in one small file.

A complete run takes more machine time than one session has, and a session's machine may be a fresh one with
an empty cache. compare skips a cell only when it finds the cell in the cache's results store, so the run JSON
alone cannot resume a grid half done. `--progress FILE` keeps every results row in FILE (gzip-compressed JSON,
rewritten every minute and after each grid) and, on a new machine, hands them back to the store through its
pending folder (the rows a busy database kept aside), which the store adds the next time it opens. Only rows of
the same measured commit come back: a cell computed by other code is not this run's. No zprune import.
"""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
from pathlib import Path

PENDING = Path("results-pending") / "carried.json"  # the results store's pending folder: added when it next opens


def save_progress(cache: Path, path: Path, commit: str) -> int:
    """Write the results rows of `cache` to `path` whole or not at all; returns how many (0: none yet, no file)."""
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
        json.dump({"commit": commit, "rows": rows}, f, separators=(",", ":"))
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
