"""No wasted passes: how often each decoder block runs for a prune, counted with forward hooks.

With n calibration windows, a first run with pruned propagation calls every block 2n times (statistics
of its inputs, then the pruned block's outputs), and block 0 once more per window-0 pass that records the
keyword arguments the model hands each block (one when block 0's inputs are computed, one when propagation
starts; the other blocks stand in for that pass and do not run). It never runs the dense calibration pass whose statistics it would not read. Magnitude reads
no statistics: only block 0's inputs are computed. A cached re-run of the same recipe runs no block.
"""

from __future__ import annotations

import json

import pytest

from conftest import score_methods
from zprune_cli.models.blocks import find_blocks
from zprune_cli.models.handle import ModelHandle
from zprune_cli.verbs.pruning import prune
from zprune_cli.engine.recipe import PruneRecipe
from zprune_cli.base.settings import Calibration

N = 4  # calibration windows


class BlockCalls:
    """Counts finished forward calls per decoder block of a model."""

    def __init__(self, model):
        _, blocks = find_blocks(model)
        self.calls = [0] * len(blocks)
        self.handles = [b.register_forward_hook(self._hook(i)) for i, b in enumerate(blocks)]

    def _hook(self, index):
        def hook(module, args, output):
            self.calls[index] += 1

        return hook

    def take(self) -> list[int]:
        calls, self.calls = self.calls, [0] * len(self.calls)
        return calls


def run(handle, recipe, text_file):
    prune(handle, recipe, calibration=Calibration(str(text_file), N, 32, 0))


def counted_run(tiny_dir, recipe, text_file) -> list[int]:
    """Block calls of one prune on a freshly loaded (dense) model."""
    handle = ModelHandle(str(tiny_dir), "cpu", "float32")
    counter = BlockCalls(handle.model)
    run(handle, recipe, text_file)
    return counter.take()


@pytest.mark.parametrize("method", ["sparsegpt", "alps", "wanda"])
def test_pruned_propagation_runs_each_block_twice_per_window(method, tiny_dir, text_file, cache):
    first = counted_run(tiny_dir, PruneRecipe(method, 0.5, propagate="pruned"), text_file)
    assert first == [2 * N + 2] + [2 * N] * (len(first) - 1), first  # was 3n + 2: a dense calibration pass came first
    other = counted_run(tiny_dir, PruneRecipe(method, 0.6, propagate="pruned"), text_file)
    assert other == [2 * N + 1] + [2 * N] * (len(other) - 1), other  # another recipe: block 0's inputs are stored
    again = counted_run(tiny_dir, PruneRecipe(method, 0.6, propagate="pruned"), text_file)
    assert set(again) == {0}, again  # the same recipe on the same weights: its statistics are cached


def test_magnitude_reads_no_calibration_data(tiny_dir, tmp_path, cache):
    handle = ModelHandle(str(tiny_dir), "cpu", "float32")
    counter = BlockCalls(handle.model)
    missing = Calibration(str(tmp_path / "no-such-file.txt"), N, 32, 0)  # never opened
    [outcome] = prune(handle, PruneRecipe("magnitude", 0.5), calibration=missing, out=tmp_path / "out")
    assert set(counter.take()) == {0}  # no forward pass at all
    assert outcome.calibration is None and not cache.exists()  # nothing tokenised, nothing stored
    record = json.loads((tmp_path / "out" / "zprune.json").read_text())
    assert record["calibration"] is None and record["stats_key"] is None and record["overall_sparsity"] == 0.5


def test_score_methods_with_dense_statistics_calibrate_once(tiny_dir, text_file, cache):
    handle = ModelHandle(str(tiny_dir), "cpu", "float32")
    counter = BlockCalls(handle.model)
    recipes = [PruneRecipe(m, 0.5) for m in score_methods()]
    prune(handle, recipes, calibration=Calibration(str(text_file), N, 32, 0))
    calls = counter.take()
    assert calls == [N + 1] + [N] * (len(calls) - 1)  # one calibration pass serves every score method
