"""What a command will need, from the model's shapes alone: peak device and host memory, the store entry
with and without Gram matrices, output disk and forward passes. Pure arithmetic on a ModelShape.

Forward passes are counted as the code runs them: calibration embeds every window (`model_passes`:
the first window runs block 0 and hands the others' arguments to stand-ins, the others stop at block 0),
then runs each window through each block (`block_calls`, completed block forwards: block 0's first call,
then n_blocks per window); a `--propagate pruned` recipe embeds one window (block 0 runs once), then runs
each block twice per window (statistics, then the pruned block's outputs); evaluation runs
ceil(windows / batch) whole-model passes per dataset.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

from zprune_cli.base.lazy import lazy
from zprune_cli.estimation import work
from zprune_cli.estimation.memory import IMPORTS_BYTES, RUNTIME_BYTES, Footprint
from zprune_cli.estimation.shape import ModelShape
from zprune_cli.estimation.store_size import element_size, entry_bytes
from zprune_cli.methods.base import Cost
from zprune_cli.methods.reconstruction import finish_work_bytes
from zprune_cli.engine.recipe import PruneRecipe, calibration_needs, needs_calibration
from zprune_cli.base.settings import Calibration

torch = lazy("torch")

HOST_ONLY = ("loader's transient copies", "tensor being written", "dense snapshot", "block being read",
             "block in output dtype", "last shard in output dtype",  # these three: --offload disk
             "blocks in host memory", "blocks in output dtype")  # these two: --offload cpu
# Files saved beside the weights besides the tokenizer: config, generation config, zprune.json, model card.
SAVED_FILES_BYTES = 12_000
SAVED_BYTES_PER_LAYER = 80  # zprune.json and the model card list each pruned layer's sparsity


@dataclass(frozen=True)
class Target:
    """The model as a command will run it."""

    shape: ModelShape
    dtype: torch.dtype
    device: torch.device
    offload: str = "none"  # "disk": the decoder blocks are read from the checkpoint one at a time

    @property
    def footprint(self) -> Footprint:
        return Footprint(self.shape, self.dtype, self.offload)


@dataclass
class Estimate:
    command: str
    model: str
    dtype: str
    device: str
    offload: str  # the mode estimated: "none" (the model in memory) or "disk" (one decoder block at a time)
    params: int
    model_bytes: int
    n_blocks: int
    device_peak_bytes: int  # on "cpu" the device is the host: the same number as host_peak_bytes
    host_peak_bytes: int
    peak_step: str  # the step at which the larger peak is reached
    peak_parts: dict[str, int]  # what that peak is made of
    store_bytes: int  # what this run adds to the statistics store (0 when nothing)
    store_bytes_without_gram: int  # the calibration entry without Gram matrices
    store_bytes_with_gram: int  # ... and with them
    output_bytes: int  # disk for saved models (prune); 0 when nothing is saved
    model_passes: int
    block_calls: int
    notes: list[str] = field(default_factory=list)
    work: dict[str, dict[str, float]] = field(default_factory=dict)  # step -> {"flops", "selected"} (estimation/work.py)
    time_estimate: dict | None = None  # seconds from `work` and this machine's measured rates (timing.py)
    memory_check: dict | None = None  # whether the peaks fit this machine, and which --offload would (timing.py)
    step_bytes: dict[str, int] = field(default_factory=dict)  # each step's total on the device (the host on the CPU)

    def as_dict(self) -> dict:
        return asdict(self)


def _work(steps: dict[str, Cost]) -> dict[str, dict[str, float]]:
    return {name: {"flops": cost.flops, "selected": cost.selected} for name, cost in steps.items() if cost.flops or cost.selected}


_RUNTIME = {"python, torch, transformers": IMPORTS_BYTES, "model code, tokenizer, text": RUNTIME_BYTES}


def _peaks(t: Target, steps: dict[str, dict[str, int]], host_steps: dict[str, dict[str, int]]):
    """(device peak, host peak, step, parts). On the CPU every part shares one memory; on an accelerator the
    host holds only the loader's copies, what is written to disk and the dense snapshot."""
    if t.device.type == "cpu":
        name, parts = max(steps.items(), key=lambda kv: sum(kv[1].values()))
        parts = {**{k: v for k, v in parts.items() if v}, **_RUNTIME}
        return sum(parts.values()), sum(parts.values()), name, parts
    on_device = {n: {k: v for k, v in p.items() if k not in HOST_ONLY} for n, p in steps.items()}
    dname, dparts = max(on_device.items(), key=lambda kv: sum(kv[1].values()))
    hname, hparts = max(host_steps.items(), key=lambda kv: sum(kv[1].values()))
    hparts = {**hparts, **_RUNTIME}
    device_peak, host_peak = sum(dparts.values()), sum(hparts.values())
    if device_peak >= host_peak:
        return device_peak, host_peak, dname, {k: v for k, v in dparts.items() if v}
    return device_peak, host_peak, f"{hname} (host)", {k: v for k, v in hparts.items() if v}


