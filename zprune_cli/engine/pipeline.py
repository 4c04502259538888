"""Prune a model in memory from stored statistics: which layers, at what sparsity, with which inputs.

The hand-off is statistics -> scores -> mask -> updated weights; the methods do the math, this
module walks the blocks (`models.walk.walk_blocks`, the walk calibration and evaluation use too). Two ways to get each block's statistics:
- dense: straight from the store (no forward pass);
- pruned: the papers' protocol. Start from the stored block-0 inputs; for block l, collect its
  statistics on the outputs of the already-pruned blocks below, prune it, run it to feed block l+1.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

from zprune_cli.base import distributed
from zprune_cli.base.lazy import inference_mode, lazy
from zprune_cli.engine.allocation import block_outlier_fraction, owl_sparsities
from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.base.masks import check_pattern_fits
from zprune_cli.methods.base import Method, layer_error, prune_precision
from zprune_cli.engine.permuted import Permuter
from zprune_cli.engine.resume import ResumePoint
from zprune_cli.methods.obs import gptq
from zprune_cli.methods.quantize import QuantGrid, check_group_size
from zprune_cli.methods.reconstruction import finish_mask
from zprune_cli.models.blocks import (BlockLayers, bias_of, dense_fused_weights, in_features, layer_modules,
                                      pruned_layers, weight_view)
from zprune_cli.models.offload import held
from zprune_cli.models.runner import capture_block_inputs
from zprune_cli.models.walk import walk_blocks
from zprune_cli.base.progress import Progress, ensure
from zprune_cli.engine.recipe import PruneRecipe
from zprune_cli.base.sparsity import BlockwiseSparsity, LayerCount
from zprune_cli.stats.collect import BlockStatsCollector, reduce_groups
from zprune_cli.stats.store import PropagatedKey, StatsEntry
from zprune_cli.stats.types import LayerStats

torch = lazy("torch")
nn = lazy("torch.nn")

log = logging.getLogger("zprune")


@dataclass
class PruneReport:
    recipe: PruneRecipe
    layers: dict[str, float]  # full Linear name -> measured sparsity (the pruned layers only)
    layer_params: dict[str, int]
    seconds: float
    nm_layout: dict[str, str] = field(default_factory=dict)  # with --permute: layer -> "native" | "permuted"
    grids: dict[str, QuantGrid] = field(default_factory=dict)  # full Linear name -> its grids (--wbits only)
    # full Linear name -> ||W X - W' X||^2 / ||W X||^2, for the layers whose statistics hold a Gram
    errors: dict[str, float] = field(default_factory=dict)

    @property
    def overall(self) -> float:
        total = sum(self.layer_params.values())
        zeros = sum(self.layers[n] * self.layer_params[n] for n in self.layers)
        return zeros / total if total else 0.0


def layer_sparsities(recipe: PruneRecipe, layers: BlockLayers, entry: StatsEntry | None,
                     model: nn.Module | None = None) -> dict[str, float]:
    """Target sparsity per full layer name: uniform or OWL per block, then the recipe's overrides. OWL reads
    every block's weights first: under --offload disk each is read (`held`) while its score is taken."""
    if recipe.allocation == "owl":
        fractions = []
        for index, _, linears in layers:
            with held(model, index) if model is not None else contextlib.nullcontext():
                fractions.append(block_outlier_fraction(linears, entry.block_stats(index), recipe.owl_m))
        per_block = owl_sparsities(fractions, recipe.sparsity, recipe.owl_lambda)
    else:
        per_block = [recipe.sparsity] * len(layers)
    overrides = [(re.compile(p), r) for p, r in recipe.overrides]
    return {
        prefix + name: next((r for p, r in overrides if p.search(prefix + name)), ratio)
        for (_, prefix, linears), ratio in zip(layers, per_block)
        for name in linears
    }


def check_layers(recipe: PruneRecipe, layers: BlockLayers) -> None:
    """Fail before touching any weight: N:M needs every width divisible by m, quantization groups too."""
    if not any(linears for _, _, linears in layers):
        raise ZpruneUsageError("no Linear layer is left to prune (check --ignore)")
    for name, linear in layer_modules(layers).items():
        try:
            check_pattern_fits(in_features(linear), recipe.pattern_obj)
            if recipe.quant is not None:
                check_group_size(in_features(linear), recipe.quant.group_size)
        except ZpruneUsageError as exc:
            raise ZpruneUsageError(f"layer {name}: {exc}") from None


