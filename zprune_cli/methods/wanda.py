"""Wanda (Sun et al., 2023): S_ij = |W_ij| * ||X_j||_2, compared within each output row."""

from __future__ import annotations

from typing import ClassVar

from zprune_cli.base.lazy import lazy
from zprune_cli.methods.base import Method, input_norms, register
from zprune_cli.stats.types import LayerStats

torch = lazy("torch")


@register
class Wanda(Method):
    name: ClassVar[str] = "wanda"
    default_scope: ClassVar[str] = "row"
    owl_score: ClassVar[bool] = True  # OWL counts outliers among these scores

    def score(self, weight_fp32: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        return wanda_scores(weight_fp32, stats)


def wanda_scores(weight_fp32: torch.Tensor, stats: LayerStats) -> torch.Tensor:
    """|W_ij| * ||X_j||: [out, in] * [1, in]. The norm itself, not its square (which would rank differently).
"""
    return weight_fp32.abs().mul_(input_norms(stats, weight_fp32))  # one [out, in] temporary, not two