def _step_totals(t: Target, steps: dict[str, dict[str, int]]) -> dict[str, int]:
    """Bytes held at each step, as `_peaks` counts them on the device (on the CPU, with the runtime)."""
    if t.device.type == "cpu":
        return {name: sum(parts.values()) + sum(_RUNTIME.values()) for name, parts in steps.items()}
    return {name: sum(v for k, v in parts.items() if k not in HOST_ONLY) for name, parts in steps.items()}


def _loading(t: Target) -> dict[str, int]:
    """The model is loaded on the host (with the loader's copies), then moved to the device."""
    return t.footprint.loading()


def _host_steps(t: Target, cal: Calibration, out_dtype: torch.dtype | None = None) -> dict[str, dict[str, int]]:
    """What the host alone holds, step by step, when the device is an accelerator."""
    host = {"loading": _loading(t), "writing block inputs": _writing_inputs(t, cal)}
    if t.offload == "disk":
        host.update(t.footprint.offload_host(out_dtype))
    if t.offload == "cpu":  # every step holds the blocks on the host
        blocks = {"blocks in host memory": t.shape.blocks_params * t.footprint.d}
        host = {name: {**parts, **blocks} for name, parts in host.items()}
    return host


def _writing_inputs(t: Target, cal: Calibration) -> dict[str, int]:
    """On an accelerator the store's block inputs and token ids are written from a host copy."""
    return {"block inputs (host copy)": t.footprint.block_inputs(cal) + t.footprint.token_ids(cal)}


def _base(t: Target, command: str, cal: Calibration | None) -> dict:
    s = t.shape
    without = entry_bytes(s, t.dtype, cal, False) if cal else 0
    with_gram = entry_bytes(s, t.dtype, cal, True) if cal else 0
    return {"command": command, "model": s.spec, "dtype": str(t.dtype).removeprefix("torch."), "device": str(t.device),
            "offload": t.offload, "params": s.params, "model_bytes": t.footprint.model, "n_blocks": s.n_blocks,
            "store_bytes_without_gram": without, "store_bytes_with_gram": with_gram}


def _notes(t: Target) -> list[str]:
    notes = ["activations, the loader's transient copies and a fixed runtime overhead are approximations "
             "(docs/dry-run.md); weights, block inputs, statistics, store sizes and pass counts are exact"]
    if not t.shape.traced:
        notes.append("input groups by the conservative rule (every Linear its own): statistics are an upper bound")
    if t.device.type != "cpu":
        notes.append("device peak is what torch allocates; the CUDA context (about 0.3-0.5 GiB) comes on top")
    if t.offload == "disk":
        notes.append("--offload disk: the weights outside the decoder blocks stay loaded, the blocks are read from "
                     "the checkpoint one at a time (the largest is counted)")
    if t.offload == "cpu":
        notes.append("--offload cpu: the decoder blocks stay in host memory and one at a time (the largest is "
                     "counted) is copied to the device")
    return notes


def estimate_calibrate(t: Target, cal: Calibration, gram: bool) -> Estimate:
    """A cold `calibrate` (a cache hit loads nothing and runs nothing)."""
    f, s = t.footprint, t.shape
    load = _loading(t)
    steps = {"loading": load, "calibrating": f.calibrating(cal, gram)}
    device_peak, host_peak, step, parts = _peaks(t, steps, _host_steps(t, cal))
    base = _base(t, "calibrate", cal)
    return Estimate(**base, device_peak_bytes=device_peak, host_peak_bytes=host_peak, peak_step=step, peak_parts=parts,
                    store_bytes=base["store_bytes_with_gram" if gram else "store_bytes_without_gram"], output_bytes=0,
                    model_passes=cal.nsamples, block_calls=1 + s.n_blocks * cal.nsamples, notes=_notes(t), step_bytes=_step_totals(t, steps),
                    work=_work({"calibrating": work.calibration(s, cal, 1 + s.n_blocks * cal.nsamples, gram)}))


def saved_bytes(t: Target, out_dtype: torch.dtype) -> int:
    """One saved model: the weights in `out_dtype` (tied ones once), headers, tokenizer and small files."""
    s = t.shape
    weights = s.params * element_size(out_dtype) + 8 + 120 * s.n_tensors  # header: about 120 bytes per tensor
    layers = sum(len(g.members) for block in s.groups for g in block)
    return weights + s.tokenizer_bytes + SAVED_FILES_BYTES + SAVED_BYTES_PER_LAYER * layers


