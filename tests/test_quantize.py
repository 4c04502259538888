"""--wbits: GPTQ's error feedback against the direct formula, grids, zeros kept, the recipe, the
compressed-tensors export loaded back by transformers."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import save_tiny
from zprune_cli.cli.app import app
from zprune_cli.exports import export
from zprune_cli.methods import get_method
from zprune_cli.methods.obs import gptq
from zprune_cli.methods.quantize import ColumnQuantizer, QuantSpec, bf16_ceil, fit, quantize
from zprune_cli.base.masks import Pattern
from zprune_cli.engine.recipe import PruneRecipe
from zprune_cli.stats.types import LayerStats

runner = CliRunner()


def spd(n: int, seed: int) -> torch.Tensor:
    """A well-conditioned H = 2/N X^T X, [n, n]."""
    x = torch.randn(4 * n, n, generator=torch.Generator().manual_seed(seed))
    return 2 / x.shape[0] * x.T @ x


def test_gptq_error_feedback_on_a_4x8_example():
    """GPTQ (per channel, 3 bits, asymmetric) equals the OBQ recursion written out directly: quantize column
    j, push e = (w_j - q_j) / [H^-1]_jj times row j of H^-1 onto the later columns, drop j from H^-1."""
    W = torch.tensor([[-1.75, 1.75, 0.30, -0.41, 0.77, -1.12, 0.05, 0.93],
                      [1.75, -1.75, -0.62, 0.18, -0.29, 0.64, 1.31, -0.87],
                      [-1.75, 0.21, 1.75, -0.96, 0.44, -0.13, 0.58, 1.02],
                      [0.66, -1.75, 0.12, 1.75, -1.37, 0.83, -0.51, 0.27]])
    H = spd(8, 0)
    # Every row spans [-1.75, 1.75]: scale 3.5 / 7 = 0.5 (a bfloat16 value), zero point round(1.75 / 0.5) = 4.
    scale, zero = 0.5, 4.0
    Hinv = torch.linalg.inv(H.double() + 0.01 * H.diagonal().mean().double() * torch.eye(8, dtype=torch.float64))
    expected = W.double().clone()
    for j in range(8):
        w = expected[:, j].clone()
        q = scale * (torch.clamp(torch.round(w / scale) + zero, 0, 7) - zero)
        expected[:, j + 1 :] -= ((w - q) / Hinv[0, 0]).unsqueeze(1) * Hinv[0, 1:].unsqueeze(0)
        expected[:, j] = q
        Hinv = Hinv[1:, 1:] - torch.outer(Hinv[1:, 0], Hinv[0, 1:]) / Hinv[0, 0]

    got, grid = gptq(W, H, None, QuantSpec(bits=3, group_size=0))
    assert torch.equal(grid.scale, torch.full((4, 1), 0.5)) and torch.equal(grid.zero, torch.full((4, 1), 4, dtype=torch.uint8))
    assert torch.allclose(got.double(), expected, atol=1e-5)
    rounded = scale * (torch.clamp(torch.round(W / scale) + zero, 0, 7) - zero)
    assert not torch.equal(got, rounded)  # the feedback moved at least one later weight to another level


def test_fit_by_formula():
    x = torch.tensor([[-0.3, 0.9, 0.1], [0.2, 0.4, 0.6], [0.0, 0.0, 0.0]])
    scale, zero = fit(x, QuantSpec(bits=4))
    assert torch.equal(scale, bf16_ceil(torch.tensor([1.2 / 15, 0.6 / 15, 2 / 15])))  # the range holds 0; empty: [-1, 1]
    assert torch.equal(zero, torch.round(torch.tensor([0.3, 0.0, 1.0]) / scale))
    assert torch.equal(bf16_ceil(torch.tensor([0.5, 1.0 + 2**-10])), torch.tensor([0.5, 1.0 + 2**-7]))
    scale, zero = fit(x, QuantSpec(bits=4, sym=True))
    # As GPTQ's reference: xmax = max(|xmin|, xmax), xmin = -xmax only where xmin < 0 (row 2 keeps [0, 0.6]).
    assert torch.equal(zero, torch.full((3,), 8.0)) and torch.equal(scale, bf16_ceil(torch.tensor([1.8, 0.6, 2.0]) / 15))


@pytest.mark.parametrize("spec", [QuantSpec(4, 16), QuantSpec(2, 0), QuantSpec(3, 16, sym=True), QuantSpec(8, 0, sym=True)],
                         ids=["w4g16", "w2-channel", "w3g16-sym", "w8-channel-sym"])
def test_the_walk_s_column_step_equals_the_grid_formula(spec):
    """ColumnQuantizer.column (round, clamp to [-zero, maxq - zero], times scale, in place) equals quantize()'s
    clamp(round(w / scale) + zero, 0, maxq) - zero on every column, with grids fitted by fit() on the weights as
    they are when the walk reaches each group (on W itself here). The columns quantized are stretched past their
    grids' range, as the walk's error feedback moves them, so the clamp is exercised at both ends."""
    W = 3 * torch.randn(24, 64, generator=torch.Generator().manual_seed(7))
    W[:, 5] = 0  # a column of zeros and a group with 0 at its edge
    quantizer = ColumnQuantizer(spec, *W.shape)
    quantizer.start(W)
    width = spec.group_size or 64
    for c in range(64):
        scale, zero = fit(W[:, c // width * width : (c // width + 1) * width], spec)
        w = 1.6 * W[:, c] - 0.3
        got = quantizer.column(W.T, c, c, w)
        assert torch.equal(got, quantize(w, scale, zero, spec.maxq)), c
    assert torch.equal(quantizer.grid().zero[:, 0].float(), fit(W[:, :width], spec)[1])


def layer(seed: int = 1, rows: int = 16, columns: int = 64):
    weight = torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed))
    x = torch.randn(256, columns, generator=torch.Generator().manual_seed(seed + 1))
    return weight, LayerStats(sumsq=x.double().square().sum(0), n_tokens=256, gram=x.T @ x)


@pytest.mark.parametrize("spec", [QuantSpec(4, 16), QuantSpec(3, 0), QuantSpec(4, 16, sym=True), QuantSpec(8, 32, act_order=True)],
                         ids=["w4g16", "w3-channel", "w4g16-sym", "w8g32-act-order"])
def test_gptq_on_a_mask_keeps_zeros_and_lies_on_the_grids(spec):
    weight, stats = layer()
    mask = get_method("wanda").prune_mask(weight, stats, 0.5, Pattern(), "row")
    got, grid = gptq(weight.masked_fill(mask, 0), stats.hessian(), mask, spec)
    assert torch.equal(got[mask], torch.zeros(int(mask.sum())))  # pruned: exactly 0
    q = grid.integers(got)
    assert int(q.min()) >= 0 and int(q.max()) <= spec.maxq
    assert torch.equal(grid.dequantize(q), got)  # every weight is scale * (q - zero) of its own group
    width = spec.group_size or 64
    for g in range(64 // width):  # at most 2^bits values per row and group
        block = got[:, g * width : (g + 1) * width]
        assert all(len(set(row.tolist())) <= 2**spec.bits for row in block)
    if spec.sym:
        assert bool((grid.zero == 2 ** (spec.bits - 1)).all())


@pytest.mark.parametrize("pattern, sparsity", [(Pattern(), 0.5), (Pattern.parse("2:4"), 0.5)])
def test_sparsegpt_joint_walk_keeps_its_mask_zero_and_quantizes(pattern, sparsity):
    weight, stats = layer(3)
    result = get_method("sparsegpt").prune(weight, stats, sparsity, pattern, quant=QuantSpec(4, 16))
    plain = get_method("sparsegpt").prune(weight, stats, sparsity, pattern)
    assert torch.equal(result.weight[result.prune_mask], torch.zeros(int(result.prune_mask.sum())))
    assert int(result.prune_mask.sum()) == 16 * 32  # the same number pruned as without quantization
    assert torch.equal(result.grid.dequantize(result.grid.integers(result.weight)), result.weight)
    assert not torch.equal(result.weight, plain.weight)
    if pattern.is_nm:
        assert bool((result.prune_mask.view(16, -1, 4).sum(-1) == 2).all())


def test_wbits_16_is_today_s_recipe():
    assert PruneRecipe("sparsegpt", 0.5, wbits=16) == PruneRecipe("sparsegpt", 0.5)
    assert PruneRecipe("sparsegpt", 0.5, wbits=16).digest == PruneRecipe("sparsegpt", 0.5).digest
    assert "wbits" not in PruneRecipe("wanda", 0.5).as_dict()
    quantized = PruneRecipe("wanda", 0.5, wbits=4)
    assert (quantized.group_size, quantized.sym, quantized.act_order, quantized.propagate) == (128, False, False, "pruned")
    assert PruneRecipe("wanda", 0, wbits=4).sparsity == 0.0  # plain GPTQ


def prune_and_export(tmp_path, *flags):
    model = save_tiny(tmp_path / "model")
    text = tmp_path / "t.txt"
    text.write_text(" ".join("the quick brown fox jumps over the lazy dog again".split() * 400))
    pruned, packed = tmp_path / "p", tmp_path / "ct"
    result = runner.invoke(app, ["prune", str(model), "-m", "sparsegpt", "-p", "2:4", "--wbits", "4", "--group-size", "16",
                                 *flags, "--data", str(text), "-n", "2", "-l", "16", "--out", str(pruned), "--out-dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    return pruned, packed, export(pruned, packed, "compressed-tensors")


def test_compressed_tensors_round_trip(tmp_path):
    """prune --wbits 4 --sym (2:4) -> export compressed-tensors -> transformers loads it: the same logits.
    (Symmetric: transformers 5.25 with compressed-tensors 0.20 cannot load asymmetric pack-quantized
    checkpoints, llm-compressor#1618; the asymmetric layout is checked against the package's unpacking below.)"""
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    pruned, packed, summary = prune_and_export(tmp_path, "--sym")
    recorded = json.loads((pruned / "zprune.json").read_text())["recipe"]
    assert (recorded["wbits"], recorded["group_size"], recorded["sym"]) == (4, 16, True)
    config = json.loads((packed / "config.json").read_text())["quantization_config"]
    weights = config["config_groups"]["group_0"]["weights"]
    assert (config["format"], weights["num_bits"], weights["group_size"], weights["strategy"]) == ("pack-quantized", 4, 16, "group")
    assert config["sparsity_config"]["sparsity_structure"] == "2:4"
    dense = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float32)
    loaded = AutoModelForCausalLM.from_pretrained(packed, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 17, 33, 65, 127, 2, 0, 64]])
    with torch.no_grad():
        expected, got = dense(ids).logits, loaded(ids).logits
    assert torch.allclose(got, expected, atol=2e-2, rtol=2e-2)  # bf16 tolerance
    assert summary.disk_bytes < sum(f.stat().st_size for f in pruned.glob("*.safetensors"))
    assert 0 < summary.blocks_stored_bytes < 0.5 * summary.blocks_bf16_bytes


