"""A stopped `prune --offload disk --out` keeps its finished blocks, and the same command resumes from the next
one: the resumed output equals an uninterrupted run's bit for bit, and the finished blocks are not walked again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from test_offload import save_llama
from zprune_cli import prune
from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.base.settings import Calibration, Settings
from zprune_cli.cli import Interrupted, Terminated
from zprune_cli.cli.app import app
from zprune_cli.engine import pipeline
from zprune_cli.engine.recipe import PruneRecipe
from zprune_cli.verbs.partial import LOCK, RECORD, partial_folder

RECIPES = {  # each kind of state a resumed run must restore
    "wanda": PruneRecipe(method="wanda", sparsity=0.5),  # dense propagation: statistics from the store
    "sparsegpt-pruned": PruneRecipe(method="sparsegpt", sparsity=0.5, propagate="pruned"),  # the next block's inputs
    "sparsegpt-w4": PruneRecipe(method="sparsegpt", sparsity=0.5, wbits=4, group_size=16),  # quantization grids
    "wanda-permuted": PruneRecipe(method="wanda", pattern="2:4", permute="lsa"),  # the permutation layouts
}
BLOCKS = 4
START_BLOCK = pipeline._Pruner.start_block  # the real one, under every spy


@pytest.fixture(scope="module")
def four_blocks(tmp_path_factory):
    return save_llama(tmp_path_factory.mktemp("llama4"), BLOCKS)


def settings(tmp_path) -> Settings:
    return Settings(cache_dir=tmp_path / "cache", device="cpu", dtype="float32", offload="disk")


def walked(monkeypatch, stop_at: int | None = None, stop=Interrupted) -> list[int]:
    """The blocks a prune starts (a list filled as it runs); with stop_at, Ctrl-C (or `stop`: the CLI's SIGTERM)
    arrives as that block starts."""
    seen, start_block = [], START_BLOCK

    def spy(self, index, *args):
        seen.append(index)
        if index == stop_at:
            raise stop()
        return start_block(self, index, *args)

    monkeypatch.setattr(pipeline._Pruner, "start_block", spy)
    return seen


def saved(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def record_of(folder) -> dict:
    record = json.loads((folder / "zprune.json").read_text())
    return {k: record[k] for k in ("pruned_layers", "overall_sparsity", "recipe", "stats_key")}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_stopped_prune_resumes_to_the_same_output(four_blocks, text_file, tmp_path, monkeypatch, name):
    recipe, cal = RECIPES[name], Calibration(data=str(text_file), nsamples=3, seqlen=24, seed=0)
    whole = tmp_path / "whole"
    [reference] = prune(str(four_blocks), recipe, calibration=cal, out=whole, settings=settings(tmp_path))

    out = tmp_path / "resumed"
    walked(monkeypatch, stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        prune(str(four_blocks), recipe, calibration=cal, out=out, settings=settings(tmp_path))
    partial = partial_folder(out)
    assert not out.exists() and json.loads((partial / RECORD).read_text())["blocks"] == 2
    assert not (partial / LOCK).exists()  # released: the next process takes it

    seen = walked(monkeypatch)
    [outcome] = prune(str(four_blocks), recipe, calibration=cal, out=out, settings=settings(tmp_path))
    assert seen == [2, 3]  # the finished blocks are not pruned again
    assert not partial.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cache", "resumed", "whole"]
    a, b = saved(whole), saved(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert record_of(whole) == record_of(out)
    assert outcome.report.layers == reference.report.layers and outcome.report.errors == reference.report.errors
    assert outcome.report.nm_layout == reference.report.nm_layout
    assert sorted(os.listdir(whole)) == sorted(os.listdir(out))  # the index, grids, card: nothing missing or extra


def test_another_jobs_partial_output_is_replaced(four_blocks, text_file, tmp_path, monkeypatch, caplog):
    cal = Calibration(data=str(text_file), nsamples=3, seqlen=24, seed=0)
    out = tmp_path / "out"
    walked(monkeypatch, stop_at=1)
    with pytest.raises(KeyboardInterrupt):
        prune(str(four_blocks), RECIPES["wanda"], calibration=cal, out=out, settings=settings(tmp_path))
    seen = walked(monkeypatch)
    [outcome] = prune(str(four_blocks), PruneRecipe(method="magnitude", sparsity=0.5), out=out, settings=settings(tmp_path))
    assert seen == list(range(BLOCKS)) and "an unfinished prune of another job" in caplog.text
    assert json.loads((out / "zprune.json").read_text())["recipe"]["method"] == "magnitude"
    whole = tmp_path / "whole"
    prune(str(four_blocks), PruneRecipe(method="magnitude", sparsity=0.5), out=whole, settings=settings(tmp_path))
    a, b = saved(whole), saved(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_error_that_is_not_an_interruption_leaves_nothing(four_blocks, tmp_path, monkeypatch):
    def broken(self, index, *args):
        if index == 2:
            raise ValueError("a bug")

    monkeypatch.setattr(pipeline._Pruner, "start_block", broken)
    out = tmp_path / "out"
    with pytest.raises(ValueError):
        prune(str(four_blocks), PruneRecipe(method="magnitude", sparsity=0.5), out=out, settings=settings(tmp_path))
    assert list(tmp_path.iterdir()) == []  # magnitude reads no calibration: no cache either


def test_a_live_writer_is_not_joined(four_blocks, tmp_path):
    out = tmp_path / "out"
    partial_folder(out).mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (partial_folder(out) / LOCK).write_text(str(other.pid))
        with pytest.raises(ZpruneUsageError, match=f"another zprune \\(pid {other.pid}\\) is writing"):
            prune(str(four_blocks), PruneRecipe(method="magnitude", sparsity=0.5), out=out, settings=settings(tmp_path))
    finally:
        other.kill()
        other.wait()
    prune(str(four_blocks), PruneRecipe(method="magnitude", sparsity=0.5), out=out, settings=settings(tmp_path))
    assert (out / "zprune.json").is_file() and not partial_folder(out).exists()  # a dead writer's lock is taken over


@pytest.mark.parametrize("stop,code", [(Interrupted, 130), (Terminated, 143)], ids=["SIGINT", "SIGTERM"])
def test_cli_says_how_to_resume(four_blocks, tmp_path, monkeypatch, stop, code):
    """Ctrl-C and a scheduler's SIGTERM both keep the finished blocks (SIGTERM's exception is not a
    KeyboardInterrupt: it once removed 16 finished blocks of a 13B SparseGPT prune)."""
    walked(monkeypatch, stop_at=3, stop=stop)
    out = tmp_path / "out"
    args = ["prune", str(four_blocks), "-m", "magnitude", "--offload", "disk", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.output
    assert "the prune stopped: 3 of 4 blocks finished are kept in" in result.stderr
    assert "the same command resumes from block 3" in result.stderr
    assert "Traceback" not in result.output
    walked(monkeypatch)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "resuming the prune left in" in result.stderr and (out / "config.json").is_file()


def test_a_partial_output_missing_a_shard_starts_over(four_blocks, tmp_path, monkeypatch, caplog):
    out = tmp_path / "out"
    recipe = PruneRecipe(method="magnitude", sparsity=0.5)
    walked(monkeypatch, stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        prune(str(four_blocks), recipe, out=out, settings=settings(tmp_path))
    next(partial_folder(out).glob("model-00001-*.safetensors")).unlink()  # a user's clean-up, a failing disk
    seen = walked(monkeypatch)
    prune(str(four_blocks), recipe, out=out, settings=settings(tmp_path))
    assert seen == list(range(BLOCKS)) and "lacks model-00001-of-00005.safetensors; starting over" in caplog.text
    assert len(list(out.glob("model-*.safetensors"))) == BLOCKS + 1