def _pruning_steps(t: Target, cal: Calibration, recipes: Sequence[PruneRecipe], snapshot: bool,
                   costs: dict[str, Cost]) -> tuple[dict, int, int, int]:
    """(pruning and propagation steps, propagated store bytes, extra model passes, extra block calls);
    `snapshot`: a CPU copy of the dense Linear weights is held (several recipes from one load). Each step's
    work is added to `costs`."""
    f, s = t.footprint, t.shape
    copy = {"dense snapshot": s.block_linear_params * f.d} if snapshot else {}
    steps, store, passes, calls = {}, 0, 0, 0
    for r in recipes:
        steps[f"pruning {r.label()}"] = {**f.pruning(r.needs_gram, _work_bytes(r, s)), **copy}
        costs[f"pruning {r.label()}"] = work.pruning(s, r)
        if r.propagate == "pruned":
            steps[f"propagating {r.label()}"] = {**f.calibrating(cal, r.needs_gram), **copy}
            costs[f"propagating {r.label()}"] = work.propagation(s, cal, r)
            store += entry_bytes(s, t.dtype, cal, r.needs_gram, propagated=True)
            passes, calls = passes + 1, calls + 1 + s.n_blocks * 2 * cal.nsamples
    return steps, store, passes, calls


def estimate_prune(t: Target, cal: Calibration, recipes: Sequence[PruneRecipe], out_dtype: torch.dtype | None) -> Estimate:
    """A cold `prune` (calibrating first, only what the recipes read); out_dtype None: nothing is saved."""
    f = t.footprint
    calibrates = needs_calibration(recipes)  # magnitude alone reads no text
    gram, dense, dense_calls = _dense_calibration(t, cal, recipes) if calibrates else (False, 0, 0)
    load = _loading(t)
    steps = {"loading": load, **({"calibrating": f.calibrating(cal, gram)} if calibrates else {})}
    # several recipes prune from a dense snapshot; offloaded, each reads the dense blocks from the checkpoint
    several = len(recipes) > 1 and t.offload != "disk"
    costs = {"calibrating": work.calibration(t.shape, cal, dense_calls, gram)} if calibrates else {}
    pruning, propagated, passes, calls = _pruning_steps(t, cal, recipes, several, costs)
    steps.update(pruning)
    if t.offload == "disk":  # pruning and writing hold no file copy: the step that reads each block does
        steps["reading a block"] = f.reading_block(any(r.needs_gram for r in recipes))
    host = _host_steps(t, cal, out_dtype)
    if several:
        host["dense snapshot"] = {"dense snapshot": t.shape.block_linear_params * f.d}
    output = 0
    if out_dtype is not None:
        output = saved_bytes(t, out_dtype) * len(recipes)
        steps["saving"] = {**f.saving(out_dtype), **host.get("dense snapshot", {})}
        host.setdefault("saving", {"tensor being written": f.saving(out_dtype)["tensor being written"]})  # unless offloaded
        if t.offload == "disk":  # each block is written as it is finished
            steps["writing a block"] = f.writing_block(out_dtype, any(r.needs_gram for r in recipes))
    device_peak, host_peak, step, parts = _peaks(t, steps, host)
    base = _base(t, "prune", cal)
    return Estimate(**base, device_peak_bytes=device_peak, host_peak_bytes=host_peak, peak_step=step, peak_parts=parts,
                    store_bytes=dense + propagated, output_bytes=output,
                    model_passes=(cal.nsamples if calibrates else 0) + passes,
                    block_calls=dense_calls + calls, notes=_notes(t), work=_work(costs),
                    step_bytes=_step_totals(t, steps))


