"""Every run's settings and metrics, kept in SQLite for the leaderboard and for resuming grids.

One row per (run, metric): a `compare` grid cell that measures perplexity and three zero-shot tasks writes
four rows. The database lives at `<cache_dir>/results.sqlite`, in WAL mode with one transaction per write, so
several zprune processes can record into it at once.

A *cell* is what makes two measurements comparable: the model fingerprint, the pruning recipe's digest
(every weight-changing setting, see engine/recipe.py), the statistics key, the evaluation protocol and the metric.
`find` looks a cell up so a grid can skip what it already measured. The method, sparsity, pattern, scope,
allocation and propagate columns repeat fields of the recipe for display and filtering; the whole recipe
is in `settings`. Schema 1 databases (no recipe column) are migrated in place: their pruned rows keep a
NULL recipe, so they never answer for a cell of this version and are recomputed when asked for.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from datetime import datetime, timezone
from importlib import metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.base.machine import free_disk_bytes
from zprune_cli.records.protocol import Protocol
from zprune_cli.base.staging import replace_atomically

SCHEMA_VERSION = 2
RESULTS_FILE = "results.sqlite"

# column -> SQL type; JSON_COLUMNS hold canonical JSON text (sorted keys) so equal dicts compare equal in SQL
COLUMNS: dict[str, str] = {
    "run_id": "TEXT PRIMARY KEY",
    "created": "TEXT NOT NULL",
    "model": "TEXT",
    "fingerprint": "TEXT",
    "method": "TEXT NOT NULL",
    "sparsity": "REAL",
    "pattern": "TEXT",
    "scope": "TEXT",
    "allocation": "TEXT",
    "propagate": "TEXT",
    "stats_key": "TEXT",
    "recipe": "TEXT",
    "settings": "TEXT",
    "protocol": "TEXT",
    "metric": "TEXT NOT NULL",
    "value": "REAL",
    "seconds": "REAL",
    "versions": "TEXT",
}
JSON_COLUMNS = frozenset({"settings", "protocol", "versions"})
CELL_COLUMNS = ("fingerprint", "method", "recipe", "stats_key", "protocol", "metric")
PENDING_DIR = "results-pending"  # measurements kept while the database was locked past the timeout
log = logging.getLogger("zprune")


def _busy_timeout() -> float:
    """Seconds to wait for another writer (ZPRUNE_DB_TIMEOUT, default 60)."""
    try:
        return float(os.environ.get("ZPRUNE_DB_TIMEOUT") or 60.0)
    except ValueError:
        raise ZpruneUsageError(f"$ZPRUNE_DB_TIMEOUT must be a number of seconds, got {os.environ['ZPRUNE_DB_TIMEOUT']!r}") from None


def results_path(cache_dir: str | os.PathLike) -> Path:
    """Where the results database of a cache directory lives."""
    return Path(cache_dir) / RESULTS_FILE


def canonical_json(value: Any) -> str | None:
    """JSON text with sorted keys and no spaces; a string is parsed first, so equal content gives equal text."""
    if value is None:
        return None
    if isinstance(value, Protocol):
        return value.to_json()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ZpruneUsageError(f"not valid JSON: {value[:60]!r}") from e
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def package_versions() -> dict[str, str | None]:
    """Installed versions of zprune and the libraries that shape a result."""
    out: dict[str, str | None] = {}
    for name in ("zprune", "torch", "transformers", "lm_eval"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


DISK_FULL = "the disk is full; free space or point --cache-dir elsewhere"


def _disk_full(error: sqlite3.Error, folder: Path) -> bool:
    """SQLite's SQLITE_FULL ("database or disk is full"), or an I/O error on a disk with no space left (creating
    the WAL's shared-memory file reports only "disk I/O error"): not a lock to wait out."""
    code = getattr(error, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "disk is full" in str(error):
        return True
    free = free_disk_bytes(folder)
    return code is not None and code & 0xFF == sqlite3.SQLITE_IOERR and free is not None and free < 1 << 16


@dataclass(frozen=True)
class ResultRow:
    """One row of the results store: one measurement of one cell (see the module's docstring).

    metric names what was measured ("ppl:wikitext2", "acc:arc_easy_local"); settings is the full settings
    object and protocol the evaluation protocol, both stored as canonical JSON. versions defaults to the
    installed zprune, torch, transformers, lm_eval; run_id to a new uuid4, created to now."""

    metric: str
    value: float | None
    model: str | None = None
    fingerprint: str | None = None
    method: str = "dense"
    sparsity: float | None = None
    pattern: str | None = None
    scope: str | None = None
    allocation: str | None = None
    propagate: str | None = None
    stats_key: str | None = None
    recipe: str | None = None
    settings: dict | str | None = None
    protocol: Protocol | dict | str | None = None
    seconds: float | None = None
    versions: dict | str | None = None
    run_id: str | None = None
    created: str | None = None


class ResultsStore:
    """The results database at `path` (created with its parent folder if absent).

    Use `ResultsStore(results_path(cache_dir))`, or as a context manager to close it.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we open transactions ourselves (BEGIN IMMEDIATE takes the write lock up front)
            self._conn = sqlite3.connect(self.path, timeout=_busy_timeout(), isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise ZpruneError(f"cannot open results database {self.path}: {getattr(e, 'strerror', None) or e}") from None
        self._conn.row_factory = sqlite3.Row
        try:
            self._enable_wal()
            self._init_schema()
            check = self._conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise ZpruneError(f"results database {self.path} is damaged ({check}); move it aside to start a new one")
            self._ingest_pending()
        except sqlite3.OperationalError as e:
            self._conn.close()
            if _disk_full(e, self.path.parent):
                raise ZpruneError(f"results database {self.path}: {DISK_FULL}; nothing was measured yet") from None
            raise ZpruneError(f"results database {self.path} is busy or unreadable ({e}); nothing was measured yet, try again") from None
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise ZpruneError(f"{self.path} is not a usable zprune results database ({e}); move it aside to start a new one") from None
        except ZpruneError:
            self._conn.close()
            raise

    # ------------------------------------------------------------------------------------------ schema
    def _enable_wal(self) -> None:
        """Switch to write-ahead logging (a no-op once the file is in WAL mode). On a new file opened by two
        processes at once both hold a shared lock and want the exclusive one: SQLite answers one of them "database
        is locked" at once, without its busy timeout, so the switch is retried here until that timeout passes."""
        deadline = time.monotonic() + _busy_timeout()
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _init_schema(self) -> None:
        with self._transaction():
            self._conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = row[0]
            if version is not None and version > SCHEMA_VERSION:
                raise ZpruneError(
                    f"results database {self.path} has schema version {version}, newer than this zprune "
                    f"understands ({SCHEMA_VERSION}); upgrade zprune or point --cache-dir elsewhere"
                )
            columns = ",\n  ".join(f"{name} {sql_type}" for name, sql_type in COLUMNS.items())
            self._conn.execute(f"CREATE TABLE IF NOT EXISTS runs (\n  {columns}\n)")
            present = {row[1] for row in self._conn.execute("PRAGMA table_info(runs)")}
            for name, sql_type in COLUMNS.items():  # schema 1 -> 2: the recipe digest column
                if name not in present:
                    self._conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {sql_type}")
            self._conn.execute("CREATE INDEX IF NOT EXISTS runs_cell ON runs (fingerprint, metric, method)")
            if version != SCHEMA_VERSION:
                self._conn.execute("DELETE FROM schema_version")
                self._conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        return int(self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])

    # ------------------------------------------------------------------------------------ transactions
    class _Transaction:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: Any, *_: Any) -> None:
            self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")

    def _transaction(self) -> ResultsStore._Transaction:
        return ResultsStore._Transaction(self._conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- writing
    def record(self, row: ResultRow) -> str:
        """Store one measurement and return its run_id (a new uuid4 unless the row has one)."""
        return self.record_many([row])[0]

    def record_many(self, rows: list[ResultRow]) -> list[str]:
        """Store several measurements in ONE transaction: a cell's metrics are
        all recorded or none is, so a kill between two of them never leaves a cell half-finished."""
        built = [self._row(r) for r in rows]
        if not built:
            return []
        try:
            self._insert(built)
        except sqlite3.IntegrityError as e:
            raise ZpruneUsageError(f"a run_id of {[r['run_id'] for r in built]} is already recorded") from e
        except sqlite3.OperationalError as e:  # locked past the busy timeout: keep the measurement, add it later
            if _disk_full(e, self.path.parent):  # nowhere to keep it either
                raise ZpruneError(f"cannot record results in {self.path}: {DISK_FULL}") from None
            kept = self._keep_pending(built)
            log.warning("results database busy (%s): %d result(s) kept in %s, recorded the next time it opens",
                        e, len(built), kept)
        except sqlite3.Error as e:
            raise ZpruneError(f"cannot record results in {self.path}: {e}") from e
        return [r["run_id"] for r in built]

    def _insert(self, rows: list[dict[str, Any]], again: bool = False) -> None:
        """One transaction; `again` (kept rows being added later) skips those already there."""
        names = ", ".join(rows[0])
        marks = ", ".join("?" for _ in rows[0])
        verb = "INSERT OR IGNORE" if again else "INSERT"
        with self._transaction() as conn:
            conn.executemany(f"{verb} INTO runs ({names}) VALUES ({marks})", [tuple(r.values()) for r in rows])

    @property
    def _pending_dir(self) -> Path:
        return self.path.parent / PENDING_DIR

    def _keep_pending(self, rows: list[dict[str, Any]]) -> Path:
        self._pending_dir.mkdir(parents=True, exist_ok=True)
        path = self._pending_dir / f"{rows[0]['run_id']}.json"
        replace_atomically(path, json.dumps(rows).encode("utf-8"))
        return path

    def _ingest_pending(self) -> None:
        """Record what an earlier process kept aside while the database was busy (then drop the files)."""
        for path in sorted(self._pending_dir.glob("*.json")) if self._pending_dir.is_dir() else []:
            try:
                rows = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(rows, list) and rows and all(isinstance(r, dict) and set(r) == set(COLUMNS) for r in rows):
                self._insert(rows, again=True)
                path.unlink(missing_ok=True)

    @staticmethod
    def _row(row: ResultRow) -> dict[str, Any]:
        """The row's columns as stored: JSON fields as canonical text, an id and a time when it has none."""
        if not row.metric:
            raise ZpruneUsageError("a result needs a metric name")
        columns = {name: getattr(row, name) for name in COLUMNS}
        return columns | {
            "run_id": row.run_id or uuid.uuid4().hex,
            "created": row.created or datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "method": row.method or "dense",
            "sparsity": None if row.sparsity is None else float(row.sparsity),
            "settings": canonical_json(row.settings),
            "protocol": canonical_json(row.protocol),
            "value": None if row.value is None else float(row.value),
            "seconds": None if row.seconds is None else float(row.seconds),
            "versions": canonical_json(row.versions if row.versions is not None else package_versions()),
        }

    # ---------------------------------------------------------------------------------------- reading
    @staticmethod
    def _where(filters: dict[str, Any]) -> tuple[str, list[Any]]:
        """SQL condition for column filters; None matches NULL, JSON columns compare canonical text."""
        unknown = sorted(set(filters) - set(COLUMNS))
        if unknown:
            raise ZpruneUsageError(f"unknown results field(s): {', '.join(unknown)}; known: {', '.join(COLUMNS)}")
        clauses, params = [], []
        for name, value in filters.items():
            if name in JSON_COLUMNS:
                value = canonical_json(value)
            elif name == "sparsity" and value is not None:
                value = float(value)
            clauses.append(f"{name} IS ?")
            params.append(value)
        return (" AND ".join(clauses) or "1"), params

    @staticmethod
    def _decode(row: sqlite3.Row) -> ResultRow:
        """A stored row as a ResultRow, its JSON fields (settings, protocol, versions) decoded."""
        out = dict(row)
        for name in JSON_COLUMNS:
            if out.get(name) is not None:
                out[name] = json.loads(out[name])
        return ResultRow(**out)

    def query(
        self,
        model: str | None = None,
        fingerprint: str | None = None,
        metric: str | None = None,
        **filters: Any,
    ) -> list[ResultRow]:
        """Rows matching every given filter, oldest first, JSON fields decoded.

        model, fingerprint and metric are skipped when None; metric may be a glob ("acc:*"). Every other
        keyword filter compares with the stored value exactly, None matching a missing value (sparsity=None
        selects dense rows).
        """
        given = {k: v for k, v in (("model", model), ("fingerprint", fingerprint)) if v is not None}
        where, params = self._where(given | filters)
        if metric is not None:
            where += " AND metric GLOB ?"
            params.append(metric)
        rows = self._conn.execute(f"SELECT * FROM runs WHERE {where} ORDER BY created, rowid", params).fetchall()
        return [self._decode(r) for r in rows]

    def find(
        self,
        *,
        metric: str,
        fingerprint: str | None,
        protocol: Protocol | dict | str | None,
        method: str = "dense",
        recipe: str | None = None,
        stats_key: str | None = None,
    ) -> ResultRow | None:
        """The latest row of the identical cell (all of CELL_COLUMNS equal, None matching None), or None.

        A dense row has method "dense" and no recipe; a pruned row is found by its recipe digest only."""
        cell = {
            "fingerprint": fingerprint,
            "method": method or "dense",
            "recipe": recipe,
            "stats_key": stats_key,
            "protocol": protocol,
            "metric": metric,
        }
        where, params = self._where(cell)
        row = self._conn.execute(
            f"SELECT * FROM runs WHERE {where} ORDER BY created DESC, rowid DESC LIMIT 1", params
        ).fetchone()
        return self._decode(row) if row is not None else None

    # --------------------------------------------------------------------------------------- deleting
    def delete(self, run_id: str | list[str] | None = None, **filters: Any) -> int:
        """Delete the rows with the given run_id(s) and/or matching every filter; returns how many went.

        At least one criterion is required: deleting everything means removing the file.
        """
        if run_id is None and not filters:
            raise ZpruneUsageError("delete needs a run_id or at least one filter")
        where, params = self._where(filters)
        if run_id is not None:
            ids = [run_id] if isinstance(run_id, str) else list(run_id)
            if not ids:
                return 0
            where += f" AND run_id IN ({', '.join('?' for _ in ids)})"
            params += ids
        with self._transaction() as conn:
            return conn.execute(f"DELETE FROM runs WHERE {where}", params).rowcount
