"""Prune an N:M layer with its input channels permuted (methods.permutation), and keep the permutation where
it costs nothing at run time.

The permutation is searched on the method's own scores, as RIA does. SparseGPT and ALPS choose their masks
themselves and have no scores; they are permuted by the optimal-brain-surgeon saliency w_ij^2 / [H^-1]_jj
(the cost of pruning one weight alone, which the column sweep approximates), with the layer's damped Hessian.
The layer is then pruned in the permuted order, its statistics (sums, Gram matrix) permuted alike, so every
method, refinement and reconstruction sees the N:M groups of the permuted columns. Then either
- the layer's producers absorb the permutation (models.absorb): its weight is stored permuted, natively
  N:M, and the block computes the same function; or
- the pruned weight is put back in the original column order, as RIA's code does: its zeros are N:M only
  after its inputs are permuted. zprune.json records which ("nm_layout": "native" or "permuted").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple, TypeAlias

from zprune_cli.base.lazy import lazy
from zprune_cli.base.masks import Pattern, select_prune_mask
from zprune_cli.methods.base import Method, prune_precision
from zprune_cli.methods.permutation import permutation_and_scores
from zprune_cli.models.absorb import PROBE_TOKENS, Absorption, BlockProbe, absorb, attention_geometry
from zprune_cli.models.producers import plan_block, signature
from zprune_cli.models.runner import capture_block_inputs
from zprune_cli.stats.types import LayerStats

torch = lazy("torch")
nn = lazy("torch.nn")
experts = lazy("zprune_cli.models.experts")

log = logging.getLogger("zprune")

SALIENCY_DAMPING = 0.01  # x mean(diag H), as SparseGPT damps


class Stored(NamedTuple):
    """A layer pruned under a permutation, in the column order it is stored in."""

    weight: torch.Tensor  # [out, in]
    prune_mask: torch.Tensor  # [out, in], True = pruned
    stats: LayerStats | None  # the layer's statistics in the stored column order (what GPTQ quantizes with)
    order: torch.Tensor | None  # the stored columns' original indices when they are permuted (absorbed), else None


# (weight, statistics) -> (pruned weight, prune mask); a string, so that importing this module reads no torch name
Prune: TypeAlias = "Callable[[torch.Tensor, LayerStats | None], tuple[torch.Tensor, torch.Tensor]]"


class Permuter:
    """One prune run's permutations: each block's absorption plans, then each layer's search and placement."""

    def __init__(self, model: nn.Module, mode: str, pattern: Pattern, method: Method, layout: str = "native"):
        self.mode, self.pattern, self.method = mode, pattern, method
        self.restrict = layout == "native"  # "free": no plan that restricts the search (PruneRecipe.permute_layout)
        self.geometry = attention_geometry(model.config)
        vocab = model.get_input_embeddings().weight.shape[0]
        ids = (torch.arange(PROBE_TOKENS).reshape(1, -1) * 31 + 7) % vocab
        captured = capture_block_inputs(model, ids)  # every block's keyword arguments for a short input
        self.kwargs, self.hidden_size = captured.block_kwargs, captured.hidden.shape[-1]
        self.known: dict[tuple, list[Absorption]] = {}
        self.plans: dict[str, Absorption] = {}
        self.projections: dict[str, nn.Module] = {}
        self.prefix = ""
        self.layout: dict[str, str] = {}  # full layer name -> "native" | "permuted"
        self.orders: dict[str, torch.Tensor] = {}  # "permuted" layers: the column order their N:M groups are in
        self.absorbed: dict[str, str] = {}  # what was found, for the log: consumer kind -> description
        self.row_moves: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # producers' rows moved (absorb), not yet followed

    def start_block(self, index: int, block: nn.Module, prefix: str, consumers: list[str]) -> None:
        """Find (or check) which of `consumers` (names within the block) can hand their permutation on."""
        probe = BlockProbe(block, self.kwargs[index], self.hidden_size, self.geometry)
        key = signature(probe)
        self.plans = plan_block(probe, consumers, self.known.get(key))
        self.known[key] = list(self.plans.values())
        if not self.restrict:
            self.plans = {name: plan for name, plan in self.plans.items() if plan.unrestricted}
        self.projections, self.prefix = probe.projections, prefix
        for plan in self.plans.values():
            self.absorbed.setdefault(_kind(plan.consumer, probe), plan.describe())

    def prune(self, name: str, weight: torch.Tensor, stats: LayerStats | None, prune: Prune) -> Stored:
        """Layer `name` pruned as it is to be stored (its columns permuted when its producers absorbed the
        permutation). `prune(weight, stats)` returns (pruned weight, prune mask), both [out, in]."""
        plan, _, perm = self._search(name, weight, stats)
        if perm is None:
            return Stored(*prune(weight, stats), stats, None)
        moved = perm.to(weight.device)
        permuted = stats.permuted(perm) if stats is not None else None
        new, mask = prune(weight[:, moved], permuted)
        if self._place(name, plan, perm):
            return Stored(new, mask, permuted, moved)
        back = torch.argsort(moved)
        return Stored(new[:, back], mask[:, back], stats, None)

    def select(self, name: str, weight: torch.Tensor, stats: LayerStats | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A score method's prune, for a recipe where the mask is its scores' N:M selection and nothing more:
        (prune mask [out, in] in the column order the layer is to be stored in, that order as the original
        columns' indices when the producers absorbed the permutation, else None). The scores the search ran
        on are selected on their permuted columns: no second scoring and no permuted copy of the weight to
        prune (a column permutation leaves every score method's score of each weight as it was)."""
        plan, scores, perm = self._search(name, weight, stats)
        if perm is None:
            return select_prune_mask(scores, 0.0, "row", self.pattern), None
        moved = perm.to(scores.device)
        mask = select_prune_mask(scores, 0.0, "row", self.pattern)  # scores: the permuted columns, from the search
        if self._place(name, plan, perm):
            return mask, moved.to(weight.device)
        return mask.index_select(1, torch.argsort(moved)).to(weight.device), None

    def _search(self, name: str, weight: torch.Tensor, stats: LayerStats | None):
        """(the layer's absorption plan or None, its permutation scores, in the permutation's column order, the
        permutation found, or None for the identity); an identity is recorded as stored natively."""
        plan = self.plans.get(name[len(self.prefix):])
        if plan is not None and plan.kind == "head" and plan.head_dim % self.pattern.m:
            plan = None  # N:M groups would straddle two heads
        scores = permutation_scores(self.method, weight.to(prune_precision()), stats)
        perm, moved = permutation_and_scores(scores.cpu(), self.pattern, self.mode,
                                             plan.ties(weight.shape[1]) if plan else None)
        if moved is None:
            self.layout[name] = "native"
            return plan, scores, None
        return plan, moved.to(scores.device), perm

    def _place(self, name: str, plan: Absorption | None, perm: torch.Tensor) -> bool:
        """Record where layer `name`'s permutation goes: absorbed by its producers (their rows moved now;
        True), or kept by the layer with its mask mapped back to the original column order (False)."""
        if plan is not None:
            self.row_moves += [(self.prefix + producer, rows, order)
                               for producer, rows, order in absorb(self.projections, plan, perm)]
            self.layout[name] = "native"
            return True
        self.layout[name] = "permuted"
        self.orders[name] = perm
        return False

    def log_summary(self) -> None:
        """One line: which layer kinds handed their permutation on, and how many layers kept it to themselves."""
        kept = [name for name, how in self.layout.items() if how == "permuted"]
        absorbed = "; ".join(self.absorbed.values()) or "none"
        log.info("channel permutation (%s): absorbed by their producers: %s; %d layer(s) kept N:M after permutation "
                 "only (their mask mapped back to the original column order)", self.mode, absorbed, len(kept))


def _kind(name: str, probe: BlockProbe) -> str:
    return name.rpartition(".")[0] if isinstance(probe.projections[name], experts.ExpertSlice) else name


def permutation_scores(method: Method, weight_fp32: torch.Tensor, stats: LayerStats | None) -> torch.Tensor:
    """[out, in]: the scores a permutation keeps the most of: the method's own, or for a method without scores
    (it chooses its mask in its own sweep) the saliency w^2 / [H^-1]_jj."""
    if type(method).score is not Method.score:
        return method.score(weight_fp32, stats)
    return obs_saliency(weight_fp32, stats)


def obs_saliency(weight_fp32: torch.Tensor, stats: LayerStats) -> torch.Tensor:
    """w_ij^2 / [H^-1]_jj with H damped by SALIENCY_DAMPING x mean(diag H); dead inputs (H_jj = 0) score 0."""
    H = stats.hessian().to(weight_fp32.device)
    dead = H.diagonal() == 0
    H = H.clone()
    H[dead, dead] = 1
    H += SALIENCY_DAMPING * H.diagonal().mean() * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    L, info = torch.linalg.cholesky_ex(H)
    inverse_diagonal = torch.cholesky_inverse(L).diagonal() if info.item() == 0 else 1 / H.diagonal()
    return (weight_fp32.square() / inverse_diagonal).masked_fill(dead.unsqueeze(0), 0)