def _work_bytes(r: PruneRecipe, s: ModelShape) -> int:
    """The method's working memory at the largest layer (and the widest input), with the finishing step's when
    the recipe reconstructs or refines a score method's mask, and --permute's and --wbits' own."""
    work = type(r.method_obj).work_bytes(s.largest_linear, s.widest)
    out = max(1, s.largest_linear // max(s.widest, 1))  # a layer of the largest size at the widest input
    return work + finish_work_bytes(s.largest_linear, s.widest, r.reconstruct, r.swap_rounds) + r.extra_work_bytes(out, s.widest)


def _dense_calibration(t: Target, cal: Calibration, recipes: Sequence[PruneRecipe]) -> tuple[bool, int, int]:
    """(Gram matrices?, entry bytes, block calls) of the calibration a prune or grid runs: only what its
    recipes read (block 0's inputs alone when every recipe propagates pruned or reads no statistics)."""
    needs = calibration_needs(recipes)
    blocks = not needs["inputs_only"]
    entry = entry_bytes(t.shape, t.dtype, cal, needs["gram"], blocks_stored=blocks)
    return needs["gram"], entry, 1 + (t.shape.n_blocks * cal.nsamples if blocks else 0)


def _eval_passes(windows: Sequence[tuple[int, int]], batch: int) -> int:
    """windows: (seqlen, n_windows) per perplexity dataset."""
    return sum(math.ceil(n / batch) for _, n in windows)


def _blockwise_hidden(t: Target, windows: Sequence[tuple[int, int]], at_once: bool) -> dict[str, int]:
    """--offload disk measures perplexity block by block, holding every window's hidden states: one dataset
    at a time under eval, every dataset's at once under compare (each block is measured as it is pruned)."""
    if t.offload != "disk" or not windows:
        return {}
    tokens = [n * L for L, n in windows]
    return {"hidden states of every window": (sum(tokens) if at_once else max(tokens)) * t.shape.hidden * t.footprint.d}


def estimate_eval(t: Target, windows: Sequence[tuple[int, int]], batch: int, baseline: bool) -> Estimate:
    """Perplexity over `windows` ((seqlen, n_windows) per dataset); with `baseline` the dense model too,
    both held at once. Zero-shot tasks run through lm-eval and are not counted."""
    f = t.footprint
    load = _loading(t)
    seqlen = max((L for L, _ in windows), default=0)
    evaluating = f.evaluating(seqlen, batch) if windows else {"model": f.model}
    if t.offload == "disk" and windows:  # block by block (evaluation/blockwise.py), one window per call
        batch = 1
        evaluating = {**f.evaluating(seqlen, 1), **_blockwise_hidden(t, windows, at_once=False)}
    if baseline:
        evaluating = {**evaluating, "baseline model": f.model}
        load = {**load, "model being evaluated": f.model}
    steps = {"loading": load, "evaluating": evaluating}
    device_peak, host_peak, step, parts = _peaks(t, steps, {"loading": _loading(t)})
    passes = _eval_passes(windows, batch) * (2 if baseline else 1)
    base = _base(t, "eval", None)
    return Estimate(**base, device_peak_bytes=device_peak, host_peak_bytes=host_peak, peak_step=step, peak_parts=parts,
                    store_bytes=0, output_bytes=0, model_passes=passes, block_calls=passes * t.shape.n_blocks,
                    notes=_notes(t) + ["zero-shot tasks (lm-eval) are not counted"],
                    work=_work({"evaluating": work.evaluation(t.shape, windows) * (2 if baseline else 1)}),
                    step_bytes=_step_totals(t, steps))


def estimate_compare(t: Target, cal: Calibration, recipes: Sequence[PruneRecipe],
                     windows: Sequence[tuple[int, int]]) -> Estimate:
    """A cold grid: one calibration (none when no recipe reads statistics), every recipe pruned in memory,
    the dense model and every cell evaluated."""
    f = t.footprint
    calibrates = needs_calibration(recipes)  # a grid of magnitude alone reads no text
    gram, dense, dense_calls = _dense_calibration(t, cal, recipes) if calibrates else (False, 0, 0)
    load = _loading(t)
    # --offload disk: no snapshot (each cell reads the dense blocks again), each cell measured block by block
    snapshot = {} if t.offload == "disk" else {"dense snapshot": t.shape.block_linear_params * f.d}
    seqlen = max((L for L, _ in windows), default=0)
    steps = {"loading": load, **({"calibrating": f.calibrating(cal, gram)} if calibrates else {}),
             "evaluating": {**(f.evaluating(seqlen, 1) if windows else {"model": f.model}), **snapshot,
                            **_blockwise_hidden(t, windows, at_once=True)}}
    costs = {"calibrating": work.calibration(t.shape, cal, dense_calls, gram)} if calibrates else {}
    pruning, propagated, passes, calls = _pruning_steps(t, cal, recipes, t.offload != "disk", costs)
    steps.update(pruning)
    costs["evaluating"] = work.evaluation(t.shape, windows) * (len(recipes) + 1)
    host = {"loading": load, **({"writing block inputs": _writing_inputs(t, cal)} if calibrates else {}),
            "dense snapshot": snapshot}
    device_peak, host_peak, step, parts = _peaks(t, steps, host)
    evals = _eval_passes(windows, 1) * (len(recipes) + 1)
    base = _base(t, "compare", cal)
    return Estimate(**base, device_peak_bytes=device_peak, host_peak_bytes=host_peak, peak_step=step, peak_parts=parts,
                    store_bytes=dense + propagated, output_bytes=0,
                    model_passes=(cal.nsamples if calibrates else 0) + passes + evals,
                    block_calls=dense_calls + t.shape.n_blocks * evals + calls, work=_work(costs),
                    notes=_notes(t) + ["zero-shot tasks (lm-eval) are not counted; cells already in the results store are skipped"],
                    step_bytes=_step_totals(t, steps))
