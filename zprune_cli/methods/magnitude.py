"""Magnitude pruning: prune the smallest |W_ij| of the whole matrix. Uses no statistics."""

from __future__ import annotations

from typing import ClassVar

from zprune_cli.base.lazy import lazy
from zprune_cli.methods.base import Method, register
from zprune_cli.stats.types import LayerStats

torch = lazy("torch")


@register
class Magnitude(Method):
    name: ClassVar[str] = "magnitude"
    default_scope: ClassVar[str] = "layer"
    uses_stats: ClassVar[bool] = False

    def score(self, weight_fp32: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        return weight_fp32.abs()  # [out, in]
