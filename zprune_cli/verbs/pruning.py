"""`prune`: statistics from the store (calibrating first when missing), prune by recipe, optionally save."""

from __future__ import annotations

import logging
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from zprune_cli.base import distributed
from zprune_cli.base.lazy import lazy
from zprune_cli.verbs.calibration import CalibrationResult, calibrate
from zprune_cli.base.errors import ZpruneError, ZpruneUsageError, os_error_of, translate
from zprune_cli.rendering.model_card import model_card
from zprune_cli.formats.grids import write_grids
from zprune_cli.formats.masks import checked_masks, zero_masked
from zprune_cli.base.machine import human_bytes
from zprune_cli.models.blocks import block_linears, find_blocks, stored_tensor_name
from zprune_cli.models.handle import ModelHandle
from zprune_cli.models.host_memory import checkpoint_params
from zprune_cli.models.load import parse_dtype, source_dtype
from zprune_cli.models.offload import on_done
from zprune_cli.models.save import save_model
from zprune_cli.models.stream_save import StreamingSave
from zprune_cli.models.walk import walk_blocks
from zprune_cli.engine.pipeline import DenseSnapshot, PruneReport, prune_in_memory
from zprune_cli.base.progress import Progress, ensure
from zprune_cli.records.provenance import BaseModel, CalibrationRecord, Provenance, RecipeRecord
from zprune_cli.engine.recipe import PruneRecipe, calibration_needs, needs_calibration, parse_method_list, recipe_of
from zprune_cli.base.settings import Calibration, Settings
from zprune_cli.base.settings import resolve as resolve_settings
from zprune_cli.base.sparsity import BlockwiseSparsity, SparsityCount, count_zeros
from zprune_cli.base.staging import staged_folder
from zprune_cli.engine.resume import ResumePoint
from zprune_cli.verbs.partial import PartialOutput, staged_bytes

torch = lazy("torch")
nn = lazy("torch.nn")

log = logging.getLogger("zprune")


@dataclass
class PruneOutcome:
    report: PruneReport
    calibration: CalibrationResult | None  # None: the recipe read no calibration text (magnitude)
    out: Path | None
    provenance: Provenance

    def summary(self) -> dict:
        return {
            **self.report.recipe.as_dict(),
            "recipe_digest": self.report.recipe.digest,
            "overall_sparsity": round(self.report.overall, 6),
            "stats_key": self.calibration.calibration_key if self.calibration else None,
            "out": str(self.out) if self.out else None,
            "seconds": round(self.report.seconds, 3),
            "layers": {k: round(v, 6) for k, v in self.report.layers.items()},
            # ||W X - W' X||^2 / ||W X||^2 per layer, where the statistics held a Gram (SparseGPT, ALPS, --reconstruct)
            **({"layer_errors": {k: float(f"{v:.6g}") for k, v in self.report.errors.items()}} if self.report.errors else {}),
            **({"nm_layout": dict(self.report.nm_layout)} if self.report.recipe.permute != "none" else {}),
        }


def as_recipes(recipe: PruneRecipe | Sequence[PruneRecipe] | str | None) -> list[PruneRecipe]:
    """One recipe, several, or method names ('wanda,ria': each with the default settings)."""
    if recipe is None:
        return [PruneRecipe()]
    if isinstance(recipe, PruneRecipe):
        return [recipe]
    if isinstance(recipe, str):
        return [PruneRecipe(method=name) for name in parse_method_list(recipe)]
    recipes = list(recipe)
    if not recipes or not all(isinstance(r, PruneRecipe) for r in recipes):
        raise ZpruneUsageError("prune takes a PruneRecipe, a list of them, or method names")
    if len({r.digest for r in recipes}) != len(recipes):
        raise ZpruneUsageError("the same recipe is given twice")
    return recipes