def test_export_command_takes_compressed_tensors_and_refuses_an_unquantized_folder(tmp_path):
    pytest.importorskip("compressed_tensors")
    pruned, _, _ = prune_and_export(tmp_path, "--sym")
    result = runner.invoke(app, ["export", str(pruned), "--to", str(tmp_path / "again"), "--format", "compressed-tensors"])
    assert result.exit_code == 0, result.output
    assert "compressed-tensors export:" in result.output and "x their bfloat16 size" in result.output
    plain = tmp_path / "plain"
    result = runner.invoke(app, ["prune", str(tmp_path / "model"), "-m", "magnitude", "--out", str(plain)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(plain), "--to", str(tmp_path / "x"), "--format", "compressed-tensors"])
    assert result.exit_code == 2 and "was not quantized" in result.stderr and "Traceback" not in result.output


def test_compressed_tensors_asymmetric_layout_unpacks_to_the_saved_weights(tmp_path):
    pytest.importorskip("compressed_tensors")
    from safetensors.torch import load_file

    from zprune_cli.formats import compressed_tensors

    pruned, packed, _ = prune_and_export(tmp_path)
    saved = {k: v for f in pruned.glob("*.safetensors") if not f.name.startswith("zprune") for k, v in load_file(f).items()}
    stored = {k: v for f in packed.glob("*.safetensors") for k, v in load_file(f).items()}
    modules = sorted(k[: -len(".weight_packed")] for k in stored if k.endswith(".weight_packed"))
    assert len(modules) == 14 and all(f"{m}.weight_zero_point" in stored for m in modules)
    for m in modules:
        parts = {suffix: stored[m + suffix] for suffix in compressed_tensors.SUFFIXES}
        assert torch.equal(compressed_tensors.decode(parts, 4, sym=False).to(torch.bfloat16), saved[f"{m}.weight"])