class _Pruner:
    """One recipe's method, configured once, applied layer by layer (then quantized, with --wbits)."""

    def __init__(self, recipe: PruneRecipe, model: nn.Module | None = None):  # the model: with --permute only
        self.recipe = recipe
        self.method: Method = recipe.method_obj
        self.pattern = recipe.pattern_obj
        self.finishes = recipe.reconstruct != "none" or recipe.swap_rounds > 0  # the normalised recipe allows neither with a method that updates weights
        self.quant = recipe.quant
        self.grids: dict[str, QuantGrid] = {}
        self.errors: dict[str, float] = {}  # the layer error, where the statistics hold a Gram (never computed for it)
        self.permuter = (Permuter(model, recipe.permute, self.pattern, self.method, recipe.permute_layout)
                         if recipe.permute != "none" else None)
        # the mask is the method's scores' selection and nothing more: it is applied to the layer in place (no
        # pruned copy of it, no copy back), with --permute selected on the permuted scores (Permuter.select)
        self.scores_alone = type(self.method).prune is Method.prune and not self.finishes and self.quant is None

    def start_block(self, index: int, block: nn.Module, prefix: str, linears: dict, targets: dict[str, float]) -> None:
        """Before a block's layers: with --permute, find which of them can hand a permutation to their producers."""
        if self.permuter is not None:
            self.permuter.start_block(index, block, prefix, [n for n in linears if targets[prefix + n] > 0])

    def __call__(self, name: str, linear: nn.Linear, stats: LayerStats, sparsity: float) -> None:
        if sparsity <= 0 and self.quant is None:
            return
        weight = weight_view(linear)  # [out, in], a view that writes through (Conv1D stores [in, out])
        _require_finite(weight, f"the weight of layer {name}")
        if type(self.method).uses_stats or self.finishes or self.quant is not None:
            _require_finite(stats.sumsq, f"the activation statistics of layer {name}")
            if stats.gram is not None and (self.recipe.needs_gram):
                _require_finite(stats.gram, f"the Gram matrix of layer {name}")
        if self.scores_alone:  # zeros are finite: the weight was checked above
            if self.permuter is None:
                mask = self.method.prune_mask(weight, stats, sparsity, self.pattern, self.recipe.scope)
            else:
                mask, stats = self._select_permuted(name, weight, stats)
            if stats is not None and stats.gram is not None:  # W - W' is W on the mask
                self.errors[name] = layer_error(weight.masked_fill(~mask, 0), weight, stats.gram)
            weight.masked_fill_(mask, 0)
            return
        order = None  # the stored columns' original indices, where the producers absorbed a permutation
        if self.permuter is not None and sparsity > 0:  # quantized after the mask, in the stored column order
            new, mask, stats, order = self.permuter.prune(name, weight, stats, lambda w, s: self._prune(w, s, sparsity)[:2])
            grid = None
            for producer, rows, moved in self.permuter.row_moves:  # a quantized producer's grids follow its rows
                if producer in self.grids:
                    self.grids[producer] = self.grids[producer].rows_moved(rows.cpu(), moved.cpu())
            self.permuter.row_moves.clear()
        else:
            new, mask, grid = self._prune(weight, stats, sparsity) if sparsity > 0 else (weight, None, None)
        if self.quant is not None and grid is None:  # the mask fixed, the kept weights quantized by GPTQ
            new, grid = gptq(new, stats.hessian().to(weight.device), mask, self.quant)
        _require_finite(new, f"the pruned weight of layer {name}")
        if stats is not None and stats.gram is not None:  # in the stored column order (a copy only when permuted)
            before = weight if order is None else weight[:, order]
            self.errors[name] = layer_error(before.to(prune_precision()) - new.to(prune_precision()), before, stats.gram)
        weight_view(linear).copy_(new)
        if grid is not None:
            self.grids[name] = grid

    def _select_permuted(self, name: str, weight: torch.Tensor, stats: LayerStats | None):
        """(mask, statistics) of a score method's layer under --permute, in the column order the layer is stored
        in: `weight` (the layer's view) is moved to it in place when its producers absorbed the permutation."""
        mask, order = self.permuter.select(name, weight, stats)
        self.permuter.row_moves.clear()  # no quantization grids to follow the producers' rows
        if order is None:
            return mask, stats
        weight.copy_(weight.index_select(1, order))
        return mask, stats.permuted(order) if stats is not None else None

    def _prune(self, weight: torch.Tensor, stats: LayerStats, sparsity: float):
        """(pruned weight, prune mask, grids): the method's weight (refined and reconstructed when asked), its
        mask, and its grids if it quantized while pruning (SparseGPT's joint walk: PruneRecipe.joint), else None."""
        joint = {"quant": self.quant} if self.quant is not None and self.recipe.joint else {}
        result = self.method.prune(weight, stats, sparsity, self.pattern, self.recipe.scope, **joint)
        if not self.finishes:
            return result.weight, result.prune_mask, result.grid
        new, mask = finish_mask(weight, stats.hessian().to(weight.device), result.prune_mask.to(weight.device),
                                self.pattern, self.recipe.swap_rounds, self.recipe.reconstruct)
        return new, mask, None


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or inf in `tensor`. A finite sum proves it (a NaN or inf entry makes the sum NaN or inf) in one
    pass with no temporary: isfinite(tensor).all() writes a bool per entry, 0.3-0.5 s at each of a 7B
    block's MLP weights, and ran twice per layer. Only a sum that is not finite (an overflow) is checked entry
    by entry."""
    if tensor.is_floating_point() and bool(torch.isfinite(tensor.sum())):
        return True
    return bool(torch.isfinite(tensor).all())


def _require_finite(tensor: torch.Tensor, what: str) -> None:
    """Stop before anything is saved: a NaN or inf would be pruned, spread by updates, and saved."""
    if not all_finite(tensor):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ZpruneError(f"{what} holds {bad} non-finite value(s) (NaN or inf); nothing was saved. "
                          "Check the model file, or calibrate in float32 (--dtype float32)")


@inference_mode
def prune_in_memory(model: nn.Module, entry: StatsEntry | None, recipe: PruneRecipe,
                    progress: Progress | None = None, resume: ResumePoint | None = None,
                    on_block: Callable[[ResumePoint], None] | None = None) -> PruneReport:
    """Prune `model`'s decoder-block Linear layers in place from the statistics in `entry` (None for a recipe
    that reads no calibration data). resume: go on from a point an earlier process recorded (its finished blocks
    are not walked again); on_block(point): called after each finished block (verbs.partial records it)."""
    started = time.perf_counter() - (resume.seconds if resume else 0.0)
    progress = ensure(progress)
    if entry is not None:
        entry = _usable(entry, recipe, next(model.parameters()).device)
    elif recipe.reads_data:
        raise ZpruneUsageError(f"{recipe.label()} needs calibration statistics")
    layers = pruned_layers(model, recipe.ignore)
    check_layers(recipe, layers)
    _warn_left_dense(model, layers)
    targets = layer_sparsities(recipe, layers, entry, model)
    prune_layer = _Pruner(recipe, model)
    label = f"Pruning with {recipe.method} ({recipe.propagate} inputs)"
    walk = _Walk(resume or ResumePoint(), on_block, started)
    if recipe.propagate == "pruned" and walk.resume.hidden is not None:  # resumed: propagate on, keep no statistics
        entry.store.sweep_dead_writers()  # the statistics a killed sitting was writing (GBs of Grams at 13B)
        found = _prune_blocks(model, entry, layers, prune_layer, targets, progress, label, None, walk)
        return _report(recipe, started, *found, prune_layer)
    if recipe.propagate == "pruned":
        run_key = PropagatedKey(entry.key, {"recipe": recipe.digest, "weights": weights_digest(layers, model)})
        store = entry.store
        with store.claimed(run_key, lambda: store.get(run_key, repair=True), progress) as stored:
            if stored is None:  # first run with this recipe: collect and keep its statistics
                settings = {**entry.manifest.settings, "gram": recipe.needs_gram, "block_statistics": True,
                            "propagated": {"recipe": recipe.as_dict(), **run_key.run}}
                with store.writer(run_key, settings, optional=True) if distributed.is_main() else nullcontext() as writer:
                    found = _prune_blocks(model, entry, layers, prune_layer, targets, progress, label, writer, walk)
                return _report(recipe, started, *found, prune_layer)
        entry = stored.readable()
    found = _prune_blocks(model, entry, layers, prune_layer, targets, progress, label, walk=walk)
    return _report(recipe, started, *found, prune_layer)


_STORED = object()  # _prune_blocks' writer when the statistics are read from the store, not collected


@dataclass
class _Walk:
    """Where the walk starts (a resumed run's point) and whom it tells after each finished block."""

    resume: ResumePoint
    on_block: Callable[[ResumePoint], None] | None
    started: float  # perf_counter() at the start of the pruning, the sittings before included

    def after_block(self, index: int, hidden, counting: BlockwiseSparsity, pruner: _Pruner, unrouted: list[str]):
        if self.on_block is None:
            return
        permuter = pruner.permuter
        self.on_block(ResumePoint(
            blocks=index + 1, hidden=hidden, counts=dict(counting.layers), errors=dict(pruner.errors),
            grids={name: (grid.scale, grid.zero) for name, grid in pruner.grids.items()},
            layout=dict(permuter.layout) if permuter else {}, absorbed=dict(permuter.absorbed) if permuter else {},
            unrouted=list(unrouted), seconds=time.perf_counter() - self.started))

    def restore(self, counting: BlockwiseSparsity, pruner: _Pruner, unrouted: list[str]) -> None:
        """The report's findings of the finished blocks, as the earlier process left them."""
        point = self.resume
        counting.layers.update(point.counts)
        pruner.errors.update(point.errors)
        pruner.grids.update({name: QuantGrid(pruner.quant, scale, zero) for name, (scale, zero) in point.grids.items()})
        if pruner.permuter is not None:
            pruner.permuter.layout.update(point.layout)
            pruner.permuter.absorbed.update(point.absorbed)
        unrouted.extend(point.unrouted)


def _prune_blocks(model: nn.Module, entry: StatsEntry | None, layers: BlockLayers, prune_layer: _Pruner,
                  targets: dict[str, float], progress: Progress, label: str, writer=_STORED, walk: _Walk | None = None):
    """The one loop: each block's statistics (the store's; or, propagating, collected on the outputs of the pruned
    blocks below and kept by `writer`), its layers pruned, its sparsity measured while it is in memory. `walk`:
    from a resumed run's point (its findings restored, its next block's inputs), telling its listener."""
    device = next(model.parameters()).device
    walk = walk or _Walk(ResumePoint(), None, time.perf_counter())
    propagating = writer is not _STORED
    unrouted: list[str] = []
    counting = BlockwiseSparsity(layer_modules(layers))
    walk.restore(counting, prune_layer, unrouted)
    hidden, block_kwargs = _propagation_inputs(model, entry) if propagating else (None, None)
    if propagating and walk.resume.blocks:
        if walk.resume.hidden is None:  # it read them from the store, where they no longer are
            raise ZpruneError("this prune cannot resume: the statistics its finished blocks read were removed from "
                              "the store; remove its partial output (the hidden .zprune-partial folder) to start over")
        hidden = walk.resume.hidden.to(device=device, dtype=hidden.dtype)

    def collector(index: int, block: nn.Module) -> BlockStatsCollector:  # the dense block on the pruned inputs
        return BlockStatsCollector(layers[index][2], with_gram=prune_layer.recipe.needs_gram, width_of=in_features)

    def prune_block(index: int, prefix: str, block: nn.Module, collected: BlockStatsCollector | None) -> None:
        linears = layers[index][2]
        if collected is not None:
            groups = reduce_groups(collected.groups)  # summed over the ranks under torchrun: every rank prunes alike
            if writer is not None:  # rank 0 alone writes
                writer.write_block(index, groups)
            stats = {member: group.stats() for group in groups for member in group.members}
        else:  # a method that reads no statistics (magnitude) runs from an entry of block 0's inputs alone
            stats = entry.block_stats(index, device) if entry and entry.has_blocks else dict.fromkeys(linears)
        unrouted.extend(_no_tokens(prefix, linears, stats))
        prune_layer.start_block(index, block, prefix, linears, targets)
        for name, linear in linears.items():
            prune_layer(prefix + name, linear, stats[name], targets[prefix + name])
        counting(index, prefix, block)

    with progress.task(label, len(layers)) as task:  # --offload disk: read, prune, measure, hand to the save, release
        task.advance(walk.resume.blocks)
        walk_blocks(model, prune_block, hidden, block_kwargs, collector=collector if propagating else None,
                    changes=True, done=True, per_block=task.advance, start=walk.resume.blocks,
                    after_block=lambda index, out: walk.after_block(index, out if propagating else None, counting,
                                                                   prune_layer, unrouted))
    return unrouted, counting.layers


def _propagation_inputs(model: nn.Module, entry: StatsEntry):
    """Block 0's stored inputs (under torchrun, this rank's windows only) and every block's keyword arguments."""
    device = next(model.parameters()).device
    mine = distributed.shard(entry.manifest.settings["nsamples"])
    input_ids, hidden = entry.inputs(device, mine if distributed.active() else None)
    return hidden.to(next(model.parameters()).dtype), capture_block_inputs(model, input_ids[:1]).block_kwargs


def _usable(entry: StatsEntry, recipe: PruneRecipe, device: torch.device) -> StatsEntry:
    """The entry, readable, once it is known to hold what the recipe reads (under torchrun: the group formed)."""
    if recipe.statistics != "inputs" and not entry.has_blocks:
        raise ZpruneUsageError(f"{recipe.label()} needs per-block statistics; this entry holds block 0's inputs only")
    if recipe.statistics == "gram" and not entry.has_gram:
        raise ZpruneUsageError(f"{recipe.label()} needs Gram matrices; calibrate with gram=True")
    distributed.start(device, entry.manifest.settings["nsamples"])  # torchrun only
    return entry.readable()


def weights_digest(layers, model: nn.Module | None = None) -> str:
    """A cheap fingerprint of the weights about to be pruned, so cached propagation statistics are
    reused only for the weights they were collected from (not, say, a model pruned already)."""
    digest = hashlib.sha256()
    for index, prefix, linears in layers:
        with held(model, index) if model is not None else contextlib.nullcontext():
            for name, linear in linears.items():
                w = weight_view(linear)
                digest.update(f"{prefix}{name}:{float(w.abs().sum(dtype=torch.float64)):.12e}:{int((w == 0).sum())}".encode())
    return digest.hexdigest()[:16]


def _no_tokens(prefix: str, linears: dict, stats: dict[str, LayerStats]) -> list[str]:
    """Full names of the layers no calibration token reached (MoE experts the router never chose)."""
    return [prefix + name for name in linears if stats[name] is not None and stats[name].n_tokens == 0]


def _warn_left_dense(model: nn.Module, layers: BlockLayers) -> None:
    """Say once which weights of the blocks are not 2-D projections and so stay dense, and how much they hold:
    a 50% run over the attention alone of an MoE model is far from half its weights."""
    fused = dense_fused_weights(model)
    if fused:
        shown = ", ".join(f"{name} {shape}" for name, shape in list(fused.items())[:3])
        dense = sum(math.prod(shape) for shape in fused.values())
        share = dense / (dense + sum(m.weight.numel() for m in layer_modules(layers).values()))
        log.warning(f"{len(fused)} weight(s) inside the decoder blocks have 3 or more dimensions (fused MoE experts: "
                    f"{shown}{', ...' if len(fused) > 3 else ''}); zprune prunes 2-D projections only, so they "
                    f"stay dense ({share:.0%} of the block weights) and sparsity is measured over the layers it pruned")


def _report(recipe: PruneRecipe, started: float, unrouted: list[str], measured: dict[str, LayerCount],
            pruner: _Pruner) -> PruneReport:
    if unrouted:  # once per run, not per layer
        log.warning(f"{len(unrouted)} layer(s) received no calibration token: {', '.join(unrouted[:6])}"
                    f"{', ...' if len(unrouted) > 6 else ''}; their activation statistics are zero, so their "
                    "masks carry no activation information (calibrate on more samples to reach them)")
    sparsity = {name: v.sparsity for name, v in measured.items()}
    params = {name: v.params for name, v in measured.items()}
    permuter = pruner.permuter
    if permuter is not None:
        permuter.log_summary()
    return PruneReport(recipe, sparsity, params, time.perf_counter() - started, permuter.layout if permuter else {},
                       pruner.grids, pruner.errors)


class DenseSnapshot:
    """A CPU copy of the prunable weights, to prune several methods from one load of the model. The biases of
    every projection, and the weights `ignore` leaves dense, are kept too: an absorbed permutation
    (--permute) moves the rows of a layer's producers, which may be left dense."""

    def __init__(self, model: nn.Module, ignore: tuple[str, ...] = ()):
        self._weights = {name: (linear, weight_view(linear).to("cpu", copy=True), _copy(bias_of(linear)))
                         for name, linear in layer_modules(pruned_layers(model)).items()}

    @inference_mode
    def restore(self) -> None:
        for linear, weight, bias in self._weights.values():
            weight_view(linear).copy_(weight.to(linear.weight.device))
            if bias is not None:
                bias_of(linear).copy_(bias.to(linear.weight.device))


def _copy(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.to("cpu", copy=True)
