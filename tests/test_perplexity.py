"""Perplexity: the windowed protocol against a direct computation on a tiny random Llama."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaForCausalLM

from conftest import tiny_model

from zprune_cli.base.errors import ZpruneError
from zprune_cli.evaluation.perplexity import PerplexityResult, eval_windows, perplexity

VOCAB = 256


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return tiny_model("llama", hidden_size=64, intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=256)


def direct_ppl(model: LlamaForCausalLM, stream: torch.Tensor, seqlen: int) -> float:
    """exp(mean token NLL) over floor(T/seqlen) windows, one window and one token at a time, in float64."""
    total, count = 0.0, 0
    for w in range(stream.numel() // seqlen):
        ids = stream[w * seqlen : (w + 1) * seqlen]
        with torch.no_grad():
            logits = model(input_ids=ids[None]).logits[0].double()  # [seqlen, V]
        logp = torch.log_softmax(logits, dim=-1)
        for t in range(1, seqlen):
            total -= logp[t - 1, ids[t]].item()
            count += 1
    return math.exp(total / count)


def test_matches_direct_computation_and_drops_leftover(model):
    seqlen = 16
    gen = torch.Generator().manual_seed(1)
    stream = torch.randint(0, VOCAB, (5 * seqlen + 7,), generator=gen)  # 7 leftover tokens
    windows = eval_windows(stream, seqlen)
    assert windows.shape == (5, seqlen)
    assert torch.equal(windows.flatten(), stream[: 5 * seqlen])

    result = perplexity(model, windows)
    assert isinstance(result, PerplexityResult)
    assert result.n_windows == 5 and result.seqlen == seqlen
    assert result.n_tokens == 5 * (seqlen - 1)
    assert result.ppl == pytest.approx(direct_ppl(model, stream, seqlen), rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(result.nll), rel=1e-12)
    # the leftover tokens change nothing: with them replaced the number is the same
    other_tail = torch.cat([stream[: 5 * seqlen], torch.zeros(7, dtype=torch.long)])
    assert perplexity(model, eval_windows(other_tail, seqlen)).ppl == pytest.approx(result.ppl, rel=1e-6)
    # and a stream holding one more window does change it (the test can fail)
    longer = torch.cat([stream[: 5 * seqlen], torch.randint(0, VOCAB, (seqlen,), generator=gen)])
    assert perplexity(model, eval_windows(longer, seqlen)).ppl != pytest.approx(result.ppl, rel=1e-6)


def test_batch_size_does_not_change_the_number(model):
    gen = torch.Generator().manual_seed(2)
    windows = eval_windows(torch.randint(0, VOCAB, (7 * 12,), generator=gen), 12)
    done: list[int] = []
    one = perplexity(model, windows, batch_size=1)
    three = perplexity(model, windows, batch_size=3, progress=done.append)
    assert three.ppl == pytest.approx(one.ppl, rel=1e-5)
    assert done == [3, 6, 7]


def test_logit_chunks_give_the_same_number(model, monkeypatch):
    import zprune_cli.evaluation.perplexity as mod

    windows = eval_windows(torch.randint(0, VOCAB, (3 * 20,), generator=torch.Generator().manual_seed(3)), 20)
    whole = perplexity(model, windows).ppl
    monkeypatch.setattr(mod, "_CHUNK_ELEMENTS", 3 * VOCAB)  # 3 positions per chunk
    assert perplexity(model, windows).ppl == pytest.approx(whole, rel=1e-6)


def test_eval_windows_accepts_tokenizer_shape_and_refuses_short_text():
    assert eval_windows(torch.arange(10)[None], 4).shape == (2, 4)
    with pytest.raises(ZpruneError, match=r"text too short for one window of 2048 tokens \(got 100\)"):
        eval_windows(torch.arange(100), 2048)
