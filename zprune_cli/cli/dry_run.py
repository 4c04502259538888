"""`--dry-run` on calibrate, prune, eval and compare: resolve the command as it would run (settings,
recipes, output folder, data, evaluation windows), read the model's config alone, and print what the
run will need. No weights are loaded and nothing is written (no store entry, folder or results row)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

from rich.markup import escape
from rich.table import Table

from zprune_cli.cli.common import Common
from zprune_cli.cli.output import emit_json, stdout_console
from zprune_cli.verbs.calibration import check_calibration, check_memory
from zprune_cli.cli.render import human_bytes
from zprune_cli.base.errors import ZpruneError, ZpruneUsageError, first_line
from zprune_cli.estimation.estimate import (Estimate, Target, estimate_calibrate, estimate_compare, estimate_eval,
                                            estimate_prune)
from zprune_cli.estimation.machine import accepted_offloads, checked, machine_memory, timed
from zprune_cli.estimation.shape import model_shape
from zprune_cli.estimation.throughput import measure_throughput
from zprune_cli.evaluation.run import EvalPlan, Evaluation, base_model_handle, provenance_of, refuse_whole_model_work
from zprune_cli.models.handle import ModelHandle
from zprune_cli.models.load import parse_dtype, source_dtype
from zprune_cli.verbs.pruning import output_paths
from zprune_cli.engine.recipe import PruneRecipe, needs_calibration
from zprune_cli.base.settings import Calibration


log = logging.getLogger("zprune")


def _target(handle: ModelHandle) -> Target:
    return Target(model_shape(handle.config, handle.source), handle.dtype, handle.device, handle.offload)


def _estimated(handle: ModelHandle, estimate: Callable[[Target], Estimate], whole_model_work: bool = False) -> Estimate:
    """The estimate for the handle's mode, checked against this machine's memory (with the --offload that
    fits when it does not) and timed at the rates this machine measures now."""
    modes = accepted_offloads(handle.source.gguf_file is not None, whole_model_work)
    target = _target(handle)
    e = checked(estimate, target, machine_memory(handle.device), modes)
    return timed(e, measure_throughput(handle.device, handle.dtype, target.shape.hidden, target.shape.widest))


def _check_calibration(c: Common, handle: ModelHandle, cal: Calibration) -> None:
    """What calibration checks before it loads the model: the text source, sizes against this machine, seqlen
    against the model, the windows against the text (refused or warned as the run would). A folder holding
    only config.json (a model not downloaded yet) has no tokenizer: its windows are left unchecked, said once."""
    try:
        handle.tokenizer
    except ZpruneError as e:
        log.info(f"{first_line(e)}: the calibration windows are not checked against the text")
        check_memory(handle, cal)
        return
    check_calibration(handle, cal, c.settings)


def _windows(c: Common, handle: ModelHandle, evaluation: Evaluation) -> list[tuple[int, int]]:
    """(seqlen, windows) per perplexity dataset: the text is tokenised (no weights), as the run would."""
    plan = EvalPlan(evaluation, c.settings.data_dir)
    seqlen = plan.seqlen_for(handle.config)
    return [(seqlen, int(plan.windows(source, handle.tokenizer, seqlen).shape[0])) for source in plan.sources]


def calibrate(c: Common, handle: ModelHandle, gram: bool) -> None:
    _check_calibration(c, handle, c.settings.calibration)
    show(c, _estimated(handle, lambda t: estimate_calibrate(t, c.settings.calibration, gram)))


def prune(c: Common, handle: ModelHandle, recipes: Sequence[PruneRecipe], out: Optional[Path], overwrite: bool,
          out_dtype: str) -> None:
    output_paths(out, [r.method for r in recipes], overwrite)  # an existing folder is refused as the run would
    if needs_calibration(recipes):  # magnitude alone reads no text: the run checks none
        _check_calibration(c, handle, c.settings.calibration)
    save = (parse_dtype(out_dtype) or source_dtype(handle.source) or handle.dtype) if out is not None else None
    show(c, _estimated(handle, lambda t: estimate_prune(t, c.settings.calibration, recipes, save)))


def evaluate(c: Common, handle: ModelHandle, evaluation: Evaluation, baseline: bool) -> None:
    if handle.offload == "disk":
        refuse_whole_model_work(evaluation)
    provenance = provenance_of(handle) if baseline else None
    if baseline and provenance is None:
        raise ZpruneUsageError(f"--baseline needs a zprune output folder (with zprune.json); {handle.source.spec} is not one")
    if provenance is not None:
        base_model_handle(provenance, Path(handle.source.location), c.settings, handle.offload)  # found, or refused as the run
    windows = _windows(c, handle, evaluation)
    show(c, _estimated(handle, lambda t: estimate_eval(t, windows, evaluation.batch_size, baseline), _whole(evaluation)))


def compare(c: Common, handle: ModelHandle, recipes: Sequence[PruneRecipe], evaluation: Evaluation,
            calibration: Calibration) -> None:
    if handle.offload == "disk":
        refuse_whole_model_work(evaluation)
    if needs_calibration(recipes):
        _check_calibration(c, handle, calibration)
    windows = _windows(c, handle, evaluation)
    show(c, _estimated(handle, lambda t: estimate_compare(t, calibration, recipes, windows), _whole(evaluation)))


def _whole(evaluation: Evaluation) -> bool:
    """Zero-shot tasks and --speed run the whole model per request (--offload disk refuses them)."""
    return bool(evaluation.tasks) or evaluation.speed


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
    if e.memory_check and not e.memory_check["fits"]:
        log.warning(memory_warning(e))
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
            ("block calls", f"{e.block_calls:,}", "decoder-block forwards run to the end"),
            *_time_rows(e)]
    for row in rows:
        table.add_row(*[escape(x) for x in row])
    console = stdout_console()
    console.print(table)
    for note in e.notes:
        console.print(escape(f"note: {note}"), highlight=False)


def _time_rows(e: Estimate) -> list[tuple[str, str, str]]:
    t = e.time_estimate
    if not t:
        return []
    rates = (f"{t['flops'] / 1e12:.3g} TFLOP at {t['flops_per_s'] / 1e9:.3g} GFLOP/s and {t['selected'] / 1e6:,.0f} M "
             f"weights selected at {t['selected_per_s'] / 1e6:.3g} M/s, both measured now")
    return [("wall time (estimate)", human_seconds(t["seconds"]), rates),
            ("  not counted", "", t["not_counted"])]


def human_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"~{seconds:.2g} s" if seconds < 10 else f"~{seconds:.0f} s"
    if seconds < 3600:
        return f"~{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"~{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"


def memory_warning(e: Estimate) -> str:
    """One line: which peak exceeds this machine's memory, and the --offload that fits (or that even it does not)."""
    m = e.memory_check
    device = m["device_memory_bytes"] is not None and e.device_peak_bytes > m["device_memory_bytes"]
    where, peak, total = (("device", e.device_peak_bytes, m["device_memory_bytes"]) if device
                          else ("host", e.host_peak_bytes, m["host_memory_bytes"]))
    line = f"the estimated peak {where} memory ({human_bytes(peak)}) exceeds this machine's {human_bytes(total)}"
    if m["offload"] is None:
        return line + ("" if e.offload == "disk" else "; no --offload mode this run accepts would spare it")
    other = f"estimated peak {human_bytes(m['offload_host_peak_bytes'])} host"
    if m["device_memory_bytes"] is not None:
        other += f", {human_bytes(m['offload_device_peak_bytes'])} device"
    if m["offload_fits"]:
        return f"{line}; --offload {m['offload']} would fit ({other})"
    return f"{line}; even --offload {m['offload']} would not fit ({other})"
