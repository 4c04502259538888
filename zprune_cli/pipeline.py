"""Prune a model in memory from stored statistics: which layers, at what sparsity, with which inputs.

The hand-off is statistics -> scores -> mask -> updated weights; the methods do the math, this
module walks the blocks. Two ways to get each block's statistics:
- dense: straight from the store (no forward pass);
- pruned: the papers' protocol. Start from the stored block-0 inputs; for block l, collect its
  statistics on the outputs of the already-pruned blocks below, prune it, run it to feed block l+1.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from zprune_cli.allocation import outlier_fraction, owl_sparsities
from zprune_cli.errors import ZpruneUsageError
from zprune_cli.masks import Pattern, check_pattern_fits
from zprune_cli.methods import get_method
from zprune_cli.methods.base import PRUNE_PRECISION, Method
from zprune_cli.methods.sparsegpt import reconstruct
from zprune_cli.models.blocks import block_prefix, find_blocks, find_linears
from zprune_cli.models.runner import capture_block_inputs, run_block
from zprune_cli.progress import Progress, ensure
from zprune_cli.stats.collect import BlockStatsCollector
from zprune_cli.stats.store import PropagatedKey, StatsEntry
from zprune_cli.stats.types import LayerStats

PROPAGATE = ("auto", "dense", "pruned")
ALLOCATIONS = ("uniform", "owl")
SCOPES = ("row", "layer")


@dataclass
class PruneSpec:
    """What to prune and how; checked once, at construction, with errors naming the field."""

    method: str = "zpruner"
    sparsity: float = 0.5
    pattern: Pattern = field(default_factory=Pattern)
    scope: str | None = None  # None: the method's default
    allocation: str = "uniform"
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    reconstruct: bool = False
    propagate: str = "auto"
    ignore: list[str] = field(default_factory=list)  # regexes of layer names left dense
    overrides: dict[str, float] = field(default_factory=dict)  # regex -> sparsity, from the config
    method_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.pattern, str):
            self.pattern = Pattern.parse(self.pattern)
        if not self.pattern.is_nm and not 0.0 < float(self.sparsity) < 1.0:
            raise ZpruneUsageError(f"--sparsity must be between 0 and 1 (exclusive), got {self.sparsity}")
        if self.pattern.is_nm:
            self.sparsity = self.pattern.n / self.pattern.m
        if self.scope is not None and self.scope not in SCOPES:
            raise ZpruneUsageError(f"--scope must be one of {', '.join(SCOPES)}, got '{self.scope}'")
        if self.allocation not in ALLOCATIONS:
            raise ZpruneUsageError(f"--allocation must be one of {', '.join(ALLOCATIONS)}, got '{self.allocation}'")
        if self.propagate not in PROPAGATE:
            raise ZpruneUsageError(f"--propagate must be one of {', '.join(PROPAGATE)}, got '{self.propagate}'")
        for pattern, ratio in self.overrides.items():
            _compile(pattern, "sparsity override")
            if not 0.0 <= float(ratio) < 1.0:
                raise ZpruneUsageError(f"sparsity override '{pattern}' = {ratio} must be in [0, 1)")
        for pattern in self.ignore:
            _compile(pattern, "--ignore")
        self.method_obj: Method = get_method(self.method, **self.method_options)

    @property
    def needs_gram(self) -> bool:
        return self.method_obj.needs_gram or self.reconstruct

    @property
    def resolved_propagate(self) -> str:
        """auto: pruned inputs for methods that update weights (their updates absorb the error below)."""
        if self.propagate != "auto":
            return self.propagate
        return "pruned" if (self.method_obj.updates_weights or self.reconstruct) else "dense"

    @property
    def resolved_scope(self) -> str:
        return self.scope or self.method_obj.default_scope

    def describe(self) -> dict:
        return {
            "method": self.method,
            "sparsity": self.sparsity,
            "pattern": str(self.pattern),
            "scope": self.resolved_scope,
            "allocation": self.allocation,
            "owl_m": self.owl_m if self.allocation == "owl" else None,
            "owl_lambda": self.owl_lambda if self.allocation == "owl" else None,
            "reconstruct": self.reconstruct,
            "propagate": self.resolved_propagate,
            "ignore": self.ignore,
            "overrides": self.overrides,
            "method_options": self.method_options,
        }


def _compile(pattern: str, what: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ZpruneUsageError(f"{what} '{pattern}' is not a valid regular expression: {exc}") from None


@dataclass
class PruneReport:
    spec: dict
    layers: dict[str, float]  # full Linear name -> measured sparsity
    layer_params: dict[str, int]
    seconds: float

    @property
    def overall(self) -> float:
        total = sum(self.layer_params.values())
        zeros = sum(self.layers[n] * self.layer_params[n] for n in self.layers)
        return zeros / total if total else 0.0


def pruned_layers(model: nn.Module, ignore: list[str]) -> list[tuple[int, str, dict[str, nn.Linear]]]:
    """(block index, block prefix, {name in block: Linear}) for every block, honouring --ignore."""
    blocks_name, blocks = find_blocks(model)
    return [
        (i, block_prefix(blocks_name, i), find_linears(block, ignore, prefix=block_prefix(blocks_name, i)))
        for i, block in enumerate(blocks)
    ]


def layer_sparsities(spec: PruneSpec, layers, entry: StatsEntry) -> dict[str, float]:
    """Target sparsity per full layer name: uniform or OWL per block, then config overrides."""
    if spec.allocation == "owl" and not spec.pattern.is_nm:
        fractions = []
        for index, _, linears in layers:
            stats = entry.block_stats(index)
            scores = [lin.weight.detach().to(PRUNE_PRECISION).abs() * stats[name].norms.to(lin.weight.device)
                      for name, lin in linears.items()]
            fractions.append(outlier_fraction(scores, spec.owl_m))
        per_block = owl_sparsities(fractions, spec.sparsity, spec.owl_lambda)
    else:
        per_block = [spec.sparsity] * len(layers)
    targets = {}
    overrides = [(re.compile(p), float(r)) for p, r in spec.overrides.items()]
    for (_, prefix, linears), ratio in zip(layers, per_block):
        for name in linears:
            full = prefix + name
            targets[full] = next((r for p, r in overrides if p.search(full)), ratio)
    return targets


def check_layers(spec: PruneSpec, layers) -> None:
    """Fail before touching any weight: N:M needs every width divisible by m."""
    if not any(linears for _, _, linears in layers):
        raise ZpruneUsageError("no Linear layer is left to prune (check --ignore)")
    for _, prefix, linears in layers:
        for name, linear in linears.items():
            try:
                check_pattern_fits(linear.in_features, spec.pattern)
            except ZpruneUsageError as exc:
                raise ZpruneUsageError(f"layer {prefix}{name}: {exc}") from None


def _prune_linear(spec: PruneSpec, linear: nn.Linear, stats: LayerStats, sparsity: float) -> None:
    weight = linear.weight.data
    if sparsity <= 0:
        return
    result = spec.method_obj.prune(weight, stats, sparsity, spec.pattern, spec.scope)
    new = result.weight
    if spec.reconstruct and not spec.method_obj.updates_weights:
        hessian = stats.hessian().to(weight.device)
        new = reconstruct(weight, hessian, result.prune_mask.to(weight.device))
    linear.weight.data.copy_(new)


@torch.inference_mode()
def prune_in_memory(model: nn.Module, entry: StatsEntry, spec: PruneSpec, progress: Progress | None = None) -> PruneReport:
    """Prune `model`'s decoder-block Linear layers in place from the statistics in `entry`."""
    started = time.perf_counter()
    progress = ensure(progress)
    if spec.needs_gram and not entry.has_gram:
        raise ZpruneUsageError(f"{spec.method}{' with --reconstruct' if spec.reconstruct else ''} needs Gram matrices; calibrate with gram=True")
    layers = pruned_layers(model, spec.ignore)
    check_layers(spec, layers)
    targets = layer_sparsities(spec, layers, entry)
    label = f"Pruning with {spec.method} ({spec.resolved_propagate} inputs)"
    stats_entry = entry
    if spec.resolved_propagate == "pruned":
        run = {k: v for k, v in spec.describe().items() if k != "propagate"}
        run_key = PropagatedKey(entry.key, {**run, "weights": weights_digest(layers)})
        store = entry.store
        stats_entry = store.get(run_key)
        if stats_entry is None:
            with store.locked(run_key):
                stats_entry = store.get(run_key)  # another process may have written it while we waited
                if stats_entry is None:  # first run with these settings: collect and keep its statistics
                    with store.writer(run_key, {**entry.manifest["settings"], "propagated": run_key.run}) as writer:
                        _prune_propagating(model, entry, spec, layers, targets, writer, progress, label)
                    return _report(spec, layers, started)
    device = next(model.parameters()).device
    with progress.task(label, len(layers)) as task:
        for index, prefix, linears in layers:
            stats = stats_entry.block_stats(index, device)
            for name, linear in linears.items():
                _prune_linear(spec, linear, stats[name], targets[prefix + name])
            task.advance(1)
    return _report(spec, layers, started)


