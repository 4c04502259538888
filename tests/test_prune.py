"""prune(): exact sparsity on real model structure, propagation modes, allocation, saving, CLI errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import FAMILIES, save_tiny
from zprune_cli.verbs.calibration import calibrate
from zprune_cli.cli.app import app
from zprune_cli.base.sparsity import check_nm
from zprune_cli.models.handle import ModelHandle
from zprune_cli.methods import METHODS, method_names
from zprune_cli.models.blocks import pruned_layers
from zprune_cli.engine.pipeline import layer_sparsities, prune_in_memory
from zprune_cli.verbs.pruning import prune
from zprune_cli.engine.recipe import PruneRecipe
from zprune_cli.base.settings import Calibration

runner = CliRunner()


def cal(text_file, nsamples=4, seqlen=32):
    return Calibration(str(text_file), nsamples, seqlen, 0)


def linear_weights(model):
    return {prefix + n: lin.weight for _, prefix, linears in pruned_layers(model, []) for n, lin in linears.items()}


@pytest.mark.parametrize("method", method_names())
def test_every_method_hits_exact_sparsity(method, tiny_dir, text_file, cache):
    [outcome] = prune(str(tiny_dir), PruneRecipe(method, 0.5), calibration=cal(text_file))
    for name, value in outcome.report.layers.items():
        assert value == 0.5, name
    assert outcome.report.overall == 0.5
    assert outcome.report.recipe.propagate == ("pruned" if METHODS[method].updates_weights else "dense")


@pytest.mark.parametrize("family", FAMILIES)
def test_nm_on_every_family(family, tmp_path, text_file, cache):
    folder = save_tiny(tmp_path / family, family)
    handle = ModelHandle(str(folder))
    [outcome] = prune(handle, PruneRecipe("wanda", pattern="2:4"), calibration=cal(text_file))
    for name, weight in linear_weights(handle.model).items():
        assert check_nm(weight == 0, 2, 4), name


def test_owl_keeps_overall_sparsity(tiny_dir, text_file, cache):
    handle = ModelHandle(str(tiny_dir))
    recipe = PruneRecipe("wanda", 0.6, scope="layer", allocation="owl", owl_lambda=0.1)
    [outcome] = prune(handle, recipe, calibration=cal(text_file))
    targets = layer_sparsities(recipe, pruned_layers(handle.model, []), outcome.calibration.entry)
    assert sum(targets.values()) / len(targets) == pytest.approx(0.6, abs=1e-12)  # equal-size blocks
    per_block = {}
    for name, value in outcome.report.layers.items():
        per_block.setdefault(name.split(".")[2], set()).add(round(value, 2))
    assert len({v for s in per_block.values() for v in s}) > 1  # blocks really differ
    assert outcome.report.overall == pytest.approx(0.6, abs=1 / 1024)  # floor() per layer costs < 1 weight each


def test_propagate_dense_vs_pruned_and_reconstruct(tiny_dir, text_file, cache):
    entry = calibrate(str(tiny_dir), cal(text_file), gram=True).entry
    results = {}
    for propagate in ("dense", "pruned"):
        handle = ModelHandle(str(tiny_dir))
        report = prune_in_memory(handle.model, entry, PruneRecipe("wanda", 0.5, propagate=propagate))
        results[propagate] = {k: v.clone() for k, v in linear_weights(handle.model).items()}
        assert report.recipe.propagate == propagate
    first = "model.layers.0.self_attn.q_proj"
    last = "model.layers.1.mlp.down_proj"
    assert torch.equal(results["dense"][first], results["pruned"][first])  # block 0 sees the same inputs
    assert not torch.equal(results["dense"][last], results["pruned"][last])  # block 1 does not
    handle = ModelHandle(str(tiny_dir))
    recipe = PruneRecipe("zpruner", 0.5, reconstruct=True)
    assert recipe.propagate == "pruned"
    prune_in_memory(handle.model, entry, recipe)
    w = linear_weights(handle.model)[first]
    assert float((w == 0).float().mean()) == 0.5


def test_ignore_and_overrides(tiny_dir, text_file, cache):
    recipe = PruneRecipe("magnitude", 0.5, ignore=[r"self_attn\.o_proj"], overrides={r"mlp\.down_proj": 0.25})
    [outcome] = prune(str(tiny_dir), recipe, calibration=cal(text_file))
    layers = outcome.report.layers
    assert not any("o_proj" in n for n in layers)
    assert layers["model.layers.0.mlp.down_proj"] == 0.25 and layers["model.layers.0.mlp.up_proj"] == 0.5


def test_several_methods_from_one_load(tiny_dir, text_file, cache, tmp_path):
    outcomes = prune(str(tiny_dir), "magnitude,wanda", calibration=cal(text_file), out=tmp_path / "out")
    assert [o.out.name for o in outcomes] == ["magnitude", "wanda"]
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "magnitude")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "wanda")
    wa, wb = linear_weights(a), linear_weights(b)
    name = "model.layers.1.mlp.up_proj"
    # each method started from the dense weights: wanda is not magnitude applied twice
    assert float((wb[name] == 0).float().mean()) == 0.5
    assert not torch.equal(wa[name] == 0, wb[name] == 0)


def test_saved_model_reloads_with_identical_logits(tiny_dir, text_file, cache, tmp_path):
    handle = ModelHandle(str(tiny_dir))
    [outcome] = prune(handle, PruneRecipe("zpruner", 0.5), calibration=cal(text_file), out=tmp_path / "p")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "p").eval()
    ids = torch.randint(2, 250, (1, 24))
    with torch.no_grad():
        assert torch.equal(handle.model(ids).logits, reloaded(ids).logits)
    provenance = json.loads((tmp_path / "p" / "zprune.json").read_text())
    assert provenance["recipe"]["method"] == "zpruner" and provenance["stats_key"] == outcome.calibration.calibration_key
    assert provenance["recipe_digest"] == outcome.report.recipe.digest and provenance["schema"] == 2
    assert provenance["pruned_layers"]["model.layers.0.self_attn.q_proj"] == 0.5
    assert "zpruner" in (tmp_path / "p" / "README.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".p.tmp")]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_json(tiny_dir, text_file, cache):
    result = invoke("prune", tiny_dir, "--method", "wanda", "-s", "0.4", "--data", text_file, "-n", 2, "-l", 16, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["method"] == "wanda" and data["scope"] == "row"
    assert data["layers"]["model.layers.0.self_attn.q_proj"] == 12 / 32  # floor(0.4 * 32) per row
    assert data["layers"]["model.layers.0.mlp.down_proj"] == 25 / 64  # floor(0.4 * 64) per row


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["-s", "1.0"], 2, "between 0 and 1"),
        (["-s", "0"], 2, "between 0 and 1"),
        (["-p", "4:4"], 2, "4:4"),
        (["-p", "3:5"], 2, "layer model.layers.0"),
        (["-m", "nosuch"], 2, "magnitude"),
        (["--scope", "col"], 2, "--scope"),
        (["--ignore", "("], 2, "regular expression"),
        (["--out", "{existing}"], 2, "already exists"),
    ],
)
def test_cli_errors(args, code, needle, tiny_dir, text_file, cache, tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    args = [str(existing) if a == "{existing}" else a for a in args]
    result = invoke("prune", tiny_dir, "--data", text_file, "-n", 2, "-l", 16, *args)
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert list(existing.iterdir()) == []


def test_masks_round_trip_through_the_cli(tiny_dir, text_file, cache, tmp_path):
    pruned, masks, again = tmp_path / "pruned", tmp_path / "masks", tmp_path / "again"
    assert invoke("prune", tiny_dir, "-m", "wanda", "--data", text_file, "-n", 2, "-l", 16, "--out", pruned).exit_code == 0
    assert invoke("export", pruned, "--to", masks, "--format", "masks").exit_code == 0
    result = invoke("prune", tiny_dir, "--masks", masks, "--out", again, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["overall_sparsity"] == 0.5
    from transformers import AutoModelForCausalLM

    a = linear_weights(AutoModelForCausalLM.from_pretrained(pruned))
    b = linear_weights(AutoModelForCausalLM.from_pretrained(again))
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_pruned_propagation_statistics_are_cached(tiny_dir, text_file, cache, monkeypatch):
    import zprune_cli.engine.pipeline as pipeline

    entry = calibrate(str(tiny_dir), cal(text_file), gram=True).entry
    first = ModelHandle(str(tiny_dir))
    prune_in_memory(first.model, entry, PruneRecipe("sparsegpt", 0.5))
    propagated = [p.name for p in entry.store.root.iterdir() if p.is_dir() and p.name.startswith(entry.key + "-p")]
    assert len(propagated) == 1
    monkeypatch.setattr(pipeline, "BlockStatsCollector", lambda *a, **k: pytest.fail("re-ran the propagation"))
    second = ModelHandle(str(tiny_dir))
    prune_in_memory(second.model, entry, PruneRecipe("sparsegpt", 0.5))
    a, b = linear_weights(first.model), linear_weights(second.model)
    assert all(torch.equal(a[n], b[n]) for n in a)  # the cached statistics give the same pruned model
    with pytest.raises(pytest.fail.Exception):  # other settings: a new run
        prune_in_memory(ModelHandle(str(tiny_dir)).model, entry, PruneRecipe("sparsegpt", 0.6))


def test_propagation_cache_is_not_reused_for_other_weights(tiny_dir, text_file, cache):
    entry = calibrate(str(tiny_dir), cal(text_file), gram=True).entry
    handle = ModelHandle(str(tiny_dir))
    prune_in_memory(handle.model, entry, PruneRecipe("wanda", 0.5, propagate="pruned"))
    prune_in_memory(handle.model, entry, PruneRecipe("wanda", 0.5, propagate="pruned"))  # already pruned: new key
    propagated = [p for p in entry.store.root.iterdir() if p.is_dir() and p.name.startswith(entry.key + "-p")]
    assert len(propagated) == 2


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])  # a score method zeroed in place; one that updates weights
def test_layer_error_is_reported_from_the_gram(method, tiny_dir, text_file, cache):
    """Each layer's ||W X - W' X||^2 / ||W X||^2 equals the formula on the calibration tokens' Gram."""
    entry = calibrate(str(tiny_dir), cal(text_file), gram=True).entry
    model = ModelHandle(str(tiny_dir)).model
    dense = {n: w.detach().clone().double() for n, w in linear_weights(model).items()}
    report = prune_in_memory(model, entry, PruneRecipe(method, 0.5, propagate="dense"))
    pruned = {n: w.detach().double() for n, w in linear_weights(model).items()}
    assert set(report.errors) == set(report.layers) == set(dense)
    for index, prefix, linears in pruned_layers(model, []):
        stats = entry.block_stats(index)
        for name in linears:
            W, D, H = dense[prefix + name], dense[prefix + name] - pruned[prefix + name], stats[name].gram.double()
            expected = float(torch.trace(D @ H @ D.T) / torch.trace(W @ H @ W.T))
            assert 0 < expected < 1 and report.errors[prefix + name] == pytest.approx(expected, rel=1e-4)


def test_prune_json_carries_the_layer_errors(tiny_dir, text_file, cache, tmp_path):
    result = invoke("prune", tiny_dir, "-m", "sparsegpt", "--data", text_file, "-n", "4", "-l", "32", "--json",
                    "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["layer_errors"]) == set(data["layers"]) and all(0 < v < 1 for v in data["layer_errors"].values())
    table = invoke("prune", tiny_dir, "-m", "wanda", "--data", text_file, "-n", "4", "-l", "32", "--no-save")
    assert table.exit_code == 0 and "layer error" not in table.stdout  # wanda's statistics hold no Gram
