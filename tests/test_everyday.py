"""Everyday use: where prune saves, in what precision, and exports that are smaller than what they export."""

from __future__ import annotations

import json
import stat

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from zprune_cli.cli.app import app
from zprune_cli.verbs.pruning import default_output
from zprune_cli.engine.recipe import PruneRecipe

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_default_output_names():
    assert default_output("smollm2-135m", [PruneRecipe("zpruner", 0.5)]).name == "smollm2-135m-zpruner-50"
    assert default_output("meta-llama/Llama-2-7b-hf", [PruneRecipe("sparsegpt", pattern="2:4")]).name == "Llama-2-7b-hf-sparsegpt-2of4"
    assert default_output("models/x.gguf", [PruneRecipe("wanda"), PruneRecipe("ria")]).name == "x-pruned"


def test_prune_without_out_saves_where_it_says(tiny_dir, text_file, cache, tmp_path):
    result = invoke("prune", tiny_dir, "-m", "wanda", "-s", "0.6", "--data", text_file, "-n", 2, "-l", 16)
    assert result.exit_code == 0, result.output
    expected = tmp_path / f"{tiny_dir.name}-wanda-60"
    assert (expected / "zprune.json").is_file() and f"saved to {expected.name}" in result.stdout
    again = invoke("prune", tiny_dir, "-m", "wanda", "-s", "0.6", "--data", text_file, "-n", 2, "-l", 16)
    assert again.exit_code == 2 and "already exists" in again.stderr  # never overwritten silently
    nothing = invoke("prune", tiny_dir, "-m", "ria", "--data", text_file, "-n", 2, "-l", 16, "--no-save", "--json")
    assert nothing.exit_code == 0 and json.loads(nothing.stdout)["out"] is None
    assert not (tmp_path / f"{tiny_dir.name}-ria-50").exists()
    both = invoke("prune", tiny_dir, "-m", "ria", "--data", text_file, "--no-save", "--out", tmp_path / "x")
    assert both.exit_code == 2 and "--no-save" in both.stderr


def stored_dtypes(folder) -> set[torch.dtype]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {f.get_tensor(k).dtype for k in f.keys()}


def test_out_dtype_and_file_modes(tiny_dir, text_file, cache, tmp_path):
    out = tmp_path / "bf16"
    result = invoke("prune", tiny_dir, "-m", "wanda", "--data", text_file, "-n", 2, "-l", 16, "--out", out,
                    "--out-dtype", "bfloat16")
    assert result.exit_code == 0, result.output
    assert stored_dtypes(out) == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((out / "zprune.json").read_text())["dtype"] == "bfloat16"
    assert "stored precision | bfloat16" in (out / "README.md").read_text()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert len(set(modes.values())) == 1, modes  # model.safetensors is no longer 0600 among 0644 files
    auto = tmp_path / "auto"
    assert invoke("prune", tiny_dir, "-m", "wanda", "--data", text_file, "-n", 2, "-l", 16, "--out", auto).exit_code == 0
    assert stored_dtypes(auto) == {torch.float32}  # auto: the source's own precision (the tiny model is fp32)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.dtype == torch.bfloat16
    bad = invoke("prune", tiny_dir, "-m", "wanda", "--data", text_file, "--out", tmp_path / "z", "--out-dtype", "int4")
    assert bad.exit_code == 2 and "unknown dtype" in bad.stderr


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sparse_export_is_smaller_than_hf_at_the_same_dtype(tiny_dir, text_file, cache, tmp_path, dtype):
    pruned = tmp_path / "p"
    assert invoke("prune", tiny_dir, "-m", "wanda", "--data", text_file, "-n", 2, "-l", 16, "--out", pruned).exit_code == 0
    sizes = {}
    for fmt in ("hf", "sparse"):
        result = invoke("export", pruned, "--to", tmp_path / fmt, "--format", fmt, "--dtype", dtype, "--json")
        assert result.exit_code == 0, result.output
        sizes[fmt] = json.loads(result.stdout)["weights_disk_bytes"]
        assert json.loads((tmp_path / fmt / "zprune.json").read_text())["dtype"] == dtype
    assert sizes["sparse"] < sizes["hf"], sizes
    from zprune_cli.exports import load_pretrained

    assert load_pretrained(tmp_path / "sparse").dtype == getattr(torch, dtype)


def test_barely_pruned_weights_stay_dense_in_a_sparse_export(tiny_dir, text_file, cache, tmp_path):
    pruned = tmp_path / "p"
    assert invoke("prune", tiny_dir, "-m", "magnitude", "-s", "0.01", "--data", text_file, "-n", 2, "-l", 16,
                  "--out", pruned).exit_code == 0
    sizes = {}
    for fmt in ("hf", "sparse"):
        result = invoke("export", pruned, "--to", tmp_path / fmt, "--format", fmt, "--json")
        assert result.exit_code == 0, result.output
        sizes[fmt] = json.loads(result.stdout)["weights_disk_bytes"]
    assert sizes["sparse"] <= sizes["hf"] * 1.001, sizes  # never larger than dense: 1% pruned is stored dense
    manifest = json.loads((tmp_path / "sparse" / "zprune-sparse.json").read_text())
    assert manifest["compressed"] == []
    from zprune_cli.exports import load_pretrained

    a, b = load_pretrained(pruned), load_pretrained(tmp_path / "sparse")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
