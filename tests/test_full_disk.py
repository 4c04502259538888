"""A real full disk: a size-limited tmpfs mounted for the test (skipped where mounting is not allowed), as
--out, --to and --cache-dir. Each write that cannot fit ends in one line naming the disk, leaves nothing
half-written behind, and the same command works once there is room."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zprune_cli.cli.app import app
from zprune_cli.base.errors import ZpruneError

runner = CliRunner()
CAL = ["-n", "4", "-l", "64"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a folder on a tmpfs of that size; every mount is undone after the test."""
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("needs Linux and mount(8) for a size-limited tmpfs")
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """Take the disk's free space, leaving `leave` bytes; returns the filler file (remove it to free the space)."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        while shutil.disk_usage(folder).free > leave:
            try:
                handle.write(b"\0" * min(4096, shutil.disk_usage(folder).free - leave or 4096))
                handle.flush()
            except OSError:
                break
    return filler


def error_line(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith("."))


def test_prune_out_on_a_full_disk(tiny_dir, text_file, cache, small_disk):
    disk = small_disk("64k")  # the tiny model's weights alone are about 140 KiB
    out = disk / "pruned"
    line = error_line(invoke("prune", tiny_dir, "-m", "wanda", "--data", text_file, *CAL, "--out", out))
    # refused before any work: the output's size is known from the checkpoint's safetensors headers
    assert line.startswith("error: the pruned model needs ") and line.endswith(" free; free space or point --out elsewhere"), line
    assert list(disk.iterdir()) == []  # no staging folder left
    bigger = small_disk("1m")
    assert invoke("prune", tiny_dir, "-m", "wanda", "--data", text_file, *CAL, "--out", bigger / "pruned").exit_code == 0
    assert (bigger / "pruned" / "zprune.json").is_file() and hidden(bigger) == []


@pytest.mark.parametrize("fmt", ["hf", "sparse", "masks"])
def test_export_to_a_full_disk(tiny_dir, text_file, cache, small_disk, tmp_path, fmt):
    pruned = tmp_path / "pruned"
    assert invoke("prune", tiny_dir, "-m", "wanda", "--data", text_file, *CAL, "--out", pruned).exit_code == 0
    disk = small_disk("1m")
    fill(disk, leave=4096 if fmt == "masks" else 16384)  # the masks are about 3 KiB, the weights 140 KiB
    to = disk / "export"
    line = error_line(invoke("export", pruned, "--to", to, "-f", fmt))
    assert line == f"error: writing {to} failed: the disk is full; free space or point --cache-dir / --out elsewhere"
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    (disk / "filler").unlink()
    assert invoke("export", pruned, "--to", to, "-f", fmt).exit_code == 0 and hidden(disk) == []


def test_statistics_on_a_full_cache_disk(tiny_dir, text_file, small_disk):
    """The entry's block-0 inputs fit, its Gram matrices do not: the write fails naming the cache, leaves no
    temporary entry, and the same command computes it once there is room."""
    disk = small_disk("1m")
    cache = disk / "cache"
    args = ["calibrate", tiny_dir, "--data", text_file, "-n", "10", "-l", "64", "--gram", "--cache-dir", cache]
    filler = fill(disk, leave=100 * 1024)  # inputs: 10 x 64 x 32 x 4 + ids = 85 KiB; the whole entry about 120 KiB
    line = error_line(invoke(*args))
    assert line == f"error: writing statistics to {cache} failed: the disk is full; free space or point --cache-dir / --out elsewhere"
    assert [p.name for p in (cache / "stats").iterdir() if p.name.startswith(".tmp-")] == []
    filler.unlink()
    assert invoke(*args).exit_code == 0
    verify = invoke("cache", "verify", "--cache-dir", cache)
    assert verify.exit_code == 0 and "1 of 1 entries verified" in verify.stdout


def test_an_entry_larger_than_the_free_space_is_refused_before_the_model_loads(tiny_dir, text_file, small_disk, monkeypatch):
    from zprune_cli.models import handle

    monkeypatch.setattr(handle, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    disk = small_disk("64k")
    line = error_line(invoke("calibrate", tiny_dir, "--data", text_file, "-n", "10", "-l", "64", "--cache-dir", disk))
    assert line.startswith("error: the statistics entry needs at least 85.0 KiB (block 0's inputs of --nsamples 10 x --seqlen 64)")


def test_results_database_on_a_full_disk(tiny_dir, text_file, small_disk):
    disk = small_disk("256k")
    args = ["eval", tiny_dir, "--eval", text_file, "--eval-seqlen", "64", "--max-windows", "2", "--cache-dir", disk, "--json"]
    filler = fill(disk)
    line = error_line(invoke(*args))
    assert line == (f"error: results database {disk / 'results.sqlite'}: the disk is full; free space or point --cache-dir "
                    "elsewhere; nothing was measured yet")
    filler.unlink()
    assert invoke(*args).exit_code == 0
    with sqlite3.connect(disk / "results.sqlite") as db:
        assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2  # perplexity and sparsity


def test_recording_on_a_full_disk_says_so(tmp_path, monkeypatch):
    """SQLite's "database or disk is full" is no lock to wait out: one line, no file kept aside on the full disk."""
    from zprune_cli.records.results import ResultRow, ResultsStore

    store = ResultsStore(tmp_path / "results.sqlite")

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "_insert", full)
    with pytest.raises(ZpruneError) as err:
        store.record(ResultRow(metric="ppl:x", value=1.0))
    assert str(err.value) == (f"cannot record results in {tmp_path / 'results.sqlite'}: the disk is full; free space or "
                              "point --cache-dir elsewhere")
    assert not (tmp_path / "results-pending").exists()


