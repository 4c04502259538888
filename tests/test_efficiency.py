"""Sparsity counts, parameter counts, size on disk, throughput and the 2:4 kernel check."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from conftest import tiny_model

from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.models.blocks import find_blocks
from zprune_cli.evaluation.efficiency import (
    count_parameters,
    is_2_4,
    measure_sparsity,
    semi_structured_speedup,
    size_on_disk,
    throughput,
)
from zprune_cli.base.sparsity import LayerCount


@pytest.fixture()
def model() -> LlamaForCausalLM:
    return tiny_model("llama", hidden_size=64, intermediate_size=128, vocab_size=256, max_position_embeddings=128)


def test_decoder_blocks_found_without_model_names(model):
    name, blocks = find_blocks(model)
    assert name == "model.layers" and len(blocks) == 2

    class Toy(nn.Module):  # a decoy list of 1 next to the real list of 3
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList([nn.Linear(2, 2)])
            self.stack = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(3)])

    assert find_blocks(Toy())[0] == "stack"
    with pytest.raises(ZpruneError, match="no decoder blocks"):
        find_blocks(nn.Linear(2, 2))


def test_measure_sparsity_known_zeros(model):
    q = model.model.layers[0].self_attn.q_proj.weight  # [64, 64]
    down = model.model.layers[1].mlp.down_proj.weight  # [64, 128]
    with torch.no_grad():
        q[:, :16] = 0  # 1024 of 4096 zeros
        down.view(-1)[::2] = 0  # half of 8192
        model.lm_head.weight.zero_()  # outside the blocks: never counted
    report = measure_sparsity(model)
    layers = report.layers
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down per block
    assert layers["model.layers.0.self_attn.q_proj"] == LayerCount(params=4096, nonzeros=3072)
    assert report.as_dict()["layers"]["model.layers.0.self_attn.q_proj"] == {"params": 4096, "nonzeros": 3072, "sparsity": 0.25}
    assert layers["model.layers.1.mlp.down_proj"].sparsity == 0.5
    assert layers["model.layers.0.mlp.up_proj"].sparsity == 0.0
    # q,o: 64x64; k,v: 32x64 (2 kv heads x 16); gate, up: 128x64; down: 64x128 -> 36864 per block
    assert report.params == 2 * 36864
    assert report.nonzeros == 2 * 36864 - 1024 - 4096
    assert report.sparsity == pytest.approx((1024 + 4096) / (2 * 36864))

    only = measure_sparsity(model, ["model.layers.0.self_attn.q_proj"])
    assert list(only.layers) == ["model.layers.0.self_attn.q_proj"] and only.sparsity == 0.25
    with pytest.raises(ZpruneUsageError, match="no such layer"):
        measure_sparsity(model, ["model.layers.9.q"])


def test_count_parameters(model):
    counts = count_parameters(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["block_linear"] == 2 * 36864 == counts["block_linear_nonzero"]
    with torch.no_grad():
        model.model.layers[0].mlp.gate_proj.weight[0] = 0  # 64 zeros
    after = count_parameters(model)
    assert after["nonzero"] == counts["nonzero"] - 64
    assert after["block_linear_nonzero"] == counts["block_linear_nonzero"] - 64


def test_size_on_disk(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json").write_bytes(b"y" * 24)
    assert size_on_disk(tmp_path) == 1024
    assert size_on_disk(tmp_path / "a.bin") == 1000
    with pytest.raises(ZpruneError, match="no such file"):
        size_on_disk(tmp_path / "missing")


def test_throughput_counts_tokens(model, monkeypatch):
    import zprune_cli.evaluation.efficiency as eff

    calls = []
    real_forward = model.forward
    monkeypatch.setattr(model, "forward", lambda **kw: (calls.append(kw["input_ids"].shape), real_forward(**kw))[1])
    # fix the clock: every forward pass "takes" 0.5 s
    ticks = iter([10.0, 10.0 + 3 * 0.5])
    monkeypatch.setattr(eff.time, "perf_counter", lambda: next(ticks))
    tps = throughput(model, seqlen=16, batch_size=2, n_iters=3)
    assert calls == [torch.Size([2, 16])] * 4  # warm-up + 3 timed
    assert tps == pytest.approx(2 * 16 * 3 / 1.5)


def test_is_2_4():
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 4.0]])
    assert is_2_4(w)
    w[0, 1] = 5.0
    assert not is_2_4(w)
    assert not is_2_4(torch.zeros(2, 6))  # columns not a multiple of 4


def test_semi_structured_speedup_explains_why_unavailable(model):
    reason = semi_structured_speedup(model, seqlen=16)
    assert isinstance(reason, str) and reason.startswith("semi-structured 2:4 speed-up unavailable")
    assert "float16 or bfloat16" in reason  # the tiny model is float32
    assert "14 of 14 layers are not 2:4 sparse (first: model.layers.0.self_attn.q_proj)" in reason
    assert "it needs a CUDA device (the model is on cpu)" in reason  # the fixture stays on the CPU, GPU or not
    # a 2:4 pruned half-precision model: only the device can stand in the way
    model.half()
    with torch.no_grad():
        for block in model.model.layers:
            for m in block.modules():
                if isinstance(m, nn.Linear):
                    m.weight.view(m.weight.shape[0], -1, 4)[:, :, :2] = 0
    reason = semi_structured_speedup(model, seqlen=16)
    assert reason == "semi-structured 2:4 speed-up unavailable: it needs a CUDA device (the model is on cpu)"
