"""The SQLite results store: round trip, cell lookup for resume, deletion, schema versions, concurrent writers."""

from __future__ import annotations

import dataclasses
import multiprocessing
import sqlite3
import threading

import pytest

from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.records.results import SCHEMA_VERSION, ResultRow, ResultsStore, results_path

PROTOCOL = {"dataset": "wikitext2", "split": "test", "seqlen": 2048, "n_windows": 140}
CELL = dict(
    fingerprint="fp-1",
    method="wanda",
    sparsity=0.5,
    pattern="unstructured",
    scope="row",
    allocation="uniform",
    propagate="dense",
    stats_key="abc123",
    recipe="5a1e5a1e5a1e5a1e",
    protocol=PROTOCOL,
    metric="ppl:wikitext2",
)
FIND = {k: CELL[k] for k in ("fingerprint", "method", "recipe", "stats_key", "protocol", "metric")}


@pytest.fixture()
def store(tmp_path):
    with ResultsStore(results_path(tmp_path / "cache")) as s:
        yield s


def test_round_trip(store, tmp_path):
    settings = {"method": "wanda", "sparsity": 0.5, "nested": {"b": 1, "a": [1, 2]}}
    run_id = store.record(ResultRow(model="HuggingFaceTB/SmolLM2-135M", settings=settings, value=23.5, seconds=12.0, **CELL))
    assert (tmp_path / "cache" / "results.sqlite").is_file()
    rows = store.query(model="HuggingFaceTB/SmolLM2-135M")
    assert len(rows) == 1
    row = rows[0]
    assert row.run_id == run_id
    assert row.settings == settings and row.protocol == PROTOCOL
    assert row.value == 23.5 and row.seconds == 12.0 and row.sparsity == 0.5
    assert set(row.versions) == {"zprune", "torch", "transformers", "lm_eval"}
    assert row.created.startswith("20")
    assert isinstance(row, ResultRow) and store.query(model="other") == []  # read back as the type it was written as


def test_query_filters_and_metric_glob(store):
    store.record(ResultRow(model="m", value=20.0, **CELL))
    store.record(ResultRow(model="m", value=0.6, **{**CELL, "metric": "acc:arc_easy_local"}))
    store.record(ResultRow(model="m", value=0.4, **{**CELL, "metric": "acc:piqa_local"}))
    store.record(ResultRow(model="m", value=15.0, fingerprint="fp-1", metric="ppl:wikitext2", protocol=PROTOCOL))  # dense
    assert [r.value for r in store.query(metric="acc:*")] == [0.6, 0.4]
    dense = store.query(fingerprint="fp-1", metric="ppl:wikitext2", sparsity=None)
    assert [(r.method, r.value) for r in dense] == [("dense", 15.0)]
    assert len(store.query(method="wanda", sparsity=0.5)) == 3
    with pytest.raises(ZpruneUsageError, match="unknown results field"):
        store.query(colour="red")


def test_find_matches_the_identical_cell_only(store):
    assert store.find(**FIND) is None
    first = store.record(ResultRow(value=20.0, **CELL))
    second = store.record(ResultRow(value=21.0, **CELL))
    found = store.find(**FIND)
    assert found is not None and found.run_id == second != first
    # protocol given as JSON text with other key order is the same cell
    as_text = '{"seqlen": 2048, "split": "test", "n_windows": 140, "dataset": "wikitext2"}'
    assert store.find(**{**FIND, "protocol": as_text})
    for key, other in [
        ("recipe", "0" * 16),  # any other weight-changing setting: another recipe digest
        ("stats_key", None),
        ("protocol", {**PROTOCOL, "seqlen": 1024}),
        ("metric", "ppl:c4"),
        ("fingerprint", "fp-2"),
        ("method", "sparsegpt"),
    ]:
        assert store.find(**{**FIND, key: other}) is None, key


def test_delete(store):
    a = store.record(ResultRow(value=1.0, **CELL))
    store.record(ResultRow(value=2.0, **CELL))
    store.record(ResultRow(value=3.0, **{**CELL, "metric": "acc:piqa_local"}))
    assert store.delete(run_id=a) == 1
    assert store.delete(metric="acc:piqa_local") == 1
    assert [r.value for r in store.query()] == [2.0]
    with pytest.raises(ZpruneUsageError):
        store.delete()


def test_refuses_a_newer_schema(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultsStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(ZpruneError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        ResultsStore(path)


def test_same_schema_reopens(tmp_path):
    path = tmp_path / "results.sqlite"
    with ResultsStore(path) as s:
        s.record(ResultRow(value=1.0, **CELL))
    with ResultsStore(path) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert len(s.query()) == 1


def test_not_a_database(tmp_path):
    path = tmp_path / "results.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ZpruneError, match="not a usable zprune results database"):
        ResultsStore(path)


def test_concurrent_writers(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultsStore(path).close()
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            with ResultsStore(path) as s:
                for i in range(25):
                    s.record(ResultRow(value=float(i), **{**CELL, "metric": f"m{k}"}))
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with ResultsStore(path) as s:
        assert len(s.query()) == 100
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_cell_is_recorded_whole_or_not_at_all(store):
    """A kill or an error between two metric rows of one cell must not leave it half-finished."""
    first = ResultRow(**CELL, value=1.0, run_id="r1")
    clash = ResultRow(**{**CELL, "metric": "acc:piqa_local"}, value=2.0, run_id="r1")  # fails on insert, after the first
    with pytest.raises(ZpruneUsageError, match="already recorded"):
        store.record_many([first, clash])
    assert store.query() == []
    store.record_many([first, dataclasses.replace(clash, run_id="r2")])
    assert {r.metric for r in store.query()} == {"ppl:wikitext2", "acc:piqa_local"}


def _open_at_once(path: str, start, failures) -> None:
    start.wait()
    try:
        ResultsStore(path).close()
    except ZpruneError as e:
        failures.put(str(e))


def test_processes_that_open_a_new_database_at_once(tmp_path):
    """Two `compare` runs started together on a fresh cache both switch the new file to WAL: SQLite refuses one
    of them at once ("database is locked", without its busy wait), which failed `leaderboard.py --check --jobs 2`.
    Processes, not threads: connections in one process do not race this way."""
    context = multiprocessing.get_context("fork")
    failures = context.Queue()
    for trial in range(30):
        start = context.Barrier(4)
        path = str(tmp_path / f"{trial}.sqlite")
        openers = [context.Process(target=_open_at_once, args=(path, start, failures)) for _ in range(4)]
        for p in openers:
            p.start()
        for p in openers:
            p.join(timeout=120)
        assert [p.exitcode for p in openers] == [0, 0, 0, 0]
    assert failures.empty(), failures.get()