def test_a_killed_writers_temporary_record_is_swept_by_the_next_write(tmp_path):
    """eval rewrites zprune.json and README.md in the model folder; a writer killed there leaves its temporary
    file, which the next write beside it removes (the folder is what users upload)."""
    from zprune_cli.base.staging import temporary_beside

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name in ("zprune.json", "README.md"):
        left = tmp_path / f".{name}.zprune-tmp-{dead.pid}-0123abcd"
        left.write_text("half")
        mine = temporary_beside(tmp_path / name)
        assert not left.exists() and mine.parent == tmp_path and str(os.getpid()) in mine.name


def test_a_plot_on_a_full_disk_leaves_no_empty_image(small_disk, tmp_path):
    pytest.importorskip("matplotlib")
    from zprune_cli.rendering.plot import plot_leaderboard

    rows = [{"model": "m", "method": "dense", "pattern": "", "sparsity": 0.0, "metrics": {"ppl:x": 20.0}},
            {"model": "m", "method": "wanda", "pattern": "unstructured", "sparsity": 0.5, "metrics": {"ppl:x": 30.0}}]
    disk = small_disk("64k")
    fill(disk)
    with pytest.raises(ZpruneError) as err:
        plot_leaderboard(rows, "ppl:x", disk / "ppl.png")
    assert str(err.value) == f"cannot write plot {disk / 'ppl.png'}: No space left on device"
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # before: an empty ppl.png


def test_a_resumed_offloaded_prune_needs_only_the_rest_of_its_output(tmp_path, text_file, small_disk, monkeypatch):
    """The space check before any work counts what a stopped run's finished blocks hold already: a disk that
    has room for the rest of the output, not all of it, resumes instead of refusing."""
    from test_offload import save_llama
    from test_resume import walked
    from zprune_cli.verbs.partial import partial_folder, staged_bytes

    model = save_llama(tmp_path / "llama4", 4)
    disk = small_disk("2m")
    out = disk / "pruned"
    args = ["prune", model, "-m", "magnitude", "--offload", "disk", "--out", out]
    walked(monkeypatch, stop_at=2)
    assert invoke(*args).exit_code == 130
    staged = staged_bytes(out)
    whole = sum(f.stat().st_size for f in model.glob("*.safetensors"))  # the output: the same tensors, float32
    assert 0.3 * whole < staged < 0.7 * whole
    fill(disk, leave=whole - staged + 64 * 1024)  # room for the rest and the small files, not the whole output
    walked(monkeypatch)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors.index.json").is_file() and not partial_folder(out).exists()
