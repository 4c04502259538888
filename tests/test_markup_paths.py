"""User text never reaches rich as markup: every command, with `[/x]` (a closing tag that matches nothing, so
rich raises MarkupError on it) and `[b]` (an opening tag, which rich would swallow silently) in each
path-like option: model, --data, --data-dir, --cache-dir, --out, --masks, --eval, --tasks-dir, --plot,
export's source and --to, and the same values from zprune.toml. Each run exits 0 and prints the path as typed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import save_tiny
from test_zeroshot import write_task
from zprune_cli.cli.app import app

runner = CliRunner()
CAL = ["-n", "2", "-l", "16"]
EVAL = ["--eval-seqlen", "16", "--max-windows", "2"]
TAG = "[b]q[/x]"  # as a path: the folder "<name>[b]q[" holding "x]<rest>"


def tagged(root: Path, name: str, suffix: str = "") -> Path:
    """root/<name>[b]q[/x]<suffix>, its parent folder created (the '/' of '[/x]' is a path separator)."""
    path = root / f"{name}{TAG}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import zprune_cli as zp
    from zprune_cli.exports import export

    root = tmp_path_factory.mktemp("markup")
    w = {"root": root, "model": save_tiny(tagged(root, "model")), "text": tagged(root, "text", ".txt"),
         "data_dir": tagged(root, "data"), "cache": tagged(root, "cache"), "tasks": tagged(root, "tasks")}
    words = "pruning keeps the weights that matter and drops the rest of them quietly".split()
    w["text"].write_text(" ".join(words[i % len(words)] for i in range(3000)))
    (w["data_dir"] / "wikitext2").mkdir(parents=True)
    (w["data_dir"] / "wikitext2" / "wiki.test.raw").write_text(" ".join(words * 40) + "\n")
    w["tasks"].mkdir()
    write_task(root)  # its data file outside: `datasets` reads data_files as a glob, where [b] is a character class
    shutil.move(root / "tiny_qa.yaml", w["tasks"] / "tiny_qa.yaml")
    settings = zp.Settings(cache_dir=w["cache"])
    calibration = zp.Calibration(str(w["text"]), nsamples=2, seqlen=16)
    for key, pattern in (("pruned", "unstructured"), ("pruned24", "2:4")):
        w[key] = tagged(root, key)
        zp.prune(str(w["model"]), zp.PruneRecipe("wanda", pattern=pattern), calibration=calibration, out=w[key],
                 settings=settings)
    w["masks"] = tagged(root, "masks")
    export(w["pruned"], w["masks"], "masks")
    return w


def run(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    text = result.stdout + result.stderr
    assert result.exit_code == 0, text
    assert "MarkupError" not in text and "internal error" not in text, text
    return text


def shown(path: Path, output: str) -> None:
    """The path appears as typed (escaped markup renders literally; a swallowed [b] would not)."""
    assert TAG in str(path) and str(path).split(TAG)[0].rsplit("/", 1)[-1] + TAG in output, output


def test_calibrate(world):
    args = ["calibrate", world["model"], "--data", world["text"], *CAL, "--cache-dir", world["cache"],
            "--data-dir", world["data_dir"]]
    shown(world["cache"], run(*args))  # cold or a cache hit: the entry's path under the cache folder
    shown(world["cache"], run(*args))  # certainly a hit now
    assert "dry run" in run(*args, "--dry-run")


def test_prune_out_and_masks(world, tmp_path):
    out = tagged(tmp_path, "out")
    shown(out, run("prune", world["model"], "-m", "wanda", "--data", world["text"], *CAL, "--cache-dir", world["cache"],
                   "--out", out))
    assert "dry run" in run("prune", world["model"], "--data", world["text"], *CAL, "--cache-dir", world["cache"],
                            "--out", tagged(tmp_path, "other"), "--dry-run")
    masked = tagged(tmp_path, "masked")
    shown(masked, run("prune", world["model"], "--masks", world["masks"], "--cache-dir", world["cache"], "--out", masked))


def test_eval(world):
    shown(world["pruned"], run("eval", world["pruned"], "--eval", world["text"], *EVAL, "--cache-dir", world["cache"],
                               "--baseline"))
    shown(world["pruned"], run("eval", world["pruned"], "--data-dir", world["data_dir"], *EVAL, "--cache-dir",
                               world["cache"], "--dry-run"))
    shown(world["pruned"], run("eval", world["pruned"], "--eval", "none", "--tasks", "tiny_qa", "--tasks-dir", world["tasks"],
                               "--limit", "2", "--cache-dir", world["cache"]))


def test_compare(world, tmp_path):
    grid = ["compare", world["model"], "-m", "magnitude", "-s", "0.5", "--data", world["text"], *CAL, "--eval", world["text"],
            *EVAL, "--cache-dir", world["cache"]]
    leaderboard, plot = tagged(tmp_path, "board", ".md"), tagged(tmp_path, "plot", ".png")
    run(*grid, "--out", leaderboard, "-f", "md", "--plot", plot)
    assert leaderboard.is_file() and plot.is_file()
    run(*grid)  # the table on stdout, from the results store
    assert "dry run" in run(*grid, "--dry-run")
    shown(world["text"], run("compare", "--show", "--model", world["model"], "--cache-dir", world["cache"]))


@pytest.mark.parametrize("fmt, source", [("hf", "pruned"), ("sparse", "pruned"), ("sparse-24-bitmask", "pruned24"),
                                         ("masks", "pruned")])
def test_export(world, tmp_path, fmt, source):
    to = tagged(tmp_path, "export")
    shown(to, run("export", world[source], "--to", to, "-f", fmt))


def test_cache_commands(world):
    cache = world["cache"]
    run("calibrate", world["model"], "--data", world["text"], *CAL, "--cache-dir", cache)
    shown(cache, run("cache", "ls", "--cache-dir", cache))
    key = next(p.name for p in (cache / "stats").iterdir() if p.is_dir() and not p.name.startswith("."))
    shown(cache, run("cache", "info", key, "--cache-dir", cache))
    run("cache", "verify", "--cache-dir", cache)
    run("cache", "rm", key, "--dry-run", "--cache-dir", cache)
    run("cache", "gc", "--dry-run", "--cache-dir", cache)


def test_values_from_zprune_toml(world, tmp_path, monkeypatch):
    """The same paths given by the TOML (cache_dir, data_dir, [calibration] data) instead of flags."""
    project = tagged(tmp_path, "project")
    project.mkdir()
    cache = tagged(tmp_path, "cache")
    (project / "zprune.toml").write_text(
        f'cache_dir = "{cache}"\ndata_dir = "{world["data_dir"]}"\n'
        f'[calibration]\ndata = "{world["text"]}"\nnsamples = 2\nseqlen = 16\n')
    monkeypatch.chdir(project)
    monkeypatch.delenv("ZPRUNE_HOME")  # the environment would win over the TOML
    shown(cache, run("calibrate", world["model"]))
    shown(cache, run("cache", "ls"))


def test_errors_name_the_path_as_typed(world, tmp_path):
    missing = tagged(tmp_path, "missing")
    result = runner.invoke(app, ["calibrate", str(missing), "--cache-dir", str(world["cache"])])
    assert result.exit_code == 2 and "MarkupError" not in result.output
    assert result.stderr.strip() == (f"error: no model at '{missing}': not a file, a folder, a hub id (org/name) or an "
                                     "alias (gemma3-270m, smollm2-135m)")
    shutil.rmtree(missing.parent)