def prune(
    model: str | ModelHandle = "smollm2-135m",
    recipe: PruneRecipe | Sequence[PruneRecipe] | str | None = None,
    *,
    calibration: Calibration | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    out_dtype: str = "auto",
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> list[PruneOutcome]:
    """Prune `model` with each recipe from one load of weights and statistics.

    With `out`, each pruned model is saved there (one recipe) or under out/<method> (several), its
    weights in `out_dtype` ("auto": the precision the model was published in, bfloat16 for GGUF).
    """
    settings = resolve_settings(settings)
    progress = ensure(progress)
    recipes = as_recipes(recipe)
    outs = output_paths(out, [r.method for r in recipes], overwrite)
    handle = ModelHandle.of(model, settings, progress)
    handle.check_memory()  # a model too large to load whole is refused before a lock or a file is made
    save_dtype = parse_dtype(out_dtype) or source_dtype(handle.source)
    check_output_space(handle, [o for o in outs if o is not None], save_dtype)
    result = None  # magnitude alone reads no text: nothing to load, tokenise or store (torchrun still shards it)
    if needs_calibration(recipes) or distributed.active():
        result = calibrate(handle, calibration, **calibration_needs(recipes), settings=settings, progress=progress)
    if handle.offload == "disk":  # each recipe reads the dense blocks from the checkpoint; each block saved when finished
        return [prune_streaming(handle, r, result, target, overwrite, progress, save_dtype) for r, target in zip(recipes, outs)]
    snapshot = DenseSnapshot(handle.model) if len(recipes) > 1 else None
    outcomes = []
    for r, target in zip(recipes, outs):
        if snapshot is not None:
            snapshot.restore()
        report = prune_in_memory(handle.model, result and result.entry, r, progress)
        provenance = make_provenance(handle, report, result)
        if target is not None:
            provenance = save_pruned(handle, provenance, target, overwrite, progress, save_dtype, report.grids)
        outcomes.append(PruneOutcome(report, result, target, provenance))
    return outcomes


def prune_streaming(handle: ModelHandle, recipe: PruneRecipe, result: CalibrationResult | None, out: Path | None,
                    overwrite: bool, progress: Progress, dtype: torch.dtype | None) -> PruneOutcome:
    """Prune an offloaded model; with `out`, each block goes to the output folder as it is finished, and a
    stopped run's finished blocks are kept for the same command to resume from (`verbs.partial`).
    The pruned weights live only there: the handle's blocks are read from the dense checkpoint again."""
    if out is not None and not distributed.active():  # under torchrun every rank would have to resume alike
        return _prune_resumable(handle, recipe, result, out, overwrite, progress, dtype)
    with _streamed(handle, out, overwrite, progress, dtype) as stream:
        report = prune_in_memory(handle.model, result and result.entry, recipe, progress)
        stream.provenance, stream.grids = make_provenance(handle, report, result), report.grids
    return PruneOutcome(report, result, out, stream.provenance)


def _prune_resumable(handle: ModelHandle, recipe: PruneRecipe, result: CalibrationResult | None, out: Path,
                     overwrite: bool, progress: Progress, dtype: torch.dtype | None) -> PruneOutcome:
    """prune_streaming into a partial output that outlives the process: each finished block recorded, a
    recorded run of the same job resumed, the folder renamed to `out` when complete."""
    job = {"model": handle.source.fingerprint, "recipe": recipe.digest, "stats": result.calibration_key if result else None,
           "dtype": str(dtype), "blocks": len(find_blocks(handle.model)[1])}
    partial = PartialOutput(out, job)
    point = partial.open()
    total = job["blocks"]
    if point.blocks:
        log.info(f"resuming the prune left in {partial.folder}: {point.blocks} of {total} blocks were finished")
    done = [point.blocks]
    try:
        saver = StreamingSave(handle.model, partial.folder, dtype, point.saved)

        def record(reached: ResumePoint) -> None:
            partial.record(replace(reached, saved=saver.state()))
            done[0] = reached.blocks

        with on_done(handle.model, saver):
            report = prune_in_memory(handle.model, result and result.entry, recipe, progress, point, record)
        provenance = _finish_streamed(handle, saver, partial.folder, out, make_provenance(handle, report, result),
                                      report.grids, progress, dtype)
        partial.publish(overwrite)
    except BaseException as exc:
        io_error = os_error_of(exc)  # safetensors reports a full disk as its own error, not an OSError
        # a stop (Ctrl-C, the CLI's SIGTERM: BaseExceptions that are not errors) or a write error keeps the blocks
        kept = done[0] > 0 and (not isinstance(exc, Exception) or io_error is not None)
        partial.release(kept)
        resumable = (f"{done[0]} of {total} blocks finished are kept in {partial.folder}, and the same command "
                     f"resumes from block {done[0]} (remove that folder to start over)")
        if io_error is None:
            if kept:
                log.warning(f"the prune stopped: {resumable}")
            raise
        raise ZpruneError(f"writing {out} failed: {translate(io_error)}{'; ' + resumable if kept else ''}") from None
    return PruneOutcome(report, result, out, provenance)


@dataclass
class _Stream:
    provenance: Provenance | None = None  # set inside the block: written beside the weights when it ends
    grids: dict | None = None  # the quantization grids (--wbits), written beside them too


@contextmanager
def _streamed(handle: ModelHandle, out: Path | None, overwrite: bool, progress: Progress, dtype: torch.dtype | None):
    """Inside, every block an offloaded run finishes (`held(..., done=True)`) is written to `out` at once;
    at the end, the rest of the model, config, tokenizer, the record set on the yielded object and its card."""
    stream = _Stream()
    if out is None:
        yield stream
        return
    with staged_folder(out, overwrite) as tmp:
        saver = StreamingSave(handle.model, tmp, dtype)
        with on_done(handle.model, saver):
            yield stream
        stream.provenance = _finish_streamed(handle, saver, tmp, out, stream.provenance, stream.grids, progress, dtype)


def _finish_streamed(handle: ModelHandle, saver: StreamingSave, folder: Path, out: Path, provenance: Provenance,
                     grids: dict | None, progress: Progress, dtype: torch.dtype | None) -> Provenance:
    """After the last block: the rest of the model, config and tokenizer, the quantization grids, the record (its
    dtype the saved one) and the card, into `folder` (to become `out`); returns the record written."""
    with progress.task(f"Saving to {out}", None):
        saver.finish(handle.tokenizer)
    provenance = replace(provenance, dtype=str(dtype or handle.dtype).removeprefix("torch."))
    write_quant_grids(folder, grids, provenance)
    provenance.write(folder)
    (folder / "README.md").write_text(model_card(provenance, "hf", out.name))
    return provenance


def check_output_space(handle: ModelHandle, outs: list[Path], dtype: torch.dtype | None) -> None:
    """Refuse before any work an output the disk cannot hold: the weights in the output dtype, counted from a
    local checkpoint's safetensors headers (a Llama-2-7B output is 12.6 GiB; on a disk with 3 GiB free the
    prune failed minutes in, after the first blocks were written). Unknown sizes (GGUF, hub) are not checked."""
    params = checkpoint_params(Path(handle.source.location)) if handle.source.is_local and outs else None
    if not params:
        return
    need = params * torch.empty((), dtype=dtype or handle.dtype).element_size()
    for parent in {_existing_parent(out) for out in outs}:
        # a stopped run's finished blocks are on the disk already (resumed, or freed if another job's)
        wanted = sum(max(0, need - staged_bytes(out)) for out in outs if _existing_parent(out) == parent)
        free = shutil.disk_usage(parent).free
        if wanted > free:
            raise ZpruneError(f"the pruned model needs {human_bytes(wanted)} in {parent} and it has "
                              f"{human_bytes(free)} free; free space or point --out elsewhere")


def _existing_parent(path: Path) -> Path:
    path = path.expanduser().resolve()
    while not path.exists():
        path = path.parent
    return path


def make_provenance(handle: ModelHandle, report: PruneReport, calibration: CalibrationResult | None) -> Provenance:
    """The one place a pruned model's record is built (prune and every compare cell); no calibration: none read."""
    record = None
    if calibration is not None:
        s = calibration.entry.manifest.settings
        record = CalibrationRecord(s["data"], s["nsamples"], s["seqlen"], s["seed"], s["dtype"], s.get("data_description", ""))
    return Provenance(
        base_model=BaseModel.of(handle.source, content=True), recipe=report.recipe.record(),
        pruned_layers={k: round(v, 6) for k, v in report.layers.items()}, overall_sparsity=round(report.overall, 6),
        stats_key=calibration.calibration_key if calibration else None, calibration=record, seconds=round(report.seconds, 3),
        nm_layout=dict(report.nm_layout) if report.recipe.permute != "none" else None,
    )


@dataclass
class MaskOutcome:
    layers: int
    out: Path | None
    provenance: Provenance

    def summary(self) -> dict:
        return {"masks_applied_layers": self.layers, "overall_sparsity": self.provenance.overall_sparsity,
                "out": str(self.out) if self.out else None, "method": self.provenance.recipe.method}


def prune_with_masks(
    model: str | ModelHandle,
    masks: str | Path,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> MaskOutcome:
    """Apply masks from `zprune export --format masks` to the same base model (no statistics needed);
    offloaded, block by block, each block saved as it is masked."""
    progress = ensure(progress)
    [target] = output_paths(out, ["masks"], overwrite)
    handle = ModelHandle.of(model, settings, progress)
    by_owner, manifest = checked_masks(handle.model, masks, handle.source.fingerprint)  # before any change
    source = manifest.get("settings") or {}
    if not isinstance(source.get("recipe"), dict):
        raise ZpruneUsageError(f"{masks} was exported by an older zprune and names no recipe; export the masks again")
    dtype = source_dtype(handle.source)
    if handle.offload == "disk":
        with _streamed(handle, target, overwrite, progress, dtype) as stream:
            stream.provenance = _masks_provenance(handle, source, masks, _mask_blocks(handle.model, by_owner))
        return MaskOutcome(len(by_owner), target, stream.provenance)
    zero_masked(handle.model, by_owner)
    provenance = _masks_provenance(handle, source, masks, count_zeros(_masked_layers(handle.model, by_owner)))
    if target is not None:
        provenance = save_pruned(handle, provenance, target, overwrite, progress, dtype)
    return MaskOutcome(len(by_owner), target, provenance)


def _masked_layers(model: nn.Module, by_owner: dict) -> dict[str, nn.Module]:
    """The pruned layers whose tensors the masks name: Linear modules, or fused expert tensors, counted expert
    by expert (names only are read: an offloaded model's blocks may still be on disk)."""
    return {name: layer for name, layer in block_linears(model).items()
            if stored_tensor_name(name, layer).removesuffix(".weight") in by_owner}


def _mask_blocks(model: nn.Module, by_owner: dict) -> dict:
    """Zero each block's masked weights while it is read from disk, count them, hand the block on."""
    blocks_name, _ = find_blocks(model)
    zero_masked(model, {m: v for m, v in by_owner.items() if not m.startswith(f"{blocks_name}.")})
    counting = BlockwiseSparsity(_masked_layers(model, by_owner))

    def mask_block(index: int, prefix: str, block: nn.Module, _) -> None:
        zero_masked(model, {m: v for m, v in by_owner.items() if m.startswith(prefix)})
        counting(index, prefix, block)

    walk_blocks(model, mask_block, done=True)
    return counting.result()


def _masks_provenance(handle: ModelHandle, source: dict, masks, counted: SparsityCount) -> Provenance:
    calibration = source.get("calibration")
    return Provenance(
        base_model=BaseModel.of(handle.source, content=True), recipe=recipe_of(RecipeRecord(source["recipe"], None)).record(),
        pruned_layers={k: round(v.sparsity, 6) for k, v in counted.layers.items()},
        overall_sparsity=round(counted.sparsity, 6), stats_key=source.get("stats_key"),
        calibration=CalibrationRecord(**calibration) if calibration else None, masks=str(Path(masks).resolve()),
    )


def default_output(model: str, recipes: list[PruneRecipe]) -> Path:
    """Where the CLI saves when no --out is given: ./<model>-<method>-<sparsity %> ('-2of4' for N:M), or
    ./<model>-pruned/<method> for several methods."""
    base = Path(model.rstrip("/")).name
    base = base[: -len(".gguf")] if base.endswith(".gguf") else base
    if len(recipes) > 1:
        return Path(f"{base}-pruned")
    r = recipes[0]
    amount = r.pattern.replace(":", "of") if r.pattern != "unstructured" else f"{round(100 * r.sparsity):d}"
    bits = f"-w{r.wbits}" if r.quant is not None else ""
    return Path(f"{base}-{r.method}-{amount}{bits}")


def output_paths(out, methods: list[str], overwrite: bool) -> list[Path | None]:
    if out is None:
        return [None] * len(methods)
    out = Path(out).expanduser()
    paths = [out] if len(methods) == 1 else [out / m for m in methods]
    if len(set(paths)) != len(paths):
        raise ZpruneUsageError("two recipes of the same method cannot share --out; save them one at a time")
    for path in paths:  # refuse before any work is done, not after an hour of pruning
        if path.exists() and not overwrite:
            raise ZpruneUsageError(f"output {path} already exists; pass --overwrite to replace it")
    return paths if distributed.is_main() else [None] * len(paths)  # under torchrun rank 0 alone saves


def save_pruned(handle: ModelHandle, provenance: Provenance, out: Path, overwrite: bool, progress: Progress,
                dtype: torch.dtype | None = None, grids: dict | None = None) -> Provenance:
    """Save the model in memory as a folder plain transformers loads, weights in `dtype` (None: as they
    are), with the quantization `grids` of a --wbits recipe beside them; returns the record written too."""
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise ZpruneUsageError(f"output {out} already exists; pass --overwrite to replace it")
    stored = str(dtype or next(handle.model.parameters()).dtype).removeprefix("torch.")
    provenance = replace(provenance, dtype=stored)
    with progress.task(f"Saving to {out}", None), staged_folder(out, overwrite) as tmp:
        save_model(handle.model, handle.tokenizer, tmp, dtype)
        write_quant_grids(tmp, grids, provenance)
        provenance.write(tmp)
        (tmp / "README.md").write_text(model_card(provenance, "hf", out.name))
    return provenance


def write_quant_grids(folder: Path, grids: dict | None, provenance: Provenance) -> None:
    """formats/grids.py's file, for a recipe that quantized (its weights are saved dequantized)."""
    if grids:
        write_grids(folder, {name: (g.scale, g.zero) for name, g in grids.items()}, provenance.safetensors_metadata())
