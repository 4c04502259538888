"""95% intervals of measured values and paired comparisons of two models, from the per-window results.

A perplexity is exp of the mean token NLL over its windows; every window has the same number of predicted
tokens, so that mean is the mean of the per-window mean NLLs. The windows are a sample of the text, so the
mean has a standard error: sd(window NLLs) / sqrt(n). The interval of the perplexity is exp(mean +/- q * se)
with q the 97.5% quantile of Student's t with n - 1 degrees of freedom (2.131 at 16 windows, 1.998 at 64,
tending to 1.96): at 16 windows the normal's 1.96 would be 8% too narrow.

Two models scored on the same windows are compared window by window (a paired test): the difference of
their per-window NLLs cancels what makes one window hard for every model, so it is far more sensitive than
comparing the two intervals. Its mean is log(ppl_a / ppl_b); the difference is real (at 95%) only when its
interval excludes zero. Pure functions of numbers: no torch, nothing but the standard library and scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from zprune_cli.base.errors import ZpruneUsageError

Z95 = 1.959963984540054  # the normal's 97.5% quantile: zero-shot accuracies (lm-eval's binomial standard error)
# protocol fields that do not name which windows were scored (where the text came from on this machine)
_NOT_WINDOWS = ("source",)


def t_quantile(n: int) -> float:
    """The 97.5% quantile of Student's t with n - 1 degrees of freedom (n >= 2 values)."""
    from scipy.special import stdtrit  # scipy.special loads in a fraction of scipy.stats' time

    return float(stdtrit(n - 1, 0.975))


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """The mean of `values` and its standard error, sd (n - 1 in the denominator) / sqrt(n)."""
    n = len(values)
    if n < 2:
        raise ZpruneUsageError(f"an interval needs at least 2 windows (got {n})")
    mean = math.fsum(values) / n
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def ppl_interval(window_nlls: Sequence[float]) -> tuple[float, float]:
    """The 95% interval of the perplexity measured on windows whose mean NLLs are `window_nlls`."""
    mean, se = mean_and_se(window_nlls)
    half = t_quantile(len(window_nlls)) * se
    return _exp(mean - half), _exp(mean + half)


def accuracy_interval(acc: float, stderr: float) -> tuple[float, float]:
    """The 95% interval of an accuracy from lm-eval's standard error (normal approximation of the binomial)."""
    return acc - Z95 * stderr, acc + Z95 * stderr


@dataclass(frozen=True)
class Paired:
    """a minus b, window by window: mean NLL difference (log of the perplexity ratio), its standard error, and
    its 95% interval. `excludes_zero`: the two differ at 95%; `ratio`: ppl_a / ppl_b."""

    mean: float
    se: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def ratio(self) -> float:
        return _exp(self.mean)


def paired_difference(a: Sequence[float], b: Sequence[float], a_protocol: dict | None = None,
                      b_protocol: dict | None = None) -> Paired:
    """The paired comparison of two perplexities from their per-window NLLs (same windows, same order).
    Refuses windows that are not the same: other counts, or protocols naming other text, seqlen or windows."""
    if a_protocol is not None and b_protocol is not None and _windows_of(a_protocol) != _windows_of(b_protocol):
        raise ZpruneUsageError(f"cannot pair perplexities measured on other windows: {_windows_of(a_protocol)} "
                               f"vs {_windows_of(b_protocol)}")
    if len(a) != len(b):
        raise ZpruneUsageError(f"cannot pair perplexities measured on other windows: {len(a)} windows vs {len(b)}")
    mean, se = mean_and_se([x - y for x, y in zip(a, b)])
    half = t_quantile(len(a)) * se
    return Paired(mean, se, mean - half, mean + half, len(a))


def accuracy_difference(a: float, a_stderr: float, b: float, b_stderr: float) -> Paired:
    """a minus b for two accuracies with standard errors only (no per-question results): the unpaired
    difference, se = sqrt(se_a^2 + se_b^2), wider than a paired one (so it claims less, never more)."""
    se = math.sqrt(a_stderr ** 2 + b_stderr ** 2)
    return Paired(a - b, se, a - b - Z95 * se, a - b + Z95 * se, 0)


def _windows_of(protocol: dict) -> dict:
    return {k: v for k, v in protocol.items() if k not in _NOT_WINDOWS}


def _exp(x: float) -> float:
    return math.exp(x) if x < 709.0 else math.inf
