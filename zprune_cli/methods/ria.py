"""RIA, Relative Importance and Activations (Zhang et al., 2024).

S_ij = (|W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|) * ||X_j||_2 ** a, compared over the whole
matrix. The first sum runs down column j (every output that reads input j), the second along row i.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from zprune_cli.base.lazy import lazy
from zprune_cli.methods.base import Method, input_norms, option, register, safe_divisor
from zprune_cli.stats.types import LayerStats

torch = lazy("torch")


@register
@dataclass
class RIA(Method):
    name: ClassVar[str] = "ria"
    default_scope: ClassVar[str] = "layer"

    a: float = option(0.5)  # exponent on the input norm

    def score(self, weight_fp32: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        W = weight_fp32.abs()  # [out, in]
        column_sum = safe_divisor(W.sum(dim=0, keepdim=True))  # [1, in]: sum_k |W_kj|
        row_sum = safe_divisor(W.sum(dim=1, keepdim=True))  # [out, 1]: sum_k |W_ik|
        relative_importance = W / column_sum  # [out, in]; then in place: two temporaries, not five
        relative_importance.add_(W.div_(row_sum))
        del W
        return relative_importance.mul_(input_norms(stats, relative_importance).pow(self.a))
