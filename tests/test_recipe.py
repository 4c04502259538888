"""PruneRecipe: normalised to what takes effect, one digest per set of pruned weights; honest records."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from typer.testing import CliRunner

import zprune_cli.verbs.comparison as comparison
from zprune_cli.cli.app import app
from zprune_cli.verbs.comparison import compare
from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.evaluation.run import Evaluation
from zprune_cli.methods import METHODS, method_names
from zprune_cli.models.blocks import block_linears
from zprune_cli.records.provenance import SCHEMA_VERSION, Provenance
from zprune_cli.verbs.pruning import prune
from zprune_cli.engine.recipe import PruneRecipe, recipe_of
from zprune_cli.base.settings import Calibration

runner = CliRunner()
BASE = PruneRecipe("ria", 0.5)

# One variant per weight-changing field, each differing from BASE in that field alone.
VARIANTS = {
    "method": PruneRecipe("wanda", 0.5, scope="layer"),
    "sparsity": PruneRecipe("ria", 0.6),
    "pattern": PruneRecipe("ria", pattern="2:4"),
    "scope": PruneRecipe("ria", 0.5, scope="row"),
    "allocation": PruneRecipe("ria", 0.5, allocation="owl"),
    "reconstruct": PruneRecipe("ria", 0.5, reconstruct=True, propagate="dense"),
    "refine": PruneRecipe("ria", 0.5, refine="swaps"),
    "propagate": PruneRecipe("ria", 0.5, propagate="pruned"),
    "ignore": PruneRecipe("ria", 0.5, ignore=[r"o_proj"]),
    "overrides": PruneRecipe("ria", 0.5, overrides={r"down_proj": 0.3}),
    "method_options": PruneRecipe("ria", 0.5, method_options={"a": 0.7}),
}
OWL = PruneRecipe("ria", 0.5, allocation="owl")
OWL_VARIANTS = {"owl_m": OWL.replace(owl_m=3.0), "owl_lambda": OWL.replace(owl_lambda=0.1)}
NM = PruneRecipe("ria", pattern="2:4")  # --permute takes effect with N:M patterns only
NM_VARIANTS = {"permute": NM.replace(permute="lsa")}
# The quantization fields are absent from a recipe without --wbits (its digest is today's): vary them from a 4-bit one.
QUANT = PruneRecipe("ria", 0.5, wbits=4, group_size=32)
QUANT_VARIANTS = {"wbits": QUANT.replace(wbits=8), "group_size": QUANT.replace(group_size=0), "sym": QUANT.replace(sym=True),
                  "act_order": QUANT.replace(act_order=True)}
PERMUTED = NM.replace(permute="lsa")  # --permute-layout takes effect with --permute only
PERMUTED_VARIANTS = {"permute_layout": PERMUTED.replace(permute_layout="free")}
SECOND = {**{f: (OWL, v) for f, v in OWL_VARIANTS.items()}, **{f: (NM, v) for f, v in NM_VARIANTS.items()},
          **{f: (QUANT, v) for f, v in QUANT_VARIANTS.items()}, **{f: (PERMUTED, v) for f, v in PERMUTED_VARIANTS.items()}}


def test_every_field_is_covered():
    from dataclasses import fields

    assert {f.name for f in fields(PruneRecipe)} == set(VARIANTS) | set(SECOND)


@pytest.mark.parametrize("field", [*VARIANTS, *SECOND])
def test_one_field_changes_the_digest(field):
    base, other = SECOND[field] if field in SECOND else (BASE, VARIANTS[field])
    assert other != base and other.digest != base.digest
    a, b = base.as_dict(), other.as_dict()
    assert [k for k in {**a, **b} if a.get(k) != b.get(k)][:1] == [field]  # the field itself, first


def test_all_digests_differ():
    recipes = [BASE, *VARIANTS.values(), *OWL_VARIANTS.values(), *NM_VARIANTS.values(), QUANT, *QUANT_VARIANTS.values(),
               *PERMUTED_VARIANTS.values()]  # VARIANTS["allocation"] is OWL, VARIANTS["pattern"] is NM
    assert len({r.digest for r in recipes}) == len(recipes) == len(set(recipes))


def test_same_weights_same_digest():
    assert PruneRecipe("ria") == PruneRecipe("ria", 0.5, method_options={"a": 0.5}) == PruneRecipe("ria", "0.5", method_options={"a": "0.5"})
    assert PruneRecipe("wanda").scope == "row" and PruneRecipe("wanda") == PruneRecipe("wanda", scope="row")
    assert PruneRecipe("ria", ignore=["b", "a", "b"]) == PruneRecipe("ria", ignore=("a", "b"))
    assert PruneRecipe("ria", pattern="2:4").sparsity == 0.5 == PruneRecipe("ria", 0.5, pattern="2:4").sparsity
    assert PruneRecipe.from_dict(json.loads(json.dumps(OWL.as_dict()))) == OWL
    assert BASE.digest == "63685fc34a1217bf"  # literal: a change to the canonical JSON must be deliberate


@pytest.mark.parametrize(
    "kwargs, field, expected, warned",
    [
        (dict(method="sparsegpt", scope="row"), "scope", None, "--scope row has no effect"),
        (dict(method="wanda", pattern="2:4", scope="row"), "scope", None, "--scope row has no effect"),
        (dict(method="sparsegpt", reconstruct=True), "reconstruct", "none", "--reconstruct has no effect"),
        (dict(method="alps", refine="swaps"), "refine", "none", "--refine has no effect"),
        (dict(method="wanda", reconstruct=True), "reconstruct", "obs", None),
        (dict(method="wanda", reconstruct="PCG"), "reconstruct", "pcg", None),
        (dict(method="wanda", refine="swaps"), "refine", "swaps:100", None),
        (dict(method="wanda", refine="swaps:7"), "refine", "swaps:7", None),
        (dict(method="wanda", refine="swaps"), "propagate", "dense", None),
        (dict(method="wanda", reconstruct="pcg"), "propagate", "pruned", None),
        (dict(method="alps"), "propagate", "pruned", None),
        (dict(method="magnitude", propagate="pruned"), "propagate", "dense", "--propagate pruned has no effect"),
        (dict(method="zpruner", reconstruct=True), "propagate", "pruned", None),
        (dict(method="sparsegpt"), "propagate", "pruned", None),
        (dict(method="wanda", allocation="owl"), "owl_m", 5.0, None),
        (dict(method="wanda", pattern="2:4", permute_layout="free"), "permute_layout", "native", "--permute-layout free has no effect"),
        (dict(method="wanda", pattern="2:4", permute="lsa", permute_layout="free"), "permute_layout", "free", None),
    ],
)
def test_normalised_to_what_takes_effect(kwargs, field, expected, warned, caplog):
    with caplog.at_level(logging.WARNING, logger="zprune"):
        recipe = PruneRecipe(**kwargs)
    assert getattr(recipe, field) == expected
    assert (warned in caplog.text) if warned else not caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zprune"):
        assert PruneRecipe.from_dict(recipe.as_dict()) == recipe  # normalising again changes nothing, says nothing
    assert not caplog.text


@pytest.mark.parametrize(
    "kwargs, needles",
    [
        (dict(sparsity=0.7, pattern="2:4"), ("--sparsity", "--pattern")),
        (dict(allocation="owl", pattern="2:4"), ("--allocation", "--pattern")),
        (dict(pattern="2:4", overrides={"down": 0.3}), ("override", "--pattern")),
        (dict(owl_m=3.0), ("--owl-m", "--allocation owl")),
        (dict(allocation="uniform", owl_lambda=0.1), ("--owl-lambda", "--allocation owl")),
        (dict(allocation="owl", owl_m=float("nan")), ("--owl-m",)),
        (dict(allocation="owl", owl_m=-1), ("--owl-m",)),
        (dict(allocation="owl", owl_lambda=-0.1), ("--owl-lambda",)),
        (dict(sparsity=float("nan")), ("--sparsity",)),
        (dict(sparsity="half"), ("--sparsity",)),
        (dict(scope="col"), ("--scope",)),
        (dict(propagate="sideways"), ("--propagate",)),
        (dict(reconstruct="yes"), ("reconstruct",)),
        (dict(refine="swaps:0"), ("--refine",)),
        (dict(refine="swaps:x"), ("--refine",)),
        (dict(refine="none:3"), ("--refine",)),
        (dict(ignore=["("]), ("--ignore",)),
        (dict(overrides={"x": 1.0}), ("override",)),
        (dict(method="ria", method_options={"b": 1}), ("option b",)),
        (dict(method="ria", method_options={"a": "nan"}), ("option a",)),
        (dict(method="nosuch"), ("unknown method",)),
    ],
)
def test_refused_combinations_name_the_fields(kwargs, needles):
    with pytest.raises(ZpruneUsageError) as info:
        PruneRecipe(**kwargs)
    for needle in needles:
        assert needle in str(info.value)


def test_unknown_field_refused():
    with pytest.raises(ZpruneUsageError, match="unknown recipe field"):
        PruneRecipe.from_dict({"method": "ria", "sparsty": 0.5})


@pytest.mark.parametrize(
    "args, needles",
    [
        (["-s", "0.7", "-p", "2:4"], ("--sparsity", "--pattern")),
        (["--allocation", "owl", "-p", "2:4"], ("--allocation", "--pattern")),
        (["--allocation", "owl", "--owl-m", "nan"], ("--owl-m",)),
        (["--owl-m", "3"], ("--owl-m needs --allocation owl",)),
        (["--allocation", "owl", "--owl-lambda", "-1"], ("--owl-lambda",)),
        (["-m", "ria", "--option", "a=inf"], ("option a",)),
        (["-m", "wanda,wanda"], ("twice",)),
    ],
)
def test_cli_refusals_are_one_line_exit_2(args, needles, tiny_dir, text_file, tmp_path):
    result = runner.invoke(app, ["prune", str(tiny_dir), "--data", str(text_file), "-n", "2", "-l", "16",
                                 "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    for needle in needles:
        assert needle in lines[0]
    assert not (tmp_path / "o").exists()


def test_cli_says_what_it_normalised(tiny_dir, text_file, tmp_path):
    result = runner.invoke(app, ["prune", str(tiny_dir), "-m", "sparsegpt", "--scope", "row", "--reconstruct", "--data",
                                 str(text_file), "-n", "2", "-l", "16", "--json"])
    assert result.exit_code == 0, result.output
    assert "--scope row has no effect" in result.stderr and "--reconstruct has no effect" in result.stderr
    data = json.loads(result.stdout)
    assert data["scope"] is None and data["reconstruct"] == "none" and data["recipe_digest"] == PruneRecipe("sparsegpt").digest


def test_names_in_any_case_are_the_same_recipe():
    loud = PruneRecipe("Wanda", 0.5, pattern="Unstructured", scope="ROW", allocation="OWL", reconstruct="PCG",
                       refine="Swaps:10", propagate="Pruned")
    quiet = PruneRecipe("wanda", 0.5, pattern="unstructured", scope="row", allocation="owl", reconstruct="pcg",
                        refine="swaps:10", propagate="pruned")
    assert loud == quiet and loud.digest == quiet.digest and loud.as_dict()["method"] == "wanda"
    assert comparison.grid_recipes("RIA,Wanda", "0.5", reconstruct="OBS") == comparison.grid_recipes("ria,wanda", "0.5", reconstruct="obs")


def test_cli_takes_method_names_in_any_case(tiny_dir, text_file, tmp_path):
    result = runner.invoke(app, ["prune", str(tiny_dir), "--method", "Wanda", "--allocation", "OWL", "--data",
                                 str(text_file), "-n", "2", "-l", "16", "--json", "--no-save"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["recipe_digest"] == PruneRecipe("wanda", allocation="owl").digest
    twice = runner.invoke(app, ["prune", str(tiny_dir), "-m", "wanda,WANDA", "--no-save"])
    assert twice.exit_code == 2 and "names a method twice" in twice.stderr


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"{name} in strict JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("method", method_names())
def test_zprune_json_is_strict_and_valid_for_every_method(method, tiny_dir, text_file, tmp_path):
    recipe = PruneRecipe(method, 0.5, allocation="owl" if METHODS[method].uses_stats else "uniform")
    prune(str(tiny_dir), recipe, calibration=Calibration(str(text_file), 2, 16), out=tmp_path / "p")
    data = strict_json((tmp_path / "p" / "zprune.json").read_text())
    assert data["schema"] == SCHEMA_VERSION and data["recipe_digest"] == recipe.digest
    assert PruneRecipe.from_dict(data["recipe"]) == recipe
    read = Provenance.read(tmp_path / "p")
    assert recipe_of(read.recipe) == recipe and read.overall_sparsity == pytest.approx(0.5, abs=1 / 32)  # floor() per 32-wide row


def test_provenance_refuses_bad_files(tmp_path):
    from zprune_cli.base.errors import ZpruneError

    (tmp_path / "zprune.json").write_text('{"schema": 2, "overall_sparsity": NaN}')
    with pytest.raises(ZpruneError, match="NaN"):
        Provenance.read(tmp_path)
    (tmp_path / "zprune.json").write_text('{"schema": 2, "recipe": {"method": "ria"}}')
    with pytest.raises(ZpruneError, match="not a valid zprune record"):
        Provenance.read(tmp_path)
    (tmp_path / "zprune.json").write_text('{"schema": 9}')
    with pytest.raises(ZpruneError, match="schema 9"):
        Provenance.read(tmp_path)


def weights(model) -> dict[str, torch.Tensor]:
    return {name: linear.weight.detach().clone() for name, linear in block_linears(model).items()}


@pytest.fixture
def captured(monkeypatch):
    """The weights of every cell compare prunes, by recipe digest."""
    seen: dict[str, dict[str, torch.Tensor]] = {}
    real = comparison.prune_in_memory

    def capture(model, entry, recipe, progress=None):
        report = real(model, entry, recipe, progress)
        seen[recipe.digest] = weights(model)
        return report

    monkeypatch.setattr(comparison, "prune_in_memory", capture)
    return seen


def test_prune_and_compare_give_bit_identical_weights(tiny_dir, text_file, tmp_path, captured):
    from transformers import AutoModelForCausalLM

    calibration = Calibration(str(text_file), 2, 16)
    recipes = [PruneRecipe("wanda", 0.5, overrides={r"mlp\.down_proj": 0.25}, ignore=[r"o_proj"]),
               PruneRecipe("sparsegpt", pattern="2:4", overrides={r"layers\.1\.": 0.0}), PruneRecipe("zpruner", 0.6, allocation="owl")]
    compare(str(tiny_dir), recipes, Evaluation(data=str(text_file), seqlen=32, max_windows=1), calibration=calibration)
    for i, recipe in enumerate(recipes):
        prune(str(tiny_dir), recipe, calibration=calibration, out=tmp_path / str(i))
        saved = weights(AutoModelForCausalLM.from_pretrained(tmp_path / str(i)))
        assert saved.keys() == captured[recipe.digest].keys()
        assert all(torch.equal(saved[n], captured[recipe.digest][n]) for n in saved), recipe.label()


def test_cli_prune_and_compare_apply_the_same_config_overrides(tiny_dir, text_file, tmp_path, monkeypatch, captured):
    from transformers import AutoModelForCausalLM

    (tmp_path / "zprune.toml").write_text('[sparsity]\n"mlp\\\\.down_proj" = 0.25\n')
    monkeypatch.chdir(tmp_path)
    common = ["--data", str(text_file), "-n", "2", "-l", "16"]
    assert runner.invoke(app, ["prune", str(tiny_dir), "-m", "wanda", *common, "--out", "p"]).exit_code == 0
    result = runner.invoke(app, ["compare", str(tiny_dir), "--method", "wanda", "--sparsity", "0.5", *common,
                                 "--eval", str(text_file), "--eval-seqlen", "32", "--max-windows", "1", "--json"])
    assert result.exit_code == 0, result.output
    [digest] = captured
    recorded = Provenance.read(tmp_path / "p")
    assert recorded.recipe.digest == digest and recipe_of(recorded.recipe).overrides == ((r"mlp\.down_proj", 0.25),)
    assert recorded.pruned_layers["model.layers.0.mlp.down_proj"] == 0.25
    saved = weights(AutoModelForCausalLM.from_pretrained(tmp_path / "p"))
    assert all(torch.equal(saved[n], captured[digest][n]) for n in saved)


def test_recipes_differing_in_one_field_are_two_cells_and_two_rows(tiny_dir, text_file):
    variants = [BASE, *VARIANTS.values(), *OWL_VARIANTS.values(), QUANT, *QUANT_VARIANTS.values()]  # every field
    evaluation = Evaluation(data=str(text_file), seqlen=32, max_windows=1)
    outcome = compare(str(tiny_dir), variants, evaluation, calibration=Calibration(str(text_file), 2, 16))
    pruned = [r for r in outcome.rows if r["method"] != "dense"]
    assert outcome.computed == len(variants) + 1 and len(pruned) == len(variants)
    assert sorted(r["recipe"] for r in pruned) == sorted(v.digest for v in variants)
    again = compare(str(tiny_dir), variants, evaluation, calibration=Calibration(str(text_file), 2, 16))
    assert again.computed == 0 and again.skipped == len(variants) + 1  # each cell found by its own digest
