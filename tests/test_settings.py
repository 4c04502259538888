"""Settings: defaults < zprune.toml < ZPRUNE_* < flags, type-checked at the edge; the library reads no TOML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import DATA_DIR
from zprune_cli.cli.app import app
from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.verbs.pruning import prune
from zprune_cli.engine.recipe import PruneRecipe
from zprune_cli.base.settings import Calibration, Settings, load_settings

runner = CliRunner()


def test_precedence(tmp_path, monkeypatch):
    (tmp_path / "other").mkdir()
    tmp_path = tmp_path / "project"
    tmp_path.mkdir()
    (tmp_path / "zprune.toml").write_text('cache_dir = "from-toml"\n[calibration]\nnsamples = 3\nseed = 4\n')
    assert load_settings(start=tmp_path, environ={}).calibration == Calibration("c4", 3, 2048, 4)
    env = {"ZPRUNE_NSAMPLES": "5", "ZPRUNE_HOME": str(tmp_path / "from-env")}
    from_env = load_settings(start=tmp_path, environ=env)
    assert from_env.calibration.nsamples == 5 and from_env.cache_dir == tmp_path / "from-env"
    assert from_env.calibration.seed == 4  # the TOML still holds what nothing above it sets
    flags = load_settings({"nsamples": 7, "cache_dir": tmp_path / "flag"}, start=tmp_path, environ=env)
    assert flags.calibration.nsamples == 7 and flags.cache_dir == tmp_path / "flag"
    assert load_settings(start=tmp_path.parent / "other", environ={}).calibration == Calibration()


def test_pyproject_section(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.zprune.sparsity]\n"down_proj" = 0.3\n')
    settings = load_settings(start=tmp_path, environ={})
    assert settings.sparsity_overrides == (("down_proj", 0.3),) and settings.config_file == tmp_path / "pyproject.toml"


@pytest.mark.parametrize(
    "toml, needles",
    [
        ("sparsity = 0.5\n", ("'sparsity' must be a table",)),
        ("nsampels = 4\n", ("unknown key(s) nsampels",)),
        ("cache_dir = 3\n", ("'cache_dir' must be a string",)),
        ("[calibration]\nnsamples = \"4\"\n", ("'calibration.nsamples' must be an integer",)),
        ("[calibration]\nseed = -1\n", ("--seed must be at least 0",)),
        ("[calibration]\nsamples = 4\n", ("unknown key calibration.samples",)),
        ("[sparsity]\n\"down\" = \"half\"\n", ("must be a number",)),
        ("[grids.g]\nnsamples = \"4\"\n", ("grids.g", "'nsamples' must be an integer")),
        ("[grids.g]\nsparsity = \"0.5,x\"\n", ("grids.g.sparsity takes numbers",)),
        ("[grids.g]\nreconstruct = \"yes\"\n", ("'reconstruct' takes none, obs, pcg",)),
        ("[grids.g]\nrefine = \"swap\"\n", ("'refine' takes none, swaps",)),
        ("[grids.g]\nmethod = \"wanda\"\n", ("unknown key(s) method",)),
        ("[grids]\ng = 3\n", ("'grids.g' must be a table",)),
        ("cache_dir = \n", ("cannot read config",)),
    ],
)
def test_bad_toml_exits_2_naming_key_and_file(toml, needles, tmp_path, monkeypatch, tiny_dir):
    (tmp_path / "zprune.toml").write_text(toml)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["calibrate", str(tiny_dir)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    assert "zprune.toml" in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "env, needle",
    [({"ZPRUNE_NSAMPLES": "many"}, "$ZPRUNE_NSAMPLES must be an integer"),
     ({"ZPRUNE_SEED": str(2**64)}, "--seed must be at most")],
)
def test_bad_environment_exits_2(env, needle, monkeypatch, tiny_dir):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = runner.invoke(app, ["calibrate", str(tiny_dir)])
    assert result.exit_code == 2 and needle in result.stderr, result.output


def test_the_library_reads_no_toml(tiny_dir, text_file, tmp_path, monkeypatch):
    (tmp_path / "zprune.toml").write_text('[sparsity]\n"mlp\\\\.down_proj" = 0.25\n[calibration]\nnsamples = 99999\n')
    monkeypatch.chdir(tmp_path)
    [outcome] = prune(str(tiny_dir), PruneRecipe("magnitude", 0.5), calibration=Calibration(str(text_file), 2, 16))
    assert set(outcome.report.layers.values()) == {0.5}  # the cwd's overrides were not applied
    assert Settings.from_env().calibration == Calibration()


def test_toml_data_dir_reaches_the_local_zero_shot_tasks(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("ZPRUNE_DATA_DIR", raising=False)
    (tmp_path / "zprune.toml").write_text(f'data_dir = "{DATA_DIR}"\n')
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["eval", str(tiny_dir), "--tasks", "arc_easy_local", "--limit", "2", "--json"])
    assert result.exit_code == 0, result.output
    metrics = {m["metric"] for m in json.loads(result.stdout)["metrics"]}
    assert "acc:arc_easy_local" in metrics
    assert not any(m.startswith("ppl:") for m in metrics)  # --tasks alone measures the tasks only


def test_named_grid_values_are_checked_before_any_work():
    with pytest.raises(ZpruneUsageError, match="no grid named"):
        Settings().grid("paper")


def test_settings_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_settings(start=Path(tmp_path), environ={}).cache_dir == Settings(config_file=None).cache_dir


def test_a_missing_data_dir_is_refused_from_a_flag_or_file_and_ignored_from_the_environment(tmp_path, caplog):
    with pytest.raises(ZpruneUsageError, match="is not a folder"):
        load_settings({"data_dir": str(tmp_path / "gone")}, start=tmp_path, environ={})
    (tmp_path / "zprune.toml").write_text(f'data_dir = "{tmp_path / "gone"}"\n')
    with pytest.raises(ZpruneUsageError, match="zprune.toml"):
        load_settings(start=tmp_path, environ={})
    (tmp_path / "zprune.toml").unlink()
    with caplog.at_level("WARNING", logger="zprune"):
        settings = load_settings(start=tmp_path, environ={"ZPRUNE_DATA_DIR": str(tmp_path / "gone")})
    assert settings.data_dir is None
    assert [r.getMessage() for r in caplog.records if "ZPRUNE_DATA_DIR" in r.getMessage()], caplog.text
