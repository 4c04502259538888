"""Output that goes to a pipe or a file (as in `| tee`, CI logs): whole lines, never cut or wrapped."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from zprune_cli.cli.app import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "80"})


def assert_whole_lines(text: str) -> None:
    assert "…" not in text, text  # rich's ellipsis: a cut cell
    for line in text.splitlines():
        assert not line.endswith(" ") or line.strip() == "", repr(line)


def test_prune_summary_is_one_line(tiny_dir, text_file, cache, tmp_path):
    out = tmp_path / ("a-rather-long-output-folder-name-" * 3)
    result = invoke("prune", tiny_dir, "-m", "wanda", "--data", text_file, "-n", 2, "-l", 16, "--out", out)
    assert result.exit_code == 0, result.output
    summary = [line for line in result.stdout.splitlines() if "overall sparsity" in line]
    assert len(summary) == 1 and summary[0].endswith(f"saved to {out}")
    assert_whole_lines(result.stdout)


def test_leaderboard_and_summary_are_not_cut(tiny_dir, text_file, cache):
    result = invoke("compare", tiny_dir, "--method", "magnitude,wanda,ria", "--sparsity", "0.5", "--data", text_file,
                    "-n", 2, "-l", 16, "--eval", text_file, "--eval-seqlen", 32, "--max-windows", 1)
    assert result.exit_code == 0, result.output
    assert_whole_lines(result.stdout)
    assert any(line.startswith("4 cell(s) computed") and "one calibration" in line for line in result.stdout.splitlines())
    rows = json.loads(invoke("compare", "--show", "--json").stdout)
    for row in rows:  # every number is printed whole
        for value in row["metrics"].values():
            assert f"{value:.3f}" in invoke("compare", "--show").stdout


def test_cache_ls_keys_and_dates_whole(tiny_dir, text_file, cache):
    key = json.loads(invoke("calibrate", tiny_dir, "--data", text_file, "-n", 2, "-l", 16, "--json").stdout)["key"]
    listing = invoke("cache", "ls").stdout
    assert key in listing and "…" not in listing
