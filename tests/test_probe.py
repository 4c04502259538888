"""The producers' search probes a block cheaply: a probe that replays the projections its change does not reach
reads what a full run of the block reads, multiplies less, and a later block's known plans are verified on a
few channels, which still rejects a wrong plan."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import tiny_model
from zprune_cli.base.masks import Pattern
from zprune_cli.engine.permuted import Permuter
from zprune_cli.methods import get_method
from zprune_cli.models.absorb import BlockProbe
from zprune_cli.models.experts import ExpertSlice
from zprune_cli.models.blocks import find_blocks, weight_view
from zprune_cli.models.producers import KNOWN_PLAN_MOVES, plan_block, verify


@pytest.fixture(autouse=True)
def _inference():
    with torch.inference_mode():  # as the pipeline runs the search
        yield


def probe_of(family: str, index: int = 0) -> BlockProbe:
    model = tiny_model(family).float()
    permuter = Permuter(model, "heuristic", Pattern(2, 4), get_method("magnitude"))
    block = find_blocks(model)[1][index]
    return BlockProbe(block, permuter.kwargs[index], permuter.hidden_size, permuter.geometry)


def changed_row(probe: BlockProbe, producer: str, row: int):
    weight = weight_view(probe.projections[producer])
    saved = weight[row].clone()
    weight[row] = -2 * saved + 0.1
    return lambda: weight[row].copy_(saved)


@pytest.mark.parametrize("family", ["llama", "gpt2", "mixtral"])
def test_a_replayed_probe_reads_what_a_full_run_reads(family, monkeypatch):
    probe = probe_of(family)
    names = list(probe.projections)
    multiplied = []
    for kind in {type(m) for m in probe.projections.values()} - {ExpertSlice}:  # Linear, GPT-2's Conv1D
        monkeypatch.setattr(kind, "forward", lambda self, x, own=kind.forward: (multiplied.append(self), own(self, x))[1])
    replayed = full = 0
    for producer in names:
        rows = weight_view(probe.projections[producer]).shape[0]
        for row in (0, rows - 1):
            put_back = changed_row(probe, producer, row)
            try:
                for consumer in names:
                    multiplied.clear()
                    fast = probe.read(consumer, producer, row)
                    replayed += len(multiplied)
                    multiplied.clear()
                    slow = probe._read(consumer)  # every projection multiplies
                    full += len(multiplied)
                    assert (fast is None) == (slow is None), (producer, consumer)
                    if fast is not None:
                        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6 * float(slow.abs().max()))
            finally:
                put_back()
    assert replayed < full / 2


def test_whole_producer_change_reads_what_a_full_run_reads():
    probe = probe_of("llama")
    for producer, module in probe.projections.items():
        weight = weight_view(module)
        saved = weight.clone()
        weight.mul_(-2).add_(0.05)
        try:
            fast = probe.read_all(producer)
            slow = probe.run(list(probe.projections))[1]
        finally:
            weight.copy_(saved)
        for name in probe.projections:
            torch.testing.assert_close(fast[name], slow[name])


@pytest.mark.parametrize("family", ["llama", "gpt2", "mixtral"])
def test_known_plans_are_verified_on_a_few_channels_and_a_wrong_one_fails(family):
    first = probe_of(family, 0)
    plans = list(plan_block(first, list(first.projections)).values())
    assert plans
    later = probe_of(family, 1)
    saved = {n: weight_view(m).clone() for n, m in later.projections.items()}
    assert verify(later, plans, KNOWN_PLAN_MOVES)
    assert all(torch.equal(weight_view(m), saved[n]) for n, m in later.projections.items())  # put back exactly
    for plan in plans:
        feed = plan.feeds[0]
        wrong = dataclasses.replace(plan, feeds=(dataclasses.replace(feed, rows=feed.rows.roll(1)),) + plan.feeds[1:])
        assert not verify(later, [p if p is not plan else wrong for p in plans], KNOWN_PLAN_MOVES), plan.describe()
