"""A compare shows the groups its own grid measured: an earlier `eval` of the dense model opens no group."""

from __future__ import annotations

import csv
import io
import json

import pytest

from typer.testing import CliRunner

from zprune_cli.cli.app import app

runner = CliRunner()


def grid(tiny_dir, text_file, *extra: str) -> list[str]:
    return ["compare", str(tiny_dir), "--method", "magnitude", "--sparsity", "0.5", "--data", str(text_file), "-n", "2",
            "-l", "16", "--eval", str(text_file), "--eval-seqlen", "64", "--max-windows", "2", *extra]


def dense_eval(tiny_dir, text_file, seqlen: int) -> dict:
    result = runner.invoke(app, ["eval", str(tiny_dir), "--eval", str(text_file), "--eval-seqlen", str(seqlen),
                                 "--max-windows", "2", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_dense_eval_under_another_protocol_opens_no_group(tiny_dir, text_file, cache):
    """The issue's reproduction in an empty store: eval the dense model (seqlen 32), then compare (seqlen 64)."""
    dense_eval(tiny_dir, text_file, 32)
    result = runner.invoke(app, grid(tiny_dir, text_file, "--json"))
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [(r["method"], r["group"]) for r in rows] == [("dense", 1), ("magnitude", 1)]
    assert [set(r["metrics"]) for r in rows] == [{"ppl:corpus.txt", "sparsity"}] * 2
    assert "seqlen 64" in rows[0]["protocol"]
    table = runner.invoke(app, grid(tiny_dir, text_file))  # a re-run, every cell from the store
    assert table.exit_code == 0 and table.stdout.count("┏") == 1, table.stdout  # one table
    lines = list(csv.reader(io.StringIO(runner.invoke(app, grid(tiny_dir, text_file, "--format", "csv")).stdout)))
    assert [(line[0], line[3]) for line in lines[1:]] == [("1", "dense"), ("1", "magnitude")]
    page = runner.invoke(app, grid(tiny_dir, text_file, "--format", "html")).stdout
    assert page.count('<section class="group">') == 1
    shown = json.loads(runner.invoke(app, ["compare", "--show", "--format", "json"]).stdout)  # --show: everything stored
    assert sorted((r["group"], r["method"]) for r in shown) == [(1, "dense"), (2, "dense"), (2, "magnitude")]


def test_a_dense_eval_under_the_grid_protocol_joins_its_group(tiny_dir, text_file, cache):
    measured = dense_eval(tiny_dir, text_file, 64)
    result = runner.invoke(app, grid(tiny_dir, text_file, "--json"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["computed"], data["skipped"]) == (1, 1)  # the dense cell came from the eval
    rows = data["rows"]
    assert [(r["method"], r["group"]) for r in rows] == [("dense", 1), ("magnitude", 1)]
    ppl = next(m["value"] for m in measured["metrics"] if m["metric"] == "ppl:corpus.txt")
    assert rows[0]["metrics"]["ppl:corpus.txt"] == ppl


def test_a_magnitude_grid_reads_no_calibration_text(tiny_dir, text_file, cache, monkeypatch):
    """Offline with no data folder, the default calibration text (c4) cannot be read: magnitude needs none."""
    monkeypatch.delenv("ZPRUNE_DATA_DIR", raising=False)
    command = ["compare", str(tiny_dir), "--method", "magnitude", "--sparsity", "0.3,0.5", "--eval", str(text_file),
               "--eval-seqlen", "32", "--max-windows", "2"]
    result = runner.invoke(app, [*command, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["computed"], data["stats_key"]) == (3, None)
    assert {(r["method"], r["sparsity"], r["group"]) for r in data["rows"]} == {("dense", None, 1), ("magnitude", 0.3, 1),
                                                                                ("magnitude", 0.5, 1)}
    assert [r["metrics"]["sparsity"] for r in data["rows"]] == pytest.approx([0.0, 0.3, 0.5], abs=1e-3)
    assert not (cache / "stats").exists() or not any((cache / "stats").iterdir())  # no statistics entry
    again = runner.invoke(app, command)
    assert again.exit_code == 0, again.output
    assert "0 cell(s) computed, 3 from the results store, no calibration (no method reads statistics)" in again.stdout
    wanda = runner.invoke(app, [*command[:3], "wanda", *command[4:]])  # a method that reads statistics: the offline error
    assert wanda.exit_code == 1 and "c4" in wanda.stderr


def test_a_carried_row_is_found_whichever_store_entry_serves_its_calibration(tiny_dir, text_file, tmp_path):
    """Pruned propagation asks for block 0's inputs only: in one cache an inputs-only entry is made for it, in
    another a full entry (made first by a dense-propagation grid) serves it. The statistics it reads are the
    same, so the rows carry the same key and a row carried from one cache to the other is found, not recomputed
    (the leaderboard's resume on a new machine recomputed a whole grid)."""
    import shutil

    def pruned_grid(cache) -> dict:
        result = runner.invoke(app, ["compare", str(tiny_dir), "--method", "wanda", "--sparsity", "0.5", "--propagate",
                                     "pruned", "--data", str(text_file), "-n", "2", "-l", "16", "--eval", str(text_file),
                                     "--eval-seqlen", "64", "--max-windows", "2", "--cache-dir", str(cache), "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    alone, beside = tmp_path / "alone", tmp_path / "beside"
    full = runner.invoke(app, ["calibrate", str(tiny_dir), "--data", str(text_file), "-n", "2", "-l", "16",
                               "--cache-dir", str(beside), "--json"])
    assert full.exit_code == 0, full.output
    first, second = pruned_grid(alone), pruned_grid(beside)
    inputs_only = [p.name for p in (alone / "stats").iterdir() if p.is_dir() and "-p" not in p.name]
    assert inputs_only != [json.loads(full.stdout)["key"]]  # two different entries served the two grids
    assert first["stats_key"] == second["stats_key"]  # before, each the key of the entry that served it
    assert first["stats_key"] == json.loads(full.stdout)["calibration_key"]
    assert [r["metrics"] for r in first["rows"]] == [r["metrics"] for r in second["rows"]]
    fresh = tmp_path / "fresh"  # a new machine: the carried rows and a full entry, no inputs-only one
    shutil.copytree(beside / "stats", fresh / "stats")
    for part in alone.glob("results.sqlite*"):  # the database and its write-ahead log
        shutil.copy(part, fresh / part.name)
    resumed = pruned_grid(fresh)
    assert (resumed["computed"], resumed["skipped"]) == (0, 2)  # the dense row and wanda's, both found
