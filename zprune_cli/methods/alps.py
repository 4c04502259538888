"""ALPS (Meng et al., NeurIPS 2024): the layer's l0-constrained least squares by ADMM, then the exact
weights on the final support by preconditioned conjugate gradients.

    min_W ||X W0^T - X W^T||^2  subject to  W has the pattern's number of zeros.

Everything runs after a rescaling that makes the problem scale-free: H = sum x x^T plus a ridge
lambda2 * mean(diag H), divided by d d^T with d = sqrt(diag H); B = W * d. ADMM splits B (least
squares) from D (sparse):

    B = (Y - V + rho D) (H + rho I)^-1,   Y = B0 H   (one eigendecomposition of H serves every rho)
    D = the projection of B + V / rho (keep the largest |.| by the pattern and scope)
    V = V + rho (B - D)

rho starts at 0.1 and follows the support: every `update_iter` iterations it grows by 1.3 / 1.2 / 1.1
when more than 10% / 0.5% / any of the kept weights changed, and the run stops once the support is
still (after at least `switch_iter` iterations, when under 0.03% changes). These are the reference
code's (mazumder-lab/ALPS) rules and defaults. The last projection's support is then solved exactly
by PCG (methods/pcg.py) warm-started from B, `pcg_iter` iterations at tolerance `pcg_tol`.
Unstructured masks are chosen over the whole layer by default (as in the reference), or per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from zprune_cli.base.errors import ZpruneError
from zprune_cli.base.lazy import lazy
from zprune_cli.base.masks import Pattern, check_pattern_fits, prune_count, select_prune_mask
from zprune_cli.methods.base import Cost, Method, PruneResult, option, prune_precision, register
from zprune_cli.methods.pcg import damped, pcg_solve
from zprune_cli.stats.types import LayerStats

torch = lazy("torch")

MAX_RHO = 1e6


@dataclass
class _Scaled:
    """One input group's rescaled Hessian and its eigendecomposition, shared by q/k/v or gate/up."""

    d: torch.Tensor  # [in], sqrt(diag(H + ridge))
    H: torch.Tensor  # [in, in], unit diagonal
    eigenvalues: torch.Tensor  # [in], prune_precision() (computed in float64)
    eigenvectors: torch.Tensor  # [in, in], prune_precision()

    def inverse(self, rho: float) -> torch.Tensor:
        """(H + rho I)^-1: eigenvalues >= the ridge, so single precision is enough, and twice as fast."""
        Q = self.eigenvectors
        return (Q / (self.eigenvalues + rho)) @ Q.T


