"""`Grid`: one parser for a named grid of zprune.toml and for the command's flags; the same grid either way,
and a bad key or value named with where it came from."""

from __future__ import annotations

import tomllib

import pytest
from typer.testing import CliRunner

from zprune_cli.cli import compare_cmd
from zprune_cli.cli.app import app
from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.evaluation.run import Evaluation
from zprune_cli.verbs.grid import Grid
from zprune_cli.engine.recipe import PruneRecipe
from zprune_cli.base.settings import Calibration, Settings, load_settings

TOML = """
[grids.paper]
methods = ["wanda", "magnitude"]
sparsity = [0.5, 0.6]
patterns = "unstructured,2:4"
reconstruct = ["none", "pcg"]
propagate = "dense"
eval = "wikitext2-sample"
max_windows = 4
eval_seqlen = 64
nsamples = 8
seqlen = 64
"""
FLAGS = ["--method", "wanda,magnitude", "--sparsity", "0.5,0.6", "--pattern", "unstructured,2:4", "--reconstruct", "none,pcg",
         "--propagate", "dense", "--eval", "wikitext2-sample", "--max-windows", "4", "--eval-seqlen", "64", "-n", "8", "-l", "64"]


def test_toml_and_flags_give_equal_grids():
    settings = Settings()
    table = tomllib.loads(TOML)["grids"]["paper"]
    from_toml = Grid.parse([("zprune.toml: grids.paper", table)], settings)
    from_flags = Grid.parse([("flags", {"methods": "wanda,magnitude", "sparsity": "0.5,0.6", "patterns": "unstructured,2:4",
                                        "reconstruct": "none,pcg", "propagate": "dense", "eval": "wikitext2-sample",
                                        "max_windows": 4, "eval_seqlen": 64, "nsamples": 8, "seqlen": 64, "tasks": None})], settings)
    assert from_toml == from_flags
    assert from_toml.methods == ("wanda", "magnitude") and from_toml.sparsities == (0.5, 0.6)
    assert from_toml.evaluation == Evaluation(data=("wikitext2-sample",), seqlen=64, max_windows=4)
    assert from_toml.calibration == Calibration(nsamples=8, seqlen=64)
    recipes = from_toml.recipes()
    # 2 methods x (2 sparsities unstructured + one 2:4 cell) x 2 reconstructions
    assert len(recipes) == 2 * 3 * 2 and all(r.propagate == "dense" for r in recipes)
    assert PruneRecipe("wanda", 0.6, propagate="dense", reconstruct="pcg") in recipes


def test_flags_override_a_named_grid_key_by_key():
    table = tomllib.loads(TOML)["grids"]["paper"]
    grid = Grid.parse([("zprune.toml: grids.paper", table), ("flags", {"sparsity": "0.7", "methods": None})], Settings())
    assert grid.sparsities == (0.7,) and grid.methods == ("wanda", "magnitude")


@pytest.mark.parametrize("where, values, needle", [
    ("zprune.toml: grids.paper", {"sparsity": [0.5], "method": "wanda"}, "zprune.toml: grids.paper: unknown key(s) method"),
    ("zprune.toml: grids.paper", {"sparsity": "0.5,x"}, "zprune.toml: grids.paper.sparsity takes numbers"),
    ("flags", {"reconstruct": "none,obz"}, "flags: 'reconstruct' takes none, obs, pcg, got 'obz'"),
    ("flags", {"sparsity": "0.5,abc"}, "--sparsity takes numbers, got 'abc'"),
    ("flags", {"methods": ["wanda", 3]}, "--method"),
    ("flags", {"nsamples": "8"}, "flags: 'nsamples' must be an integer"),
])
def test_a_bad_key_is_named_with_its_origin(where, values, needle):
    with pytest.raises(ZpruneUsageError) as caught:
        Grid.parse([(where, values)], Settings())
    assert needle in str(caught.value)


def test_the_command_builds_the_same_grid_from_the_config_and_from_flags(tmp_path, monkeypatch):
    """`compare --grid paper` and the same values as flags hand `compare` equal grids."""
    (tmp_path / "zprune.toml").write_text(TOML)
    monkeypatch.chdir(tmp_path)
    seen: list[Grid] = []
    monkeypatch.setattr(compare_cmd, "_run_grid", lambda c, handle, grid, *rest: seen.append(grid))
    monkeypatch.setattr(compare_cmd, "model_handle", lambda *a, **k: None)
    runner = CliRunner()
    for args in (["--grid", "paper"], FLAGS):
        result = runner.invoke(app, ["compare", "tiny", *args])
        assert result.exit_code == 0, result.output
    by_toml, by_flags = seen
    assert by_toml.methods == ("wanda", "magnitude") and by_toml.sparsities == (0.5, 0.6)
    assert by_toml == by_flags and by_toml.shared["overrides"] == load_settings(start=tmp_path).sparsity_overrides
