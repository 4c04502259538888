"""calibrate(): statistics equal a direct computation, on tiny models of six families."""

from __future__ import annotations

import torch
import pytest

from conftest import FAMILIES, save_tiny
from zprune_cli.base.settings import Calibration
from zprune_cli.verbs.calibration import calibrate
from zprune_cli.models.blocks import find_blocks, find_linears
from zprune_cli.models.runner import capture_block_inputs
from zprune_cli.models.walk import run_windows


def direct_stats(model, windows, gram=False):
    """sum x^2, x x^T and sum x over all tokens for every Linear in the blocks, from one plain forward."""
    name, blocks = find_blocks(model)
    sums, grams, firsts, handles = {}, {}, {}, []
    for b, block in enumerate(blocks):
        for lname, linear in find_linears(block).items():
            key = (b, lname)

            def hook(module, args, key=key):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                sums[key] = sums.get(key, 0) + x.square().sum(0)
                grams[key] = grams.get(key, 0) + x.T @ x
                firsts[key] = firsts.get(key, 0) + x.sum(0)

            handles.append(linear.register_forward_pre_hook(hook))
    with torch.no_grad():
        for i in range(windows.shape[0]):
            model(windows[i : i + 1], use_cache=False)
    for h in handles:
        h.remove()
    return sums, grams, firsts


@pytest.mark.parametrize("family", FAMILIES)
def test_stats_equal_direct_forward(family, tmp_path, text_file, cache):
    folder = save_tiny(tmp_path / family, family)
    result = calibrate(str(folder), Calibration(str(text_file), 3, 32, 1), gram=True)
    assert not result.hit
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    windows, _ = result.entry.inputs()
    assert windows.shape == (3, 32)
    sums, grams, firsts = direct_stats(model, windows)
    n_blocks = len(find_blocks(model)[1])
    assert result.entry.n_blocks == n_blocks
    for b in range(n_blocks):
        stats = result.entry.block_stats(b)
        assert set(stats) == set(find_linears(find_blocks(model)[1][b]))
        for lname, s in stats.items():
            want = sums[(b, lname)]
            assert s.n_tokens == 3 * 32
            torch.testing.assert_close(s.sumsq, want, rtol=1e-5, atol=1e-6 * float(want.max()))
            torch.testing.assert_close(s.gram.double(), grams[(b, lname)], rtol=1e-4, atol=1e-5 * float(want.max()))
            first = firsts[(b, lname)]  # the first moment (store format 3), and the mean and variance read from it
            torch.testing.assert_close(s.sum, first, rtol=1e-5, atol=1e-6 * float(want.max()))
            torch.testing.assert_close(s.mean.double(), first / 96, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(s.variance.double(), (want / 96 - (first / 96) ** 2).clamp_min(0), rtol=1e-3, atol=1e-5 * float(want.max()))


def test_groups_share_inputs(tiny_dir, text_file, cache):
    entry = calibrate(str(tiny_dir), Calibration(str(text_file), 2, 16, 0)).entry
    groups = [g.members for g in entry.manifest.blocks[0].groups]
    assert groups == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"],
        ["mlp.down_proj"],
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_block_runner_matches_full_forward(family):
    from conftest import tiny_model

    model = tiny_model(family)
    windows = torch.randint(2, 250, (2, 40))
    inputs = capture_block_inputs(model, windows)
    with torch.no_grad():
        full = model(windows, output_hidden_states=True, use_cache=False).hidden_states
    torch.testing.assert_close(inputs.hidden, full[0], rtol=1e-5, atol=1e-5)
    hidden = inputs.hidden
    _, blocks = find_blocks(model)
    for index, block in enumerate(blocks[:-1]):  # the last hidden state has the final norm applied
        out = torch.empty_like(hidden)
        run_windows(block, hidden, inputs.block_kwargs[index], out)
        hidden = out
        torch.testing.assert_close(hidden, full[index + 1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_runs_block_0_alone(family):
    """Every block's arguments come from one forward in which block 0 alone runs (at Llama-2-7B's shape the
    other 31 blocks were read from disk and run only for their arguments): the same arguments a full
    forward hands each block, and block 0 called once for the first window, never again."""
    from conftest import tiny_model

    model = tiny_model(family)
    _, blocks = find_blocks(model)
    calls = [0] * len(blocks)
    seen: list[dict | None] = [None] * len(blocks)
    for i, block in enumerate(blocks):
        block.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
    windows = torch.randint(2, 250, (3, 24))
    inputs = capture_block_inputs(model, windows)
    assert calls == [1] + [0] * (len(blocks) - 1)
    hooks = [b.register_forward_pre_hook(lambda m, a, k, i=i: seen.__setitem__(i, k), with_kwargs=True)
             for i, b in enumerate(blocks)]
    with torch.no_grad():
        model(windows[:1], use_cache=False)
    for h in hooks:
        h.remove()
    for got, want in zip(inputs.block_kwargs, seen):
        assert sorted(got) == sorted(k for k in want if k != "hidden_states")
        for key, value in got.items():
            expected = want[key]
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, expected)
            elif isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):
                for a, b in zip(value, expected):
                    torch.testing.assert_close(a, b)
            else:
                assert value == expected, key


def test_second_call_is_a_hit_without_loading(tiny_dir, text_file, cache, monkeypatch):
    first = calibrate(str(tiny_dir), Calibration(str(text_file), 2, 16, 0))
    import zprune_cli.models.handle as handle

    monkeypatch.setattr(handle, "load_model", lambda *a, **k: pytest.fail("a cache hit loaded the model"))
    second = calibrate(str(tiny_dir), Calibration(str(text_file), 2, 16, 0))
    assert second.hit and second.key == first.key


def test_norms_request_served_by_gram_entry(tiny_dir, text_file, cache):
    gram = calibrate(str(tiny_dir), Calibration(str(text_file), 2, 16, 0), gram=True)
    norms = calibrate(str(tiny_dir), Calibration(str(text_file), 2, 16, 0), gram=False)
    assert norms.hit and norms.key == gram.key and norms.calibration_key == gram.calibration_key != gram.key


def test_jsonl_and_self_sources(tiny_dir, tmp_path, cache):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join('{"text": "%s"}' % ("word " * (20 + i)) for i in range(10)))
    r = calibrate(str(tiny_dir), Calibration(str(jsonl), 4, 32, 0))
    ids, _ = r.entry.inputs()
    assert ids.shape == (4, 32)
    s = calibrate(str(tiny_dir), Calibration("self", 2, 12, 3))
    again = calibrate(str(tiny_dir), Calibration("self", 2, 12, 3))
    assert again.hit
    ids_self, _ = s.entry.inputs()
    assert ids_self.shape == (2, 12) and int(ids_self[0, 0]) == 0  # starts at BOS
