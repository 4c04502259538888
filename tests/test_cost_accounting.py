"""--dry-run counts --wbits' and --permute's own work and memory (issue 22, 23): arithmetic on a tiny model's
shape, no weights loaded."""

from __future__ import annotations

import pytest
import torch

import zprune_cli as zp
from zprune_cli.estimation.estimate import Target, estimate_prune
from zprune_cli.estimation.shape import model_shape
from zprune_cli.methods.obs import obs_flops


@pytest.fixture(scope="module")
def shape(tiny_dir):
    handle = zp.ModelHandle(str(tiny_dir), "cpu", "float32")
    return model_shape(handle.config, handle.source)


def pruning_step(shape, method: str, **options) -> tuple[int, dict, zp.PruneRecipe]:
    recipe = zp.PruneRecipe(method, 0.5, pattern="2:4", **options)
    cal = zp.Calibration("c4-sample", nsamples=4, seqlen=64)
    estimate = estimate_prune(Target(shape, torch.float32, torch.device("cpu"), "none"), cal, [recipe], None)
    step = f"pruning {recipe.label()}"
    return estimate.step_bytes[step], estimate.work[step], recipe


def test_gptq_after_a_mask_counts_a_whole_walk_and_the_joint_walk_only_its_rounding(shape):
    weights = sum(out * width for out, width in shape.layer_shapes)
    walks = sum(obs_flops(out, width, 128) for out, width in shape.layer_shapes)
    bytes0, work0, _ = pruning_step(shape, "wanda")
    bytes4, work4, recipe = pruning_step(shape, "wanda", wbits=4, group_size=0)
    assert work4["flops"] - work0["flops"] == pytest.approx(walks)
    assert work4["selected"] - work0["selected"] == weights  # one rounding per weight
    out = shape.largest_linear // shape.widest
    assert bytes4 - bytes0 >= recipe.extra_work_bytes(out, shape.widest)  # and the pruned copy an in-place mask had not
    assert recipe.extra_work_bytes(out, shape.widest) == 2 * 4 * out + out * shape.widest * 5 + 2 * shape.widest**2 * 4

    sbytes0, swork0, _ = pruning_step(shape, "sparsegpt")
    sbytes4, swork4, _ = pruning_step(shape, "sparsegpt", wbits=4, group_size=0)
    assert swork4["flops"] == swork0["flops"]  # quantized inside the walk it makes anyway
    assert swork4["selected"] - swork0["selected"] == weights
    assert sbytes4 - sbytes0 == 2 * 4 * out  # its grids alone


@pytest.mark.parametrize("mode", ["heuristic", "lsa"])
def test_permutation_search_is_counted(shape, mode):
    weights = sum(out * width for out, width in shape.layer_shapes)
    bytes0, work0, _ = pruning_step(shape, "wanda")
    bytes1, work1, recipe = pruning_step(shape, "wanda", permute=mode)
    assert work1["selected"] - work0["selected"] == 4 * weights
    assert (work1["flops"] > work0["flops"]) == (mode == "lsa")
    out = shape.largest_linear // shape.widest
    assert bytes1 - bytes0 >= recipe.extra_work_bytes(out, shape.widest) >= 2 * 4 * out * shape.widest
