"""The hand-off between the statistics store and the methods: one input group's statistics."""

from __future__ import annotations

from dataclasses import dataclass

from zprune_cli.base.lazy import lazy

torch = lazy("torch")


@dataclass
class LayerStats:
    """Statistics of the inputs X (tokens x in) that one Linear layer reads.

    sumsq[j] = sum over calibration tokens of x_j**2, shape [in], float64 (exact sums, not means:
    every score is invariant to a positive rescaling). gram = sum over tokens of x x^T, shape
    [in, in], float32, present only when the store was built with Gram matrices.
    """

    sumsq: torch.Tensor
    n_tokens: int
    gram: torch.Tensor | None = None
    sum: torch.Tensor | None = None  # [in] float64, sum over tokens of x_j (mean/variance-based methods)

    @property
    def mean(self) -> torch.Tensor:
        """E[x_j] per input channel, float32, shape [in]."""
        if self.sum is None:
            raise ValueError("this statistic has no first moment; it predates store format 3")
        return (self.sum / max(self.n_tokens, 1)).to(torch.float32)

    @property
    def variance(self) -> torch.Tensor:
        """Var[x_j] = E[x_j^2] - E[x_j]^2 per input channel (population), float32, shape [in]."""
        return ((self.sumsq / max(self.n_tokens, 1)).to(torch.float32) - self.mean.square()).clamp_min(0)

    @property
    def norms(self) -> torch.Tensor:
        """||X_j||_2 per input channel, float32, shape [in]."""
        return self.sumsq.sqrt().to(torch.float32)

    def permuted(self, perm: torch.Tensor) -> LayerStats:
        """The statistics of the inputs with their channels reordered: input j of the result is input perm[j]."""
        def take(v: torch.Tensor | None) -> torch.Tensor | None:
            return None if v is None else v[perm.to(v.device)]

        gram = None if self.gram is None else self.gram[perm.to(self.gram.device)][:, perm.to(self.gram.device)]
        return LayerStats(take(self.sumsq), self.n_tokens, gram, take(self.sum))

    def hessian(self) -> torch.Tensor:
        """SparseGPT's H = (2/N) * sum x x^T, float32, shape [in, in]."""
        return self._hessian_of(self._gram())

    def hessian_diagonal(self) -> torch.Tensor:
        """diag(hessian()) without the [in, in] copy (the same values, elementwise), float32, shape [in]."""
        return self._hessian_of(self._gram().diagonal())

    def _gram(self) -> torch.Tensor:
        if self.gram is None:
            raise ValueError("this statistic has no Gram matrix; calibrate with gram=True")
        return self.gram

    def _hessian_of(self, gram_part: torch.Tensor) -> torch.Tensor:
        return gram_part.to(torch.float32) * (2.0 / max(self.n_tokens, 1))
