"""The statistics store: keys, atomic writes, locking, and refusing partial entries."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import signal
import time

import pytest
import torch

from zprune_cli.base.settings import Calibration, Settings
from zprune_cli.verbs.calibration import calibrate
from zprune_cli.base.errors import ZpruneError
from zprune_cli.stats.collect import InputGroup
from zprune_cli.stats.store import StatsKey, StatsStore

KEY = StatsKey("fp", "float32", "c4:train", "abc", 8, 256, 0, False)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(StatsKey)])
def test_key_changes_with_every_field(field):
    value = getattr(KEY, field)
    other = (not value) if isinstance(value, bool) else (value + 1 if isinstance(value, int) else value + "x")
    assert dataclasses.replace(KEY, **{field: other}).digest != KEY.digest


def test_key_is_stable():
    # literal (as in test_pinned): a change to the key's canonical form would orphan every stored entry
    assert StatsKey("fp", "float32", "c4:train", "abc", 8, 256, 0, False).digest == KEY.digest == "dfe072b8ca3f3fe9bc5c"


def _group(width=4):
    return InputGroup(members=["a", "b"], sumsq=torch.arange(width, dtype=torch.float64), gram=None, n_tokens=10, n_sequences=2)


def test_writer_round_trip(tmp_path):
    store = StatsStore(tmp_path)
    with store.writer(KEY, {"gram": False}) as w:
        w.write_inputs(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, 4))
        w.write_block(0, [_group()])
    entry = store.lookup(KEY)
    stats = entry.block_stats(0)
    assert stats["a"] is stats["b"] and stats["a"].n_tokens == 10
    assert torch.equal(stats["a"].sumsq, torch.arange(4, dtype=torch.float64))


def test_failed_write_leaves_nothing(tmp_path):
    store = StatsStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.writer(KEY, {"gram": False}) as w:
            w.write_block(0, [_group()])
            raise RuntimeError("killed midway")
    assert store.lookup(KEY) is None
    assert [p.name for p in store.root.iterdir() if p.is_dir()] == []


def _write_slowly(root, hold):
    store = StatsStore(root)
    with store.writer(KEY, {"gram": False}) as w:
        w.write_block(0, [_group()])
        time.sleep(hold)


def test_killed_writer_is_never_read_as_complete(tmp_path):
    proc = mp.get_context("fork").Process(target=_write_slowly, args=(tmp_path, 30))
    proc.start()
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    store = StatsStore(tmp_path)
    assert store.lookup(KEY) is None  # the temp folder is not an entry
    junk = store.garbage()
    assert len(junk) == 1 and junk[0].name.startswith(".tmp-")


def test_truncated_entry_is_refused(tmp_path):
    store = StatsStore(tmp_path)
    with store.writer(KEY, {"gram": False}) as w:
        w.write_block(0, [_group()])
    block = store.root / KEY.digest / "block_000.safetensors"
    block.write_bytes(block.read_bytes()[:-8])
    with pytest.raises(ZpruneError, match="truncated"):
        store.lookup(KEY)
    (store.root / KEY.digest / "manifest.json").unlink()
    with pytest.raises(ZpruneError, match="incomplete"):
        store.lookup(KEY)


def _calibrate_in_process(model_dir, text, cache, queue):
    r = calibrate(model_dir, Calibration(text, 2, 16, 0), settings=Settings(cache_dir=cache))
    queue.put((r.key, r.hit))


def test_two_concurrent_writers_leave_one_valid_entry(tiny_dir, text_file, tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_calibrate_in_process, args=(str(tiny_dir), str(text_file), str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    results = [queue.get(timeout=5) for _ in procs]
    assert len({k for k, _ in results}) == 1
    assert sorted(hit for _, hit in results) == [False, True]  # one computed, the other waited and hit
    store = StatsStore(tmp_path)
    entries = store.entries()
    assert len(entries) == 1 and entries[0][1] is not None
    assert not [p for p in store.root.iterdir() if p.name.startswith(".tmp-")]
    json.loads((entries[0][0] / "manifest.json").read_text())
