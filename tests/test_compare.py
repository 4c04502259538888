"""compare(): one calibration for the whole grid, resume from the results store, output formats."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import zprune_cli.verbs.calibration as calibration
import zprune_cli.verbs.comparison as comparison
from zprune_cli.cli.app import app
from zprune_cli.verbs.comparison import compare, grid_recipes
from zprune_cli.evaluation.run import Evaluation
from zprune_cli.records.results import ResultsStore, results_path
from zprune_cli.base.settings import Calibration

runner = CliRunner()


def run_grid(tiny_dir, text_file, methods="magnitude,wanda,zpruner", sparsities="0.3,0.5", **kwargs):
    return compare(str(tiny_dir), grid_recipes(methods, sparsities),
                   Evaluation(data=str(text_file), seqlen=32, max_windows=2),
                   calibration=Calibration(str(text_file), 2, 16), **kwargs)


@pytest.fixture
def counters(monkeypatch):
    counts = {"calibrations": 0, "prunes": 0}
    real_compute, real_prune = calibration._compute, comparison.prune_in_memory

    def counted_compute(*args, **kwargs):
        counts["calibrations"] += 1
        return real_compute(*args, **kwargs)

    def counted_prune(*args, **kwargs):
        counts["prunes"] += 1
        return real_prune(*args, **kwargs)

    monkeypatch.setattr(calibration, "_compute", counted_compute)
    monkeypatch.setattr(comparison, "prune_in_memory", counted_prune)
    return counts


def test_grid_calibrates_once_and_resumes(tiny_dir, text_file, cache, counters):
    first = run_grid(tiny_dir, text_file)
    assert counters == {"calibrations": 1, "prunes": 6}
    assert first.computed == 7 and first.skipped == 0
    assert len(first.rows) == 7 and first.rows[0]["method"] == "dense"
    by_cell = {(r["method"], r["sparsity"]): r["metrics"] for r in first.rows}
    assert by_cell[("wanda", 0.3)]["sparsity"] == pytest.approx(0.3, abs=0.02)
    assert by_cell[("magnitude", 0.5)]["sparsity"] == pytest.approx(0.5)
    for row in first.rows:  # each cell's own times, for a grid's overhead (wall time / sum of cells)
        assert row["seconds"]["evaluate"] > 0 and (row["seconds"]["prune"] > 0) == (row["method"] != "dense")
    assert sum(r["seconds"]["prune"] + r["seconds"]["evaluate"] for r in first.rows) < first.seconds
    stored = ResultsStore(results_path(cache)).query()  # the thread count a number depends on is on record
    assert stored and {r.versions["torch_threads"] for r in stored} == {str(torch.get_num_threads())}
    second = run_grid(tiny_dir, text_file)
    assert counters == {"calibrations": 1, "prunes": 6}  # nothing recomputed
    assert second.computed == 0 and second.skipped == 7 and second.rows == first.rows
    forced = run_grid(tiny_dir, text_file, "wanda", "0.5", force=True)
    assert forced.computed == 2 and counters["prunes"] == 7


def test_killed_run_resumes(tiny_dir, text_file, cache, monkeypatch):
    calls = {"n": 0}
    real = comparison.prune_in_memory

    def dies_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(comparison, "prune_in_memory", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_grid(tiny_dir, text_file)
    monkeypatch.setattr(comparison, "prune_in_memory", real)
    resumed = run_grid(tiny_dir, text_file)
    assert resumed.skipped == 3 and resumed.computed == 4  # dense + 2 cells were kept


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def cli_grid(tiny_dir, text_file):
    return ["compare", tiny_dir, "--method", "magnitude,wanda", "--sparsity", "0.5", "--pattern", "unstructured,2:4",
            "--data", text_file, "-n", 2, "-l", 16, "--eval", text_file, "--eval-seqlen", 32, "--max-windows", 2]


def test_cli_formats_and_show(tiny_dir, text_file, cache, tmp_path):
    result = invoke(*cli_grid(tiny_dir, text_file), "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    cells = {(r["method"], r["pattern"]) for r in data["rows"]}
    assert cells == {("dense", ""), ("magnitude", "unstructured"), ("magnitude", "2:4"), ("wanda", "unstructured"), ("wanda", "2:4")}
    md = [line for line in invoke(*cli_grid(tiny_dir, text_file), "--format", "md").stdout.splitlines() if line]
    assert "seqlen 32, 2 windows" in md[0] and "calibration corpus.txt 2x16 seed 0" in md[0]  # the protocol, stated
    assert md[1].startswith("| model | method") and md[2].startswith("|---") and len(md) == 3 + 5
    # per sparsity and pattern: the best in bold when the paired test tells it from the runner-up, else both tied
    assert sum("**" in line or " tied" in line for line in md[3:]) >= 2
    assert all(" [" in line for line in md[3:])  # every perplexity with its 95% interval (the windows are stored)
    csv_out = invoke(*cli_grid(tiny_dir, text_file), "--format", "csv").stdout.splitlines()
    assert csv_out[0].startswith("group,protocol,model,method,pattern") and csv_out[0].endswith(",tied,best") and len(csv_out) == 6
    assert ",ppl:corpus.txt low,ppl:corpus.txt high," in csv_out[0]
    shown = invoke("compare", "--show", "--metric", "ppl", "--format", "json")
    assert shown.exit_code == 0 and len(json.loads(shown.stdout)) == 5
    png = tmp_path / "ppl.png"
    assert invoke("compare", "--show", "--plot", png).exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_named_grid(tiny_dir, text_file, cache, tmp_path, monkeypatch):
    (tmp_path / "zprune.toml").write_text(
        f'[grids.small]\nmethods = "magnitude"\nsparsity = "0.5"\neval = "{text_file}"\nnsamples = 2\nseqlen = 16\n'
        f'eval_seqlen = 32\nmax_windows = 2\ndata = "{text_file}"\n'
    )
    monkeypatch.chdir(tmp_path)
    result = invoke("compare", tiny_dir, "--grid", "small", "--json")
    assert result.exit_code == 0, result.output
    assert [r["method"] for r in json.loads(result.stdout)["rows"]] == ["dense", "magnitude"]
    (tmp_path / "zprune.toml").write_text((tmp_path / "zprune.toml").read_text() + "batch_size = 0\n")
    refused = invoke("compare", tiny_dir, "--grid", "small", "--json")  # the grid's batch size reaches the evaluation
    assert refused.exit_code == 2 and "--batch-size must be an integer >= 1" in refused.output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--method", ""], "grid is empty"),
        (["--method", "wanda,wanda"], "twice"),
        (["--grid", "nosuch"], "no grid named"),
        (["--format", "xml"], "--format"),
        (["--json", "--format", "csv"], "--json means --format json and contradicts --format csv"),
        (["--format", "table", "--json"], "contradicts --format table"),
    ],
)
def test_bad_input(args, needle, tiny_dir, text_file, cache):
    result = invoke("compare", tiny_dir, "--data", text_file, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_show_unknown_metric(cache):
    result = invoke("compare", "--show", "--metric", "bleu")
    assert result.exit_code == 2 and "unknown metric" in result.stderr


def test_show_never_ranks_across_protocols(tiny_dir, text_file, cache):
    """Two evaluation setups give two groups, each with its own dense row and its own best marks."""
    for windows in (1, 2):
        args = cli_grid(tiny_dir, text_file)
        args[args.index("--max-windows") + 1] = windows
        assert invoke(*args, "--json").exit_code == 0
    rows = json.loads(invoke("compare", "--show", "--format", "json").stdout)
    groups = {r["group"] for r in rows}
    assert len(groups) == 2
    for g in groups:
        members = [r for r in rows if r["group"] == g]
        assert [r["method"] for r in members].count("dense") == 1 and len(members) == 5
        windows = {m["protocol"].split(" windows")[0].rsplit(" ", 1)[-1] for m in members}
        assert len(windows) == 1  # one protocol per group
        unstructured = [r for r in members if r["pattern"] == "unstructured"]
        # best among its peers only: one best, or (the paired test not telling them apart) the two tied
        best = [r["method"] for r in unstructured if "ppl:corpus.txt" in r["best"]]
        tied = [r["method"] for r in unstructured if "ppl:corpus.txt" in r["tied"]]
        assert (len(best), len(tied)) in ((1, 0), (0, 2))
        assert all(r["best"] == [] for r in members if r["method"] == "dense")
    table = invoke("compare", "--show").stdout  # not a terminal: stars, whole lines
    assert table.count("marked *") == 2 and "*" in table.split("marked *", 2)[2]
    assert all(len(line) < 400 for line in table.splitlines())


def test_a_cached_rerun_loads_no_model(tiny_dir, text_file, cache, monkeypatch):
    import zprune_cli.models.handle as handle

    loads = []
    real = handle.load_model
    monkeypatch.setattr(handle, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    assert invoke(*cli_grid(tiny_dir, text_file), "--json").exit_code == 0
    assert len(loads) == 1
    again = invoke(*cli_grid(tiny_dir, text_file), "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["computed"] == 0
    assert len(loads) == 1  # protocols from the config, statistics and results from the stores
    assert invoke("compare", "--show").exit_code == 0 and len(loads) == 1


def test_old_spellings_still_work_for_a_release(tiny_dir, text_file, cache):
    old = ["compare", tiny_dir, "--methods", "magnitude", "--patterns", "unstructured", "--data", text_file, "-n", 2, "-l", 16,
           "--eval", text_file, "--eval-seqlen", 32, "--max-windows", 1, "--json"]
    result = invoke(*old)
    assert result.exit_code == 0, result.output
    assert "--methods is the old spelling of --method" in result.stderr
    assert "--patterns is the old spelling of --pattern" in result.stderr
    evaluated = invoke("eval", tiny_dir, "--data", text_file, "--seqlen", 32, "--max-windows", 1, "--json")
    assert evaluated.exit_code == 0 and "--data is the old spelling of --eval" in evaluated.stderr


def test_a_grid_leaves_out_acc_norm_of_another_limit(tmp_path):
    """acc_norm comes from the same lm-eval run as its task's acc: a grid asking for 50 questions must not
    show the acc_norm of an earlier 200-question run as a group of its own."""
    from zprune_cli.verbs.comparison import leaderboard
    from zprune_cli.records.results import ResultRow, ResultsStore

    store = ResultsStore(tmp_path / "results.sqlite")
    cell = {"model": "m", "fingerprint": "f", "method": "dense", "seconds": 1.0, "settings": {}, "versions": {}}
    for limit, value in ((200, 0.4), (50, 0.5)):
        protocol = {"task": "piqa_local", "num_fewshot": 0, "limit": limit}
        store.record_many([ResultRow(**{**cell, "metric": m, "value": value, "protocol": protocol,
                                        "settings": {"evaluation": {"tasks": ["piqa_local"], "limit": limit}}})
                           for m in ("acc:piqa_local", "acc_norm:piqa_local")])
    wanted = {"acc:piqa_local": {"task": "piqa_local", "num_fewshot": 0, "limit": 50}}
    rows = leaderboard(store, fingerprint="f", protocols=wanted)
    assert len(rows) == 1 and rows[0]["metrics"] == {"acc:piqa_local": 0.5, "acc_norm:piqa_local": 0.5}


def test_a_leaderboard_row_has_exactly_the_typed_keys(tmp_path):
    """LeaderboardRow names every key a row has (and `compare --json` writes): no private key is left in one."""
    from typing import get_type_hints

    from zprune_cli.verbs.comparison import leaderboard
    from zprune_cli.records.leaderboard_cells import LeaderboardRow
    from zprune_cli.records.results import ResultRow, ResultsStore

    store = ResultsStore(tmp_path / "results.sqlite")
    protocol = {"task": "piqa_local", "num_fewshot": 0, "limit": 50}
    store.record_many([ResultRow(metric="acc:piqa_local", value=0.5, model="m", fingerprint="f", protocol=protocol,
                                 settings={"evaluation": {"tasks": ["piqa_local"], "limit": 50}})])
    [row] = leaderboard(store, fingerprint="f")
    assert set(row) == set(get_type_hints(LeaderboardRow))
    assert row["metrics"] == {"acc:piqa_local": 0.5} and row["protocol"] == "m; piqa_local 0-shot, limit 50" and row["group"] == 1
