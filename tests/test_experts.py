"""MoE experts fused into one [experts, out, in] tensor (transformers 5): each expert is pruned as its own
projection, from the statistics of the tokens the router sent to it."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from conftest import save_tiny, tiny_model
from zprune_cli.base.errors import ZpruneError
from zprune_cli.exports import apply_masks, export
from zprune_cli.models.blocks import find_blocks, find_linears, fused_weights, weight_view
from zprune_cli.models.experts import ExpertSlice
from zprune_cli.models.handle import ModelHandle
from zprune_cli.models.pretrained import load_pretrained
from zprune_cli.verbs.pruning import prune
from zprune_cli.engine.recipe import PruneRecipe
from zprune_cli.base.settings import Calibration
from zprune_cli.stats.collect import BlockStatsCollector

MOE = ["mixtral", "qwen3_moe", "gpt_oss"]


def cal(text_file):
    return Calibration(str(text_file), 4, 32, 0)


def experts_of(model, block: int = 0) -> nn.Module:
    _, blocks = find_blocks(model)
    return blocks[block].mlp.experts


def _run_collecting(model, ids):
    """One forward with a collector on every block; returns (block 0's stats, what block 0's experts received)."""
    _, blocks = find_blocks(model)
    seen = {}
    handle = experts_of(model).register_forward_pre_hook(lambda m, args: seen.update(x=args[0], chosen=args[1]))
    collectors = [BlockStatsCollector(find_linears(b), with_gram=True) for b in blocks]
    try:
        with torch.inference_mode():
            for c in collectors:
                c.__enter__()
            try:
                out = model(ids).logits
            finally:
                for c in collectors:
                    c.__exit__(None, None, None)
    finally:
        handle.remove()
    return collectors[0].layer_stats(), seen, out


@pytest.mark.parametrize("family", MOE)
def test_each_expert_counts_exactly_the_tokens_routed_to_it(family):
    model = tiny_model(family)
    ids = torch.randint(0, 260, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        dense = model(ids).logits
    stats, seen, out = _run_collecting(model, ids)
    torch.testing.assert_close(out, dense, rtol=1e-4, atol=1e-5)  # watching changes no output
    x, chosen = seen["x"].float(), seen["chosen"]
    n_experts = experts_of(model).gate_up_proj.shape[0]
    assert sum(stats[f"mlp.experts.gate_up_proj.{e}"].n_tokens for e in range(n_experts)) == 2 * 24  # top-2
    for e in range(n_experts):
        mine = x[(chosen == e).any(-1)]  # the tokens the router sent to expert e
        gate_up = stats[f"mlp.experts.gate_up_proj.{e}"]
        assert gate_up.n_tokens == stats[f"mlp.experts.down_proj.{e}"].n_tokens == mine.shape[0]
        torch.testing.assert_close(gate_up.sumsq, mine.square().sum(0).double(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(gate_up.gram, mine.T @ mine, rtol=1e-5, atol=1e-6)


def test_mixtral_down_projection_sees_the_gated_activations():
    model = tiny_model("mixtral")
    ids = torch.randint(0, 260, (1, 24), generator=torch.Generator().manual_seed(2))
    stats, seen, _ = _run_collecting(model, ids)
    experts = experts_of(model)
    for e in range(experts.gate_up_proj.shape[0]):
        mine = seen["x"][(seen["chosen"] == e).any(-1)]
        gate, up = nn.functional.linear(mine, experts.gate_up_proj[e].detach()).chunk(2, dim=-1)
        inner = experts.act_fn(gate) * up  # what the expert's down projection multiplies
        torch.testing.assert_close(stats[f"mlp.experts.down_proj.{e}"].sumsq, inner.square().sum(0).double(),
                                   rtol=1e-5, atol=1e-7)


def test_slices_are_views_of_the_fused_tensor_in_out_in_layout():
    for family in ("mixtral", "gpt_oss"):  # gpt_oss stores [experts, in, out]
        model = tiny_model(family)
        layer = find_linears(find_blocks(model)[1][0])["mlp.experts.gate_up_proj.2"]
        assert isinstance(layer, ExpertSlice) and tuple(weight_view(layer).shape) == (128, 32)
        assert layer.in_features == 32
        weight_view(layer)[5, 7] = 0.0
        fused = experts_of(model).gate_up_proj
        assert (fused[2, 7, 5] if layer.transposed else fused[2, 5, 7]) == 0.0
        assert fused_weights(find_blocks(model)[1][0]) == {}  # covered: nothing is left dense


def test_watching_ends_cleanly():
    model = tiny_model("mixtral")
    experts = experts_of(model)
    collector = BlockStatsCollector(find_linears(find_blocks(model)[1][0]))
    with collector:
        assert "forward" in experts.__dict__  # the eager loop, whatever experts_implementation says
    assert "forward" not in experts.__dict__
    assert not experts._forward_pre_hooks and not experts._forward_hooks


class _NeverRouted(nn.Module):
    """Wraps a router so that its last expert is never chosen (top-k over the other experts)."""

    def __init__(self, router: nn.Module):
        super().__init__()
        self.inner = router

    def forward(self, x):
        logits, _, _ = self.inner(x)
        logits = logits.clone()
        logits[:, -1] = -torch.inf
        weights, chosen = logits.softmax(-1).topk(2, dim=-1)
        return logits, weights / weights.sum(-1, keepdim=True), chosen


def test_a_fused_expert_no_token_reaches_is_reported_and_pruned(tmp_path, text_file, cache, caplog):
    handle = ModelHandle(str(save_tiny(tmp_path / "base", "mixtral")))
    for layer in handle.model.model.layers:
        layer.mlp.gate = _NeverRouted(layer.mlp.gate)
    with caplog.at_level(logging.WARNING, logger="zprune"):
        [outcome] = prune(handle, PruneRecipe("wanda", 0.5), calibration=cal(text_file))
    [message] = [r.getMessage() for r in caplog.records if "no calibration token" in r.getMessage()]
    assert "4 layer(s)" in message and "model.layers.0.mlp.experts.gate_up_proj.3" in message
    assert outcome.report.layers["model.layers.0.mlp.experts.down_proj.3"] == 0.5
    assert not any("3 or more dimensions" in r.getMessage() for r in caplog.records)


def test_experts_saved_fused_export_masks_and_sparse(tmp_path, text_file, cache):
    handle = ModelHandle(str(save_tiny(tmp_path / "base", "gpt_oss")))  # transformers saves its experts fused
    [outcome] = prune(handle, PruneRecipe("wanda", 0.5), calibration=cal(text_file), out=tmp_path / "out")
    fused = handle.model.model.layers[1].mlp.experts.down_proj
    assert float((fused == 0).float().mean()) == 0.5 and outcome.report.overall == 0.5
    export(tmp_path / "out", tmp_path / "masks", format="masks")
    base = load_pretrained(tmp_path / "base")
    assert apply_masks(base, tmp_path / "masks") == 2 * (4 + 2)  # 4 attention Linears + 2 fused tensors a block
    for key, value in handle.model.state_dict().items():  # Wanda changes no surviving weight
        assert torch.equal(base.state_dict()[key], value), key
    export(tmp_path / "out", tmp_path / "sparse", format="sparse")
    reloaded = load_pretrained(tmp_path / "sparse").state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in handle.model.state_dict().items())
    prune(ModelHandle(str(tmp_path / "base")), PruneRecipe("magnitude", pattern="2:4"), calibration=cal(text_file), out=tmp_path / "24")
    with pytest.raises(ZpruneError, match=r"experts\.gate_up_proj holds MoE experts fused .*export as sparse or hf"):
        export(tmp_path / "24", tmp_path / "s24", format="sparse-24-bitmask")


def test_experts_saved_one_tensor_each_export_sparse_2_4_and_masks(tmp_path, text_file, cache):
    handle = ModelHandle(str(save_tiny(tmp_path / "base", "mixtral")))  # saved as block_sparse_moe.experts.E.w1 ...
    prune(handle, PruneRecipe("magnitude", pattern="2:4"), calibration=cal(text_file), out=tmp_path / "out")
    for format in ("sparse", "sparse-24-bitmask"):  # each expert's 2-D tensor is compressed, then converted on load
        summary = export(tmp_path / "out", tmp_path / format, format=format)
        assert summary.pruned_layers == 2 * (4 + 3 * 4)  # 4 attention Linears + w1, w2, w3 of 4 experts a block
        reloaded = load_pretrained(tmp_path / format).state_dict()
        assert all(torch.equal(reloaded[k], v) for k, v in handle.model.state_dict().items()), format
    export(tmp_path / "out", tmp_path / "masks", format="masks")  # in the names the loaded model holds
    base = load_pretrained(tmp_path / "base")
    assert apply_masks(base, tmp_path / "masks") == 2 * (4 + 2)  # 4 attention Linears + 2 fused tensors a block
    assert all(torch.equal(base.state_dict()[k], v) for k, v in handle.model.state_dict().items())


def test_pruning_from_masks_counts_every_expert(tmp_path, text_file, cache):
    from zprune_cli.verbs.pruning import prune_with_masks

    handle = ModelHandle(str(save_tiny(tmp_path / "base", "gpt_oss")))
    prune(handle, PruneRecipe("wanda", 0.5), calibration=cal(text_file), out=tmp_path / "out")
    export(tmp_path / "out", tmp_path / "masks", format="masks")
    result = prune_with_masks(str(tmp_path / "base"), tmp_path / "masks", out=tmp_path / "again")
    assert "model.layers.1.mlp.experts.down_proj.3" in result.provenance.pruned_layers
    assert result.provenance.overall_sparsity == 0.5


class _AllAtOnceExperts(nn.Module):
    """Fused experts multiplied all together (a batched kernel): no per-expert product to watch."""

    is_transposed = False

    def __init__(self, hidden: int, inner: int, n_experts: int = 4):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(n_experts, inner, hidden) * 0.02)

    def forward(self, x, chosen, weights):
        return torch.einsum("th,eih->ti", x, self.gate_up_proj)[:, : x.shape[-1]]


def test_experts_whose_tokens_cannot_be_told_apart_are_refused():
    model = tiny_model("mixtral")
    block = find_blocks(model)[1][0]
    block.mlp.experts = _AllAtOnceExperts(32, 64)
    with pytest.raises(ZpruneError, match="never multiplied them by one expert's slice.*--ignore"):
        _run_collecting(model, torch.randint(0, 260, (1, 8)))
    assert "forward" not in block.mlp.experts.__dict__ and not block.mlp.experts._forward_hooks  # nothing left behind


class _Unflagged(nn.Module):
    """A 3-D weight without transformers' layout flag: zprune cannot know its layout, so leaves it dense."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4, 8, 32))

    def forward(self, x):
        return x


def test_fused_weights_without_a_layout_stay_dense_and_are_named(tmp_path, text_file, cache, caplog):
    handle = ModelHandle(str(save_tiny(tmp_path / "base", "llama")))
    for layer in handle.model.model.layers:
        layer.extra = _Unflagged()
    with caplog.at_level(logging.WARNING, logger="zprune"):
        prune(handle, PruneRecipe("wanda", 0.5), calibration=cal(text_file))
    [message] = [r.getMessage() for r in caplog.records if "3 or more dimensions" in r.getMessage()]
    assert "model.layers.0.extra.w [4, 8, 32]" in message
