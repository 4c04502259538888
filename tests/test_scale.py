"""Root causes found by running the headline job at real shapes (issue 25, tests/benchmarks/bench_scale.py),
each checked here at a reduced shape that keeps what broke."""

from __future__ import annotations

import torch

from zprune_cli.pipeline import all_finite


def test_all_finite_is_exact():
    """The one-pass check (a finite sum) gives the entry-by-entry answer, overflow included."""
    w = torch.randn(64, 48)
    assert all_finite(w)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = w.clone()
        x[5, 7] = bad
        assert not all_finite(x)
    both = w.clone()
    both[0, 0], both[1, 1] = float("inf"), -float("inf")  # sum NaN
    assert not all_finite(both)
    huge = torch.full((4, 4), 3e38)  # every entry finite, the float32 sum overflows
    assert not bool(torch.isfinite(huge.sum())) and all_finite(huge)
    assert all_finite(torch.zeros(0)) and all_finite(torch.arange(6)) and all_finite(w.to(torch.bfloat16))
    half = torch.full((8,), 60000.0, dtype=torch.float16)  # float16 sum overflows too
    assert all_finite(half)
