"""Intervals of perplexities and accuracies, the paired test, and "best" only where the evidence says so."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from scipy import stats

from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.records.intervals import accuracy_interval, paired_difference, ppl_interval
from zprune_cli.records.leaderboard_cells import value_text
from zprune_cli.records.ranking import mark_best


def test_paired_test_on_a_hand_worked_example():
    # a - b per window: 0.1, 0.2, 0.1, 0.2 -> mean 0.15; squared deviations 4 x 0.05^2 = 0.01;
    # variance 0.01 / 3 = 0.0033333, sd 0.0577350, se = sd / sqrt(4) = 0.0288675;
    # t(0.975, 3 df) = 3.182446 -> half-width 0.0918688 -> [0.0581312, 0.2418688]: excludes zero
    a, b = [2.0, 2.2, 2.4, 2.6], [1.9, 2.0, 2.3, 2.4]
    paired = paired_difference(a, b)
    assert paired.mean == pytest.approx(0.15, abs=1e-12)
    assert paired.se == pytest.approx(0.0288675, abs=1e-7)
    assert (paired.low, paired.high) == (pytest.approx(0.0581312, abs=1e-6), pytest.approx(0.2418688, abs=1e-6))
    assert paired.excludes_zero and paired.ratio == pytest.approx(math.exp(0.15))
    # differences 0.3, -0.1, 0.2, -0.2 -> mean 0.05; squared deviations 0.0625 + 0.0225 + 0.0225 + 0.0625 = 0.17;
    # variance 0.0566667, se = 0.2380476 / 2 = 0.1190238; half-width 3.182446 x 0.1190238 = 0.3787867
    tied = paired_difference([2.3, 1.9, 2.2, 1.8], [2.0, 2.0, 2.0, 2.0])
    assert tied.mean == pytest.approx(0.05) and tied.se == pytest.approx(0.1190238, abs=1e-7)
    assert tied.low == pytest.approx(0.05 - 0.3787867, abs=1e-6) and not tied.excludes_zero


def test_windows_of_two_protocols_or_counts_are_never_paired():
    with pytest.raises(ZpruneUsageError, match="other windows: 4 windows vs 3"):
        paired_difference([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    p16 = {"dataset": "wikitext2", "seqlen": 512, "n_windows": 2, "source": "/here"}
    with pytest.raises(ZpruneUsageError, match="other windows"):
        paired_difference([1.0, 2.0], [1.0, 2.5], p16, {**p16, "seqlen": 256})
    # where the text was read from does not change the windows
    assert paired_difference([1.0, 2.0], [1.0, 2.5], p16, {**p16, "source": "/there"}).n == 2


def test_the_perplexity_interval_is_the_direct_formula():
    nlls = [3.1, 2.9, 3.4, 3.0, 3.3, 2.8, 3.2, 3.05, 2.95, 3.15, 3.25, 2.85, 3.35, 3.0, 3.1, 2.9]
    mean, sd = statistics.fmean(nlls), statistics.stdev(nlls)
    half = stats.t.ppf(0.975, len(nlls) - 1) * sd / math.sqrt(len(nlls))
    low, high = ppl_interval(nlls)
    assert low == pytest.approx(math.exp(mean - half), rel=1e-12) and high == pytest.approx(math.exp(mean + half), rel=1e-12)
    assert accuracy_interval(0.6, 0.05) == (pytest.approx(0.6 - 1.959964 * 0.05), pytest.approx(0.6 + 1.959964 * 0.05))


def test_perplexity_keeps_each_windows_mean_nll():
    from zprune_cli.evaluation.perplexity import perplexity

    class Fixed(torch.nn.Module):  # logits that make token t's NLL depend on the window only
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, use_cache=False):
            logits = torch.zeros(*input_ids.shape, 4)
            logits[..., 0] = input_ids[:, :1].float()  # window starting with k: token 0 gets logit k
            return type("Out", (), {"logits": logits})()

    windows = torch.tensor([[0, 1, 2], [2, 3, 1]])
    result = perplexity(Fixed(), windows)
    # window 0: uniform over 4 -> every NLL log 4; window 1: token 0 has logit 2, the targets (3, 1) do not
    other = math.log(math.exp(2) + 3)
    assert result.window_nlls == [pytest.approx(math.log(4)), pytest.approx(other)]
    assert result.nll == pytest.approx((math.log(4) + other) / 2)


def _row(value: float, windows: list[float] | None = None, pattern: str = "unstructured") -> dict:
    row = {"pattern": pattern, "sparsity": 0.5, "metrics": {"ppl:w": value}}
    if windows is not None:
        row["windows"] = {"ppl:w": windows}
    return row


def test_best_only_when_the_paired_difference_from_the_runner_up_excludes_zero():
    base = [2.0, 2.2, 2.4, 2.6]
    clear = _row(math.exp(statistics.fmean(base)), base)
    worse = _row(math.exp(statistics.fmean(base) + 0.15), [x + d for x, d in zip(base, (0.1, 0.2, 0.1, 0.2))])
    far = _row(99.0, [x + 2 for x in base])
    mark_best([worse, clear, far])
    assert clear["best"] == ["ppl:w"] and not clear["tied"] and worse["best"] == worse["tied"] == []

    tied_pair = [_row(math.exp(statistics.fmean(base)), base),
                 _row(math.exp(statistics.fmean(base) + 0.05), [x + d for x, d in zip(base, (0.3, -0.1, 0.2, -0.2))]), far]
    mark_best(tied_pair)
    assert [r["best"] for r in tied_pair] == [[], [], []]
    assert [r["tied"] for r in tied_pair] == [["ppl:w"], ["ppl:w"], []]
    assert value_text(tied_pair[0], "ppl:w").endswith(" tied")


def test_rows_without_windows_keep_the_lowest_value_as_best():
    rows = [_row(20.0), _row(21.0), _row(5.0, pattern="")]  # the dense row is never ranked
    mark_best(rows)
    assert [r["best"] for r in rows] == [["ppl:w"], [], []]


def test_an_old_stored_row_without_windows_loads_and_a_new_one_has_its_interval(tmp_path):
    from zprune_cli.verbs.comparison import leaderboard
    from zprune_cli.records.results import ResultRow, ResultsStore

    store = ResultsStore(tmp_path / "results.sqlite")
    protocol = {"dataset": "wikitext2", "split": "test", "seqlen": 8, "n_windows": 3}
    cell = {"model": "m", "fingerprint": "f", "metric": "ppl:wikitext2", "protocol": protocol, "pattern": "unstructured",
            "sparsity": 0.5, "stats_key": "s", "settings": {"evaluation": {"seqlen": 8}}}
    store.record(ResultRow(method="wanda", recipe="r-old", value=25.0, **cell))  # as stored before windows were kept
    nlls = [3.0, 3.1, 2.9]
    store.record(ResultRow(method="magnitude", recipe="r-new", value=math.exp(3.0),
                           **{**cell, "settings": {"evaluation": {"seqlen": 8}, "detail": {"window_nll": nlls, "window_tokens": 7}}}))
    rows = {r["recipe"]: r for r in leaderboard(store, fingerprint="f")}
    assert rows["r-old"]["intervals"] == {} and rows["r-old"]["metrics"] == {"ppl:wikitext2": 25.0}
    assert rows["r-new"]["intervals"]["ppl:wikitext2"] == list(ppl_interval(nlls))
    # one of the two has no windows: no paired test, the lower value is marked as before
    assert rows["r-new"]["best"] == ["ppl:wikitext2"] and rows["r-old"]["best"] == []

    from zprune_cli.rendering.report_html import leaderboard_html

    page = leaderboard_html(list(rows.values()), versions={}, generated="now")
    low, high = ppl_interval(nlls)
    assert f'<strong>{math.exp(3.0):.3f} [{low:.3f}, {high:.3f}]</strong>' in page  # the interval, on the page
    assert '<td class="num">25.000</td>' in page  # the old row: its value alone