@register
@dataclass
class ALPS(Method):
    name: ClassVar[str] = "alps"
    default_scope: ClassVar[str] = "layer"
    needs_gram: ClassVar[bool] = True
    updates_weights: ClassVar[bool] = True

    rho: float = option(0.1, 0, open_low=True)  # initial ADMM penalty (on the rescaled problem)
    lambda2: float = option(0.01, 0)  # ridge, as a fraction of mean(diag X^T X)
    max_iter: int = option(300, 1)
    update_iter: int = option(3, 1)  # rho follows the support every this many iterations
    switch_iter: int = option(30, 0)  # earliest iteration at which a still support ends the ADMM
    pcg_iter: int = option(10, 1)
    pcg_tol: float = option(1e-4, 0, open_low=True)
    _cache: list = field(default_factory=list, init=False, repr=False, compare=False)

    @classmethod
    def work_bytes(cls, weights: int, width: int) -> int:
        """The larger of two phases that never overlap. First the eigendecomposition of the rescaled H: H in
        float64, LAPACK's copy that becomes the eigenvectors, and its workspace (syevd: about 2 width^2 doubles);
        H in float32 is rebuilt from the float64 copy afterwards, so it is not held meanwhile. Then the ADMM:
        float32 [out, in] iterates (B0, Y, B, D, V, and the projection's and PCG's temporaries: about nine) and
        masks, beside [in, in] H, its eigenvectors, (H + rho I)^-1 and the temporary that forms it. Measured on
        Llama-2-7B's down_proj (bench_layer_peak.py --method alps): +4018 MiB, where the sum of both phases, the
        estimate before, said 5794."""
        eigendecomposition = width * width * (8 + 8 + 2 * 8)
        admm = weights * (9 * 4 + 2) + width * width * 4 * 4
        return max(eigendecomposition, admm)

    def cost(self, out: int, width: int) -> Cost:
        """Assumed: the ADMM runs `switch_iter` iterations (the earliest it may stop; it runs up to `max_iter`).
        The eigendecomposition of H (about 9 width^3 in float64, counted per layer though q/k/v share it),
        Y = B0 H, per iteration B's product with (H + rho I)^-1 and a projection, every `update_iter` iterations
        a new inverse (2 width^3), then `pcg_iter` PCG steps (one product each)."""
        steps = self.switch_iter
        product = 2 * out * width**2
        flops = 9 * width**3 + product * (1 + steps + self.pcg_iter) + 2 * width**3 * steps / self.update_iter
        return Cost(flops, float(out * width) * (steps + 1))

    def prune(self, weight: torch.Tensor, stats: LayerStats, sparsity: float, pattern: Pattern,
              scope: str | None = None) -> PruneResult:
        if stats.gram is None:
            raise ZpruneError("alps needs the Gram matrix of each layer's inputs; calibrate with Gram matrices")
        if pattern.is_nm:
            check_pattern_fits(weight.shape[1], pattern)
        else:
            prune_count(sparsity, 1)  # refuses a sparsity outside [0, 1] before any work

        def project(Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mask = select_prune_mask(Z.square(), sparsity, scope or self.default_scope, pattern)
            return Z.masked_fill(mask, 0), mask

        scaled = self._scaled(stats)
        B0 = weight.to(device=scaled.H.device, dtype=prune_precision()) * scaled.d  # [out, in]
        Y = B0 @ scaled.H
        B, _ = self._admm(B0, Y, scaled, project)
        B, mask = project(B)
        B, _ = pcg_solve(scaled.H, B0, ~mask, B, self.pcg_tol, self.pcg_iter, stall=0.0)  # the reference: pcg_iter steps
        W = (B / scaled.d).masked_fill(mask, 0)
        return PruneResult(weight=W.to(device=weight.device, dtype=weight.dtype), prune_mask=mask.to(weight.device))

    def _admm(self, B0, Y, scaled: _Scaled, project):
        """The reference's ADMM with its rho schedule; returns (B, iterations run)."""
        rho = self.rho
        D, previous = project(B0)
        D_start, V, B = D, torch.zeros_like(B0), B0
        kept = max(1, int((~previous).sum()))
        inverse = scaled.inverse(rho)
        grown = False  # rho has been raised at least once
        for step in range(1, self.max_iter + 1):
            B = (Y - V + rho * D) @ inverse
            D, mask = project(B + V / rho)
            V = V + rho * (B - D)
            if step % self.update_iter:
                continue
            change = int((mask != previous).sum())
            previous = mask
            if change / kept > 0.005:
                rho *= 1.3 if change / kept > 0.1 else 1.2
                grown = True
            elif change > 0:
                if grown:
                    rho *= 1.1
                else:  # the support moves but rho never grew: start again, gentler
                    rho /= 5
                    B, D, V = B0, D_start, torch.zeros_like(B0)
            elif grown:
                break
            else:
                rho /= 5
            rho = min(rho, MAX_RHO)
            inverse = scaled.inverse(rho)
            if step >= self.switch_iter and change / kept < 0.0003:
                break
        return B, step

    def _scaled(self, stats: LayerStats) -> _Scaled:
        """The rescaled problem of this input group, computed once for all the layers that share it."""
        gram = stats.gram
        if self._cache and self._cache[0] is gram:
            return self._cache[1]
        H = damped(gram.to(prune_precision()), self.lambda2)
        d = H.diagonal().sqrt() + 1e-8
        H = (H / d.unsqueeze(1) / d.unsqueeze(0)).double()  # float32 values: the float64 copy holds them exactly
        eigenvalues, eigenvectors = torch.linalg.eigh(H)
        H = H.to(prune_precision())  # the same float32 H, rebuilt: it was not held beside LAPACK's workspace
        scaled = _Scaled(d, H, eigenvalues.to(prune_precision()), eigenvectors.to(prune_precision()))
        self._cache[:] = [gram, scaled]
        return scaled