def _prune_propagating(model, entry: StatsEntry, spec: PruneSpec, layers, targets, writer, progress: Progress, label: str):
    """The papers' protocol: block l's statistics come from the outputs of the pruned blocks below."""
    device = next(model.parameters()).device
    _, blocks = find_blocks(model)
    input_ids, hidden = entry.inputs(device)
    hidden = hidden.to(next(model.parameters()).dtype)
    block_kwargs = capture_block_inputs(model, input_ids[:1]).block_kwargs
    buffer = torch.empty_like(hidden)
    with progress.task(label, len(layers)) as task:
        for index, prefix, linears in layers:
            block = blocks[index]
            collector = BlockStatsCollector(linears, with_gram=spec.needs_gram)
            with collector:  # statistics of the dense block on the pruned model's inputs
                for i in range(hidden.shape[0]):
                    run_block(block, hidden[i : i + 1], block_kwargs[index])
                    collector.end_call()
            writer.write_block(index, collector.groups)
            stats = collector.layer_stats()
            for name, linear in linears.items():
                _prune_linear(spec, linear, stats[name], targets[prefix + name])
            for i in range(hidden.shape[0]):  # the pruned block feeds the next one
                buffer[i] = run_block(block, hidden[i : i + 1], block_kwargs[index])[0]
            hidden, buffer = buffer, hidden
            task.advance(1)


