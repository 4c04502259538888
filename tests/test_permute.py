"""--permute: the searches never keep less, N:M counts hold in the permuted order, absorbed permutations leave
the model's function unchanged, layers recorded natively N:M are so in their stored weights, bad input exits 2."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import save_tiny, tiny_config, tiny_model
from zprune_cli.cli.app import app
from zprune_cli.verbs.comparison import grid_recipes
from zprune_cli.base.masks import Pattern
from zprune_cli.methods import get_method
from zprune_cli.methods.permutation import find_permutation, heuristic_order, kept_score, lsa_refine
from zprune_cli.engine.permuted import Permuter
from zprune_cli.models.blocks import find_blocks, find_linears, pruned_layers, weight_view
from zprune_cli.models.handle import ModelHandle
from zprune_cli.verbs.pruning import prune
from zprune_cli.engine.recipe import PruneRecipe
from zprune_cli.base.settings import Calibration
from zprune_cli.base.sparsity import check_nm, nm_violation

runner = CliRunner()


def scores(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Heavy-tailed, column-structured scores, like |W| x ||X|| with outlier channels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g).abs() * torch.rand(cols, generator=g).pow(4) * 10


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
@pytest.mark.parametrize("shape", [(8, 16), (64, 128), (3, 256)])
def test_searches_never_lower_the_kept_score(pattern, shape):
    p = Pattern.parse(pattern)
    for seed in range(4):
        s = scores(*shape, seed)
        none = kept_score(s, p)
        heuristic = kept_score(s[:, find_permutation(s, p, "heuristic")], p)
        lsa = kept_score(s[:, find_permutation(s, p, "lsa")], p)
        assert none <= heuristic <= lsa
    assert lsa > none  # structured scores: the permutation finds something


def test_lsa_in_blocks_keeps_at_least_its_start():
    """A work bound that splits 128 groups into blocks of 4 still never keeps less than its starting order."""
    p, s = Pattern.parse("2:4"), scores(32, 512, 7)
    start = heuristic_order(s, 4)
    refined = lsa_refine(s, start, p, work=32 * 16)  # isqrt(16) = 4 groups per block
    assert sorted(refined.tolist()) == list(range(512))
    assert kept_score(s[:, refined], p) >= kept_score(s[:, start], p)


def test_kept_score_is_the_direct_sum():
    s = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.5, 0.25, 8.0, 7.0]])
    assert kept_score(s, Pattern.parse("2:4")) == 4 + 3 + 8 + 7


def test_ties_move_tied_columns_together():
    p, s = Pattern.parse("2:4"), scores(16, 32, 3)
    ties = [torch.stack([torch.arange(8), torch.arange(8) + 8]), torch.stack([torch.arange(16, 24), torch.arange(24, 32)])]
    perm = find_permutation(s, p, "lsa", ties)
    for index in ties:
        moved = perm[index] - index[:, :1]  # the same order within each tied row of columns
        assert torch.equal(moved[0], moved[1])


def run_permuter(model, mode: str, pattern: str) -> Permuter:
    """Every layer through Permuter.prune with a prune that keeps the weight: only the permutations act."""
    permuter = Permuter(model, mode, Pattern.parse(pattern), get_method("magnitude"))
    _, blocks = find_blocks(model)
    with torch.no_grad():
        for index, block in enumerate(blocks):
            linears = find_linears(block)
            permuter.start_block(index, block, f"{index}.", list(linears))
            for name, linear in linears.items():
                weight = weight_view(linear)
                keep = lambda w, s: (w, torch.zeros_like(w, dtype=torch.bool))  # noqa: E731
                weight.copy_(permuter.prune(f"{index}.{name}", weight.clone(), None, keep).weight)
    return permuter


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


MHA_LLAMA = "llama_mha"


def build(family: str):
    if family != MHA_LLAMA:
        return tiny_model(family).float()
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.num_key_value_heads = config.num_attention_heads
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


@pytest.mark.parametrize("family, kinds", [
    (MHA_LLAMA, ("self_attn.o_proj", "mlp.down_proj")),
    ("llama", ("self_attn.o_proj", "mlp.down_proj")),  # grouped-query: 4 query heads, 2 key-value heads
    ("gpt2", ("attn.c_proj", "mlp.c_proj")),  # Conv1D, fused c_attn
    ("mixtral", ("self_attn.o_proj", "mlp.experts.down_proj")),  # fused experts
    ("qwen2_moe", ("self_attn.o_proj", "mlp.experts.down_proj", "mlp.shared_expert.down_proj")),
])
def test_absorbed_permutations_leave_the_logits_unchanged(family, kinds):
    model = build(family)
    ids = torch.randint(2, 250, (1, 24), generator=torch.Generator().manual_seed(1))
    before = logits(model, ids)
    dense = {name: weight_view(m).clone() for name, m in find_linears(model).items()}
    permuter = run_permuter(model, "lsa", "2:4")
    assert (logits(model, ids) - before).abs().max() < 1e-5
    assert set(permuter.absorbed) == set(kinds)  # found from the block's computation, not from names
    absorbed = [n for n in permuter.layout if n.split(".", 1)[1].startswith(kinds) and n not in permuter.orders]
    assert absorbed and all(permuter.layout[n] == "native" for n in absorbed)
    # the searches moved something that was absorbed: the weights are not simply the dense ones
    assert any(not torch.equal(weight_view(m), dense[name]) for name, m in find_linears(model).items())


def test_no_absorption_falls_back_to_the_mapped_back_mask():
    """8:16 groups would straddle two 8-wide heads: o_proj keeps its permutation to itself (mask mapped back)."""
    model = build("llama")
    ids = torch.randint(2, 250, (1, 24), generator=torch.Generator().manual_seed(1))
    before = logits(model, ids)
    permuter = run_permuter(model, "lsa", "8:16")
    assert (logits(model, ids) - before).abs().max() < 1e-5
    o_proj = [n for n in permuter.layout if n.endswith("o_proj")]
    assert o_proj and all(n in permuter.orders and permuter.layout[n] == "permuted" for n in o_proj)
    assert all(permuter.layout[n] == "native" for n in permuter.layout if n.endswith("down_proj"))


def cal(text_file):
    return Calibration(str(text_file), 4, 32, 0)


def stored_weights(model) -> dict[str, torch.Tensor]:
    return {prefix + n: weight_view(lin) for _, prefix, linears in pruned_layers(model, []) for n, lin in linears.items()}


@pytest.mark.parametrize("method", ["ria", "sparsegpt"])
def test_nm_exact_in_the_permuted_order_and_native_where_recorded(method, tmp_path, text_file, cache, monkeypatch):
    seen: list[Permuter] = []
    original = Permuter.log_summary
    monkeypatch.setattr(Permuter, "log_summary", lambda self: (seen.append(self), original(self)))
    folder = save_tiny(tmp_path / "tiny", "llama")
    [outcome] = prune(str(folder), PruneRecipe(method, pattern="2:4", permute="lsa"), calibration=cal(text_file),
                      out=tmp_path / "out")
    record = json.loads((tmp_path / "out" / "zprune.json").read_text())
    layout = record["nm_layout"]
    assert record["recipe"]["permute"] == "lsa" and set(layout) == set(outcome.report.layers)
    assert {"native", "permuted"} == set(layout.values())
    from transformers import AutoModelForCausalLM

    weights = stored_weights(AutoModelForCausalLM.from_pretrained(tmp_path / "out"))
    for name, how in layout.items():
        zeros = weights[name] == 0
        if how == "native":
            assert check_nm(zeros, 2, 4), name
        else:
            assert check_nm(zeros[:, seen[0].orders[name]], 2, 4), name
    assert any(not check_nm(weights[n] == 0, 2, 4) for n, how in layout.items() if how == "permuted")
    if method == "sparsegpt":  # the layer error compares weights in one column order (absorbed layers: 1.2-2.3, not 0.01-0.02)
        assert outcome.report.errors and max(outcome.report.errors.values()) < 0.3


@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_score_method_selects_once_on_the_permuted_scores(method, tmp_path, text_file, cache, monkeypatch):
    """A score method's permuted prune selects its mask on the permuted columns of the scores its search ran on
    (Permuter.select): the saved model equals, weight for weight, the general path's, which scores the
    permuted copy of the weight again and prunes that copy; and it never takes the general path."""
    from zprune_cli.engine import pipeline

    folder = save_tiny(tmp_path / "tiny", "llama")
    recipe = PruneRecipe(method, pattern="2:4", permute="lsa")
    calls = []
    original_select = Permuter.select
    monkeypatch.setattr(Permuter, "prune", lambda *a, **k: pytest.fail("a score method took the general path"))
    monkeypatch.setattr(Permuter, "select", lambda self, *a: (calls.append(a[0]), original_select(self, *a))[1])
    [fast] = prune(str(folder), recipe, calibration=cal(text_file), out=tmp_path / "fast")
    monkeypatch.undo()
    original_init = pipeline._Pruner.__init__

    def general(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.scores_alone = False

    monkeypatch.setattr(pipeline._Pruner, "__init__", general)
    monkeypatch.setattr(Permuter, "select", lambda *a, **k: pytest.fail("the general path selected"))
    [slow] = prune(str(folder), recipe, calibration=cal(text_file), out=tmp_path / "slow")
    assert sorted(calls) == sorted(fast.report.nm_layout)
    assert fast.report.nm_layout == slow.report.nm_layout and {"native", "permuted"} == set(fast.report.nm_layout.values())
    from transformers import AutoModelForCausalLM

    a, b = (stored_weights(AutoModelForCausalLM.from_pretrained(tmp_path / d)) for d in ("fast", "slow"))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert all(torch.equal(x, y) for x, y in zip(AutoModelForCausalLM.from_pretrained(tmp_path / "fast").state_dict().values(),
                                                 AutoModelForCausalLM.from_pretrained(tmp_path / "slow").state_dict().values()))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_permute_with_wbits_quantizes_in_the_stored_column_order(method, tmp_path, text_file, cache, monkeypatch):
    """--permute with --wbits: every stored layer lies on its saved grids (groups of 16 contiguous stored columns,
    one grid per row), the producers whose rows moved to absorb a consumer's permutation (v_proj, gate/up)
    included; the pruned weights are exactly 0 and N:M as recorded; quantization changed the weights."""
    seen: list[Permuter] = []
    original = Permuter.log_summary
    monkeypatch.setattr(Permuter, "log_summary", lambda self: (seen.append(self), original(self)))
    folder = save_tiny(tmp_path / "tiny", "llama")
    recipe = PruneRecipe(method, pattern="2:4", permute="lsa", wbits=4, group_size=16)
    [outcome] = prune(str(folder), recipe, calibration=cal(text_file), out=tmp_path / "out")
    [plain] = prune(str(folder), PruneRecipe(method, pattern="2:4", permute="lsa"), calibration=cal(text_file),
                    out=tmp_path / "plain")
    layout, grids = outcome.report.nm_layout, outcome.report.grids
    assert set(grids) == set(layout) and {"native", "permuted"} == set(layout.values())
    assert seen[0].absorbed and not seen[0].row_moves  # every move was followed
    from transformers import AutoModelForCausalLM

    weights = stored_weights(AutoModelForCausalLM.from_pretrained(tmp_path / "out"))
    for name, how in layout.items():
        w = weights[name].float()
        assert torch.equal(grids[name].dequantize(grids[name].integers(w)), w), name
        stored = w if how == "native" else w[:, seen[0].orders[name]]
        assert nm_violation(stored, 2, 4) is None, name  # at least 2 zeros a group: a kept weight may round to 0
    assert outcome.report.nm_layout == plain.report.nm_layout  # the same permutations and placement
    unquantized = stored_weights(AutoModelForCausalLM.from_pretrained(tmp_path / "plain"))
    assert all(not torch.equal(weights[n], unquantized[n]) for n in layout)


def test_free_layout_maps_o_proj_back_and_keeps_down_proj_native(tmp_path, text_file, cache):
    """--permute-layout free: no permutation is restricted so that a producer can take it. o_proj's is searched
    over all its columns and its mask mapped back; down_proj's (any permutation of it is absorbed by gate/up)
    stays native; the recipe records the layout. The default restricts o_proj's to each key-value head."""
    folder = save_tiny(tmp_path / "tiny", "llama")
    layouts = {}
    for layout in ("native", "free"):
        out = tmp_path / layout
        result = runner.invoke(app, ["prune", str(folder), "-m", "wanda", "-p", "2:4", "--permute", "lsa", "--permute-layout",
                                     layout, "--data", str(text_file), "-n", "2", "-l", "16", "--out", str(out)])
        assert result.exit_code == 0, result.output
        record = json.loads((out / "zprune.json").read_text())
        assert record["recipe"].get("permute_layout", "native") == layout
        layouts[layout] = record["nm_layout"]
    kinds = {layout: {name.rpartition(".")[2]: how for name, how in found.items()} for layout, found in layouts.items()}
    assert kinds["native"]["o_proj"] == "native" and kinds["free"]["o_proj"] == "permuted"
    assert kinds["native"]["down_proj"] == kinds["free"]["down_proj"] == "native"
    assert all(kinds["native"][k] == kinds["free"][k] == "permuted" for k in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"))


def test_prune_reports_sparsity_and_layout(tmp_path, text_file, cache):
    """A permuted 2:4 prune removes exactly half of every pruned layer, and its --json summary carries the layout."""
    folder = save_tiny(tmp_path / "tiny", "llama")
    handle = ModelHandle(str(folder))
    [outcome] = prune(handle, PruneRecipe("wanda", pattern="2:4", permute="heuristic"), calibration=cal(text_file))
    assert outcome.report.recipe.permute == "heuristic" and outcome.report.overall == 0.5
    assert set(outcome.report.layers.values()) == {0.5}
    assert outcome.summary()["nm_layout"] == outcome.report.nm_layout


def test_grid_permute_axis_applies_to_nm_cells_only(caplog):
    recipes = grid_recipes("ria", "0.5", "unstructured,2:4", permute="none,heuristic,lsa")
    assert [(r.pattern, r.permute) for r in recipes] == [
        ("unstructured", "none"), ("2:4", "none"), ("2:4", "heuristic"), ("2:4", "lsa")]
    with caplog.at_level("WARNING", logger="zprune"):
        free = grid_recipes("ria", "0.5", "unstructured,2:4", permute="none,lsa", permute_layout="free")
    assert [r.permute_layout for r in free] == ["native", "native", "free"] and not caplog.text


def test_permute_none_leaves_the_recipe_record_as_before():
    assert "permute" not in PruneRecipe("ria", pattern="2:4").as_dict()
    assert PruneRecipe("ria", pattern="2:4", permute="lsa").as_dict()["permute"] == "lsa"
    assert "permute=lsa" in PruneRecipe("ria", pattern="2:4", permute="lsa").label()


@pytest.mark.parametrize("args, needle", [
    (["--permute", "lsa"], "--pattern unstructured"),
    (["--permute", "sorted", "-p", "2:4"], "permute"),
])
def test_bad_permute_exits_2_with_one_line(args, needle, tiny_dir, text_file, cache):
    result = runner.invoke(app, ["prune", str(tiny_dir), "--data", str(text_file), "-n", "2", "-l", "16", "--no-save", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_sparse24_export_keeps_mapped_back_layers_dense(tmp_path, text_file, cache):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from zprune_cli import load_pretrained
    from zprune_cli.exports import export

    folder = save_tiny(tmp_path / "tiny", "llama")
    prune(str(folder), PruneRecipe("ria", pattern="2:4", permute="lsa"), calibration=cal(text_file), out=tmp_path / "p")
    layout = json.loads((tmp_path / "p" / "zprune.json").read_text())["nm_layout"]
    permuted = sorted(n for n, how in layout.items() if how == "permuted")
    result = export(tmp_path / "p", tmp_path / "s24", "sparse-24-bitmask")
    assert any(w.startswith(f"{len(permuted)} layer(s) are 2:4 only after") for w in result.warnings)
    with safe_open(str(tmp_path / "s24" / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    for name, how in layout.items():
        assert (f"{name}.compressed" in keys) == (how == "native") and (f"{name}.weight" in keys) == (how == "permuted")
    ignore = json.loads((tmp_path / "s24" / "config.json").read_text())["quantization_config"]["sparsity_config"]["ignore"]
    assert set(permuted) <= set(ignore)
    ids = torch.randint(2, 250, (1, 16))
    expected = logits(AutoModelForCausalLM.from_pretrained(tmp_path / "p").eval(), ids)
    assert torch.equal(logits(load_pretrained(tmp_path / "s24").eval(), ids), expected)
