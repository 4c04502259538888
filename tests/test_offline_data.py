"""Offline, every data error names the samples shipped with zprune first (they need no network), then a
local copy, then FILE / self."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from zprune_cli.cli.app import app

runner = CliRunner()
CALIBRATION = ("use --data c4-sample (shipped with zprune, no network needed), or put a local copy at DIR/c4/*train*.jsonl "
               "and pass --data-dir DIR (or ZPRUNE_DATA_DIR=DIR), or --data FILE or --data self")
EVALUATION = ("use --eval wikitext2-sample (shipped with zprune, no network needed), or put a local copy at "
              "DIR/wikitext2/wiki.test.raw and pass --data-dir DIR (or ZPRUNE_DATA_DIR=DIR), or --eval FILE")


@pytest.fixture(params=["HF_HUB_OFFLINE=1", "no network"])
def offline(request, monkeypatch):
    """Offline as a user sets it, or a hub that refuses connections (HF_HUB_OFFLINE unset); no data folder."""
    monkeypatch.delenv("ZPRUNE_DATA_DIR", raising=False)
    if request.param == "no network":
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return request.param


@pytest.mark.parametrize("command", [["calibrate"], ["prune", "--method", "wanda", "--no-save"],
                                     ["compare", "--method", "wanda", "--eval", "wikitext2-sample"]])
def test_calibration_names_the_shipped_sample_first(command, tiny_dir, cache, offline):
    result = runner.invoke(app, [command[0], str(tiny_dir), *command[1:], "-n", "2", "-l", "16"])
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "c4 (train)" in line and line.endswith(CALIBRATION), line


def test_evaluation_names_the_shipped_sample_first(tiny_dir, cache, offline):
    """Asked for wikitext2 by name (with no --eval, eval falls back to the sample itself: tests/test_cli_eval.py)."""
    result = runner.invoke(app, ["eval", str(tiny_dir), "--eval", "wikitext2"])
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert "wikitext2 (test)" in line and line.endswith(EVALUATION), line


def test_the_suggested_samples_work_offline(tiny_dir, cache, offline):
    calibrated = runner.invoke(app, ["calibrate", str(tiny_dir), "--data", "c4-sample", "-n", "2", "-l", "16"])
    evaluated = runner.invoke(app, ["eval", str(tiny_dir), "--eval", "wikitext2-sample", "--eval-seqlen", "32",
                                    "--max-windows", "2"])
    assert (calibrated.exit_code, evaluated.exit_code) == (0, 0), calibrated.output + evaluated.output


def test_help_lists_the_shipped_samples():
    for command, sample in (("eval", "wikitext2-sample"), ("compare", "wikitext2-sample"), ("prune", "c4-sample"),
                            ("calibrate", "c4-sample")):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and sample in result.stdout, (command, result.stdout)