def weights_digest(layers) -> str:
    """A cheap fingerprint of the weights about to be pruned, so cached propagation statistics are
    reused only for the weights they were collected from (not, say, a model pruned already)."""
    digest = hashlib.sha256()
    for _, prefix, linears in layers:
        for name, linear in linears.items():
            w = linear.weight.detach()
            digest.update(f"{prefix}{name}:{float(w.abs().sum(dtype=torch.float64)):.12e}:{int((w == 0).sum())}".encode())
    return digest.hexdigest()[:16]


def _report(spec: PruneSpec, layers, started: float) -> PruneReport:
    measured, params = measure(layers)
    return PruneReport(spec.describe(), measured, params, time.perf_counter() - started)


def measure(layers) -> tuple[dict[str, float], dict[str, int]]:
    sparsity, params = {}, {}
    for _, prefix, linears in layers:
        for name, linear in linears.items():
            w = linear.weight
            params[prefix + name] = w.numel()
            sparsity[prefix + name] = float((w == 0).sum()) / w.numel()
    return sparsity, params


class DenseSnapshot:
    """A CPU copy of the prunable weights, to prune several methods from one load of the model."""

    def __init__(self, model: nn.Module, ignore: list[str] | None = None):
        self._weights = {}
        for _, prefix, linears in pruned_layers(model, ignore or []):
            for name, linear in linears.items():
                self._weights[prefix + name] = (linear, linear.weight.detach().to("cpu", copy=True))

    @torch.inference_mode()
    def restore(self) -> None:
        for linear, weight in self._weights.values():
            linear.weight.data.copy_(weight.to(linear.weight.device))
