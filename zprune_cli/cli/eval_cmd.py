from __future__ import annotations

import math
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from zprune_cli.cli import dry_run as dry
from zprune_cli.cli import options as opt
from zprune_cli.cli.app import app
from zprune_cli.cli.common import aliased, common, model_handle
from zprune_cli.cli.output import emit_json, stdout_console
from zprune_cli.evaluation.run import EvalReport, Evaluation, Metric, evaluate
from zprune_cli.records.intervals import accuracy_interval, ppl_interval
from zprune_cli.records.leaderboard_cells import sparsity_text


@app.command("eval", cls=aliased(data="eval", seqlen="eval_seqlen", l="eval_seqlen"))
def eval_command(
    ctx: typer.Context,
    target: opt.Model = opt.DEFAULTS["model"],
    data: Annotated[Optional[str], typer.Option("--eval", help="Perplexity text, comma-separated: wikitext2, c4, ptb, wikitext2-sample (370 rows of the test set shipped with zprune: no network needed), or a local file; 'none' skips it (default wikitext2, offline without a local copy the shipped wikitext2-sample, said on stderr; none when --tasks is given).")] = None,
    seqlen: Annotated[Optional[int], typer.Option("--eval-seqlen", help="Perplexity window length (default: min(2048, the model's maximum)).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Windows (or lm-eval requests) per forward pass.")] = 1,
    max_windows: Annotated[Optional[int], typer.Option("--max-windows", help="Evaluate only the first N windows.")] = None,
    tasks: Annotated[Optional[str], typer.Option("--tasks", help="Zero-shot tasks through lm-eval, comma-separated (offline: arc_easy_local, piqa_local, ...).")] = None,
    tasks_dir: Annotated[Optional[str], typer.Option("--tasks-dir", help="Folder of extra lm-eval YAML tasks.")] = None,
    num_fewshot: Annotated[int, typer.Option("--num-fewshot", help="Few-shot examples per question.")] = 0,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Questions per task (for quick checks).")] = None,
    speed: Annotated[bool, typer.Option("--speed", help="Time forward throughput (and 2:4 sparse kernels on CUDA).")] = False,
    baseline: Annotated[bool, typer.Option("--baseline", help="Also evaluate the dense model a zprune output was pruned from.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Measure again even when the results store holds this protocol's numbers.")] = False,
    data_dir: opt.DataDir = None,
    revision: opt.Revision = None,
    trust_remote_code: opt.TrustRemoteCode = False,
    cache_dir: opt.CacheDir = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    offload: opt.Offload = "none",
    quiet: opt.Quiet = False,
    json: opt.Json = False,
    dry_run: opt.DryRun = False,
) -> None:
    """Perplexity (the papers' protocol), zero-shot accuracy and sparsity; every number is stored.

    \b
    Examples:
      zprune eval smollm2-135m-zpruner-50 --eval wikitext2 --max-windows 32 --baseline
      zprune eval smollm2-135m --tasks arc_easy_local,piqa_local --limit 200
      zprune eval runs/zp50 --eval c4,wikitext2 --eval-seqlen 2048 --batch-size 4
      zprune eval runs/llama-70b-50 --offload disk   # one decoder block in memory at a time
    """
    c = common(ctx, cache_dir, device, dtype, quiet, json, data_dir=data_dir)
    if data is None and tasks:  # --tasks alone measures the tasks only: a full perplexity run is minutes to hours
        data = "none"
    evaluation = Evaluation(data=() if data == "none" else data, seqlen=seqlen, batch_size=batch_size,
                            max_windows=max_windows, tasks=tasks or (), tasks_dir=tasks_dir, num_fewshot=num_fewshot,
                            limit=limit, speed=speed)
    handle = model_handle(target, c, revision, trust_remote_code, offload, dry_run)
    if dry_run:
        return dry.evaluate(c, handle, evaluation, baseline)
    report = evaluate(handle, evaluation, baseline=baseline, force=force, settings=c.settings, progress=c.progress)
    if c.json:
        emit_json(report.as_dict())
        return
    stdout_console().print(metrics_table(report))


def _fmt(value: float, metric: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if metric.startswith("ppl"):
        return f"{value:.3f}"
    if metric == "sparsity":
        return sparsity_text(value)
    if metric.endswith("bytes"):
        from zprune_cli.cli.render import human_bytes

        return human_bytes(value)
    return f"{value:.4f}"


def _protocol(metric: Metric) -> str:
    p = {**metric.protocol.as_dict(), **metric.detail}
    if metric.name.startswith("ppl"):
        return f"{p['dataset']} {p['split']}, seqlen {p['seqlen']}, {p['n_windows']} windows, {p['n_tokens']} tokens"
    if "task" in p:
        return f"{p['n']} questions, {p['num_fewshot']}-shot"
    if "unavailable" in p:
        return p["unavailable"]
    return ", ".join(f"{k} {v}" for k, v in p.items())


def _interval(m: Metric) -> tuple[float, float] | None:
    """A perplexity's 95% interval from its windows, an accuracy's from lm-eval's standard error (records/intervals.py)."""
    nlls, stderr = m.detail.get("window_nll"), m.detail.get("stderr")
    if m.name.startswith("ppl:") and nlls and len(nlls) >= 2:
        return ppl_interval(nlls)
    if m.name.startswith("acc") and isinstance(stderr, float) and m.value is not None:
        return accuracy_interval(m.value, stderr)
    return None


def metrics_table(report: EvalReport) -> Table:
    base = {m.name: m.value for m in report.baseline.metrics} if report.baseline else {}
    title = escape(report.target)
    if report.provenance:
        p = report.provenance
        title += escape(f"  ({p['method']} {p['pattern']} from {p['base_model']}, sparsity {sparsity_text(p['overall_sparsity'])}, recipe {p['recipe']})")
    if report.reused:
        title += " (from the results store; --force measures again)"
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    errors = any(isinstance(m.detail.get("stderr"), float) for m in report.metrics)
    if errors:
        table.add_column("±", justify="right")  # lm-eval's standard error, not part of the protocol
    intervals = {m.name: _interval(m) for m in report.metrics}
    if any(intervals.values()):
        table.add_column("95% interval", justify="right")
    if base:
        table.add_column("dense", justify="right")
        table.add_column("change", justify="right")
    table.add_column("protocol")
    for m in report.metrics:
        row = [m.name, _fmt(m.value, m.name)]
        if errors:
            stderr = m.detail.get("stderr")
            row.append(f"{stderr:.4f}" if isinstance(stderr, float) else "")
        if any(intervals.values()):
            low_high = intervals[m.name]
            row.append(f"[{_fmt(low_high[0], m.name)}, {_fmt(low_high[1], m.name)}]" if low_high else "")
        if base:
            b = base.get(m.name)
            quality = m.name.startswith(("ppl", "acc"))
            change = f"{(m.value / b - 1):+.1%}" if (b and quality) else ""
            row += [_fmt(b, m.name) if b is not None else "", change]
        table.add_row(*[escape(str(v)) for v in row], escape(_protocol(m)))
    return table
