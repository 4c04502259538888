"""`--dry-run` on calibrate, prune, eval and compare: resolve the command as it would run (settings,
recipes, output folder, data, evaluation windows), read the model's config alone, and print what the
run will need. No weights are loaded and nothing is written (no store entry, folder or results row)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from rich.markup import escape
from rich.table import Table

from zprune_cli.cli.common import Common
from zprune_cli.cli.output import emit_json, stdout_console
from zprune_cli.calibration import check_calibration
from zprune_cli.cli.render import human_bytes
from zprune_cli.errors import ZpruneUsageError
from zprune_cli.estimation.estimate import (Estimate, Target, estimate_calibrate, estimate_compare, estimate_eval,
                                            estimate_prune)
from zprune_cli.estimation.shape import model_shape
from zprune_cli.evaluation.run import EvalPlan, Evaluation, base_model_handle, provenance_of, refuse_whole_model_work
from zprune_cli.models.handle import ModelHandle
from zprune_cli.models.load import parse_dtype, source_dtype
from zprune_cli.pruning import output_paths
from zprune_cli.recipe import PruneRecipe, needs_calibration
from zprune_cli.settings import Calibration


def _target(handle: ModelHandle) -> Target:
    return Target(model_shape(handle.config, handle.source), handle.dtype, handle.device, handle.offload)


def _check_calibration(c: Common, handle: ModelHandle, cal: Calibration) -> None:
    """What calibration checks before it loads the model: the text source, sizes against this machine, seqlen
    against the model, the windows against the text (refused or warned as the run would)."""
    check_calibration(handle, cal, c.settings)


def _windows(c: Common, handle: ModelHandle, evaluation: Evaluation) -> list[tuple[int, int]]:
    """(seqlen, windows) per perplexity dataset: the text is tokenised (no weights), as the run would."""
    plan = EvalPlan(evaluation, c.settings.data_dir)
    seqlen = plan.seqlen_for(handle.config)
    return [(seqlen, int(plan.windows(source, handle.tokenizer, seqlen).shape[0])) for source in plan.sources]


def calibrate(c: Common, handle: ModelHandle, gram: bool) -> None:
    _check_calibration(c, handle, c.settings.calibration)
    show(c, estimate_calibrate(_target(handle), c.settings.calibration, gram))


def prune(c: Common, handle: ModelHandle, recipes: Sequence[PruneRecipe], out: Optional[Path], overwrite: bool,
          out_dtype: str) -> None:
    output_paths(out, [r.method for r in recipes], overwrite)  # an existing folder is refused as the run would
    if needs_calibration(recipes):  # magnitude alone reads no text, as the run
        _check_calibration(c, handle, c.settings.calibration)
    save = (parse_dtype(out_dtype) or source_dtype(handle.source) or handle.dtype) if out is not None else None
    show(c, estimate_prune(_target(handle), c.settings.calibration, recipes, save))


def evaluate(c: Common, handle: ModelHandle, evaluation: Evaluation, baseline: bool) -> None:
    if handle.offload == "disk":
        refuse_whole_model_work(evaluation)
    provenance = provenance_of(handle) if baseline else None
    if baseline and provenance is None:
        raise ZpruneUsageError(f"--baseline needs a zprune output folder (with zprune.json); {handle.source.spec} is not one")
    if provenance is not None:
        base_model_handle(provenance, Path(handle.source.location), c.settings, handle.offload)  # found, or refused as the run
    show(c, estimate_eval(_target(handle), _windows(c, handle, evaluation), evaluation.batch_size, baseline))


def compare(c: Common, handle: ModelHandle, recipes: Sequence[PruneRecipe], evaluation: Evaluation,
            calibration: Calibration) -> None:
    if handle.offload == "disk":
        refuse_whole_model_work(evaluation)
    _check_calibration(c, handle, calibration)
    show(c, estimate_compare(_target(handle), calibration, recipes, _windows(c, handle, evaluation)))


def _parts(parts: dict[str, int]) -> str:
    return " + ".join(f"{name} {human_bytes(size)}" for name, size in parts.items())


def _mode(e: Estimate) -> tuple[str, str, str]:
    """The row naming the memory mode the estimate is for."""
    if e.offload == "disk":
        return ("offload", "disk", f"decoder blocks read from the checkpoint one at a time (of {e.n_blocks})")
    if e.offload == "cpu":
        return ("offload", "cpu", f"decoder blocks in host memory, copied to the device one at a time (of {e.n_blocks})")
    return ("offload", "none", "the whole model in memory")


def show(c: Common, e: Estimate) -> None:
    """The estimate as a table on stdout, or as JSON with --json."""
    if c.json:
        emit_json({"dry_run": True, **e.as_dict()})
        return
    mode = f", --offload {e.offload}" if e.offload != "none" else ""
    table = Table(title=escape(f"dry run: zprune {e.command} {e.model} ({e.dtype} on {e.device}{mode}); no weights "
                               "loaded, nothing written"), title_justify="left")
    for name, justify in (("", "left"), ("estimate", "right"), ("detail", "left")):
        table.add_column(name, justify=justify)
    same = " (the device is the host)" if e.device == "cpu" else ""
    rows = [("parameters", f"{e.params / 1e6:.1f} M", f"{human_bytes(e.model_bytes)} as {e.dtype}, {e.n_blocks} blocks"),
            _mode(e),
            ("peak device memory", human_bytes(e.device_peak_bytes), f"while {e.peak_step}{same}"),
            ("peak host memory", human_bytes(e.host_peak_bytes), ""),
            ("  peak made of", "", _parts(e.peak_parts)),
            ("statistics store", human_bytes(e.store_bytes), "written by this run (none when cached)"),
            ("  entry without Gram", human_bytes(e.store_bytes_without_gram), ""),
            ("  entry with Gram", human_bytes(e.store_bytes_with_gram), ""),
            ("output disk", human_bytes(e.output_bytes), "saved models" if e.output_bytes else "nothing saved"),
            ("whole-model passes", f"{e.model_passes:,}", "calibration passes stop at block 0 after the first"),
            ("block calls", f"{e.block_calls:,}", "decoder-block forwards run to the end")]
    for row in rows:
        table.add_row(*[escape(x) for x in row])
    console = stdout_console()
    console.print(table)
    for note in e.notes:
        console.print(escape(f"note: {note}"), highlight=False)
