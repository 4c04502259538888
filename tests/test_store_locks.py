"""The statistics store's lock files: a run that ends in any way removes its own, the next writer (and
`cache gc`) removes those of SIGKILLed runs, and a lock a live process holds is never removed."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal

import pytest
from typer.testing import CliRunner

from zprune_cli.cli.app import app
from zprune_cli.base.errors import ZpruneError
from zprune_cli.stats.store import StatsKey, StatsStore, remove_unheld_lock

KEY = StatsKey("fp", "float32", "c4:train", "abc", 8, 256, 0, False)
OTHER = StatsKey("fp", "float32", "c4:train", "abc", 16, 256, 0, False)
FORK = mp.get_context("fork")  # a real second process, without importing torch again


def locks(store: StatsStore) -> list[str]:
    return sorted(p.name for p in store.root.glob("*.lock")) if store.root.is_dir() else []


def _hold(root, digest_key, ready, release):
    with StatsStore(root).locked(digest_key):
        ready.set()
        release.wait(60)


def holder(root, key=KEY):
    """A process holding `key`'s lock until its `release` event is set (or it is killed)."""
    ready, release = FORK.Event(), FORK.Event()
    proc = FORK.Process(target=_hold, args=(root, key, ready, release))
    proc.start()
    assert ready.wait(30)
    return proc, release


class Boom(Exception):
    pass


@pytest.mark.parametrize("ending", [None, Boom, KeyboardInterrupt])
def test_a_run_that_ends_in_any_way_removes_its_lock(tmp_path, ending):
    store = StatsStore(tmp_path)
    with pytest.raises(ending) if ending else _nothing():
        with store.locked(KEY):
            assert locks(store) == [f"{KEY.digest}.lock"]
            if ending:
                raise ending()
    assert locks(store) == []


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_sigkilled_holder_leaves_a_lock_the_next_run_removes(tmp_path, monkeypatch):
    store = StatsStore(tmp_path)
    procs = [holder(tmp_path, key)[0] for key in (KEY, OTHER)]
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    assert locks(store) == sorted([f"{KEY.digest}.lock", f"{OTHER.digest}.lock"])  # what the kernel left
    with store.locked(KEY):  # the next writer takes the stale lock of its own key and sweeps the other
        assert locks(store) == [f"{KEY.digest}.lock"]
    assert locks(store) == []


def test_cache_gc_removes_stale_locks_and_keeps_a_held_one(tmp_path, monkeypatch):
    monkeypatch.setenv("ZPRUNE_HOME", str(tmp_path))
    store = StatsStore(tmp_path)
    live, release = holder(tmp_path, KEY)
    dead, _ = holder(tmp_path, OTHER)  # killed after the live one took its lock (which sweeps stale ones)
    os.kill(dead.pid, signal.SIGKILL)
    dead.join()
    try:
        gc = json.loads(CliRunner().invoke(app, ["cache", "gc", "--json"]).stdout)
        assert [r["name"] for r in gc["removed"]] == [f"{OTHER.digest}.lock"]
        assert locks(store) == [f"{KEY.digest}.lock"] and not remove_unheld_lock(store.root / f"{KEY.digest}.lock")
    finally:
        release.set()
        live.join(30)
    assert live.exitcode == 0 and locks(store) == []


def test_two_holders_exclude_each_other(tmp_path, monkeypatch):
    monkeypatch.setenv("ZPRUNE_LOCK_TIMEOUT", "0.5")
    store = StatsStore(tmp_path)
    proc, release = holder(tmp_path, KEY)
    try:
        with pytest.raises(ZpruneError, match=f"process {proc.pid}"):
            with store.locked(KEY):
                pass
        with store.locked(OTHER):  # another key's writer sweeps stale locks only
            assert locks(store) == sorted([f"{KEY.digest}.lock", f"{OTHER.digest}.lock"])
    finally:
        release.set()
        proc.join(30)
    with store.locked(KEY):
        pass
    assert locks(store) == []


def _count(root, times):
    store, counter = StatsStore(root), root / "counter"
    for _ in range(times):
        with store.locked(KEY):  # read, then write: two holders at once would lose increments
            value = int(counter.read_text())
            os.sched_yield()
            counter.write_text(str(value + 1))


def test_lock_files_removed_on_release_still_exclude(tmp_path, monkeypatch):
    # each release unlinks the file others are about to open or are waiting on: a waiter that locks a
    # file already unlinked must open the new one, else two processes would hold "the" lock at once
    (tmp_path / "counter").write_text("0")
    procs = [FORK.Process(target=_count, args=(tmp_path, 25)) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert (tmp_path / "counter").read_text() == "75" and locks(StatsStore(tmp_path)) == []
