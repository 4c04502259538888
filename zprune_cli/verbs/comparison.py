"""`compare`: a grid of recipes from one calibration and one load of the weights.

Every cell is a PruneRecipe, pruned in memory from a snapshot of the dense weights, evaluated with one
EvalPlan (windows tokenised once), and recorded in the results store as soon as it finishes (one
transaction per cell), so a re-run skips finished cells and Ctrl-C loses only the cell in progress.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from zprune_cli.verbs.calibration import calibrate
from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.evaluation.run import (EvalPlan, Evaluation, expected_protocols, measure, measure_while_pruning, record,
                                       refuse_whole_model_work)
from zprune_cli.verbs.grid import Grid, grid_recipes  # noqa: F401  (grid_recipes moved there; still importable from here)
from zprune_cli.records.leaderboard_cells import LeaderboardRow, known_metrics  # noqa: F401  (known_metrics: still importable from here)
from zprune_cli.models.handle import ModelHandle
from zprune_cli.engine.pipeline import DenseSnapshot, prune_in_memory
from zprune_cli.base.progress import Progress, ensure
from zprune_cli.records.protocol import Protocol
from zprune_cli.verbs.pruning import make_provenance
from zprune_cli.records.ranking import add_intervals, mark_best
from zprune_cli.engine.recipe import PruneRecipe, calibration_needs, needs_calibration
from zprune_cli.records.results import ResultRow, ResultsStore, results_path
from zprune_cli.base.settings import Calibration, Settings
from zprune_cli.base.settings import resolve as resolve_settings


@dataclass
class CompareOutcome:
    computed: int  # cells pruned and evaluated in this run (the dense row included)
    skipped: int  # cells found in the results store
    calibration_key: str | None  # None: no recipe of the grid reads calibration text (magnitude)
    rows: list[LeaderboardRow]  # the whole protocol group: this grid's cells and any comparable ones stored before
    seconds: float
    recipes: list[str] = dataclasses.field(default_factory=list)  # digests of this grid's own cells


def compare(
    model: str | ModelHandle,
    recipes: Sequence[PruneRecipe] | None = None,
    evaluation: Evaluation | None = None,
    *,
    grid: Grid | None = None,
    calibration: Calibration | None = None,
    force: bool = False,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> CompareOutcome:
    """Prune and evaluate every recipe (plus the dense model) from one calibration; the leaderboard rows.

    The cells: a `grid` (its recipes, evaluation and calibration), or `recipes` with `evaluation` and
    `calibration` (None: the settings' calibration)."""
    started = time.perf_counter()
    settings = resolve_settings(settings)
    progress = ensure(progress)
    if (grid is None) == (recipes is None):
        raise ZpruneUsageError("compare takes a grid or a list of recipes (one of the two)")
    if grid is not None:
        recipes, evaluation, calibration = grid.recipes(), grid.evaluation, calibration or grid.calibration
    recipes = list(recipes)
    if not recipes:
        raise ZpruneUsageError("the grid is empty: give at least one recipe")
    if len({r.digest for r in recipes}) != len(recipes):
        raise ZpruneUsageError("the grid names the same recipe twice")
    evaluation = evaluation or Evaluation()
    plan = EvalPlan(evaluation, settings.data_dir)
    handle = ModelHandle.of(model, settings, progress)
    if handle.offload == "disk":
        refuse_whole_model_work(evaluation)
    store = ResultsStore(results_path(settings.cache_dir))
    result = None  # a grid of methods that read no statistics (magnitude) loads no text and calibrates nothing
    if needs_calibration(recipes):
        result = calibrate(handle, calibration, **calibration_needs(recipes), settings=settings, progress=progress)
    stats_key = result.calibration_key if result else None  # not the serving entry's: see StatsKey.calibration_digest
    run_settings = {"grid": True, "evaluation": asdict(evaluation), "dtype": handle.dtype_name}  # + calibration per cell
    protocols = expected_protocols(plan, handle, settings.cache_dir)  # remembered: a re-run parses no tokenizer
    computed = skipped = 0
    snapshot = None
    with progress.task(f"Grid of {len(recipes) + 1} cells", len(recipes) + 1) as grid_task:
        for recipe in [None, *recipes]:
            if not force and _done(store, handle, recipe, stats_key, protocols):
                skipped += 1
                grid_task.advance(1)
                continue
            if recipe is not None and handle.offload == "disk":
                provenance, metrics, seconds = _offloaded_cell(handle, result, recipe, plan, progress)
            else:
                snapshot = snapshot or (DenseSnapshot(handle.model) if recipe is not None else None)
                provenance, metrics, seconds = _cell(handle, result, recipe, plan, snapshot, progress)
            record(store, handle, metrics, provenance, {**run_settings, "seconds": seconds})
            computed += 1
            grid_task.advance(1)
        if snapshot is not None:
            snapshot.restore()
    rows = leaderboard(store, fingerprint=handle.source.fingerprint, stats_key=stats_key or NO_STATISTICS, protocols=protocols)
    return CompareOutcome(computed, skipped, stats_key, rows, time.perf_counter() - started, [r.digest for r in recipes])


def _cell(handle: ModelHandle, result, recipe: PruneRecipe | None, plan: EvalPlan, snapshot: DenseSnapshot | None,
          progress: Progress):
    """(provenance, metrics, seconds) of one cell pruned in memory from the dense snapshot (None: the dense row)."""
    provenance = report = None
    if recipe is not None:
        snapshot.restore()
        report = prune_in_memory(handle.model, result and result.entry, recipe, progress)
        provenance = make_provenance(handle, report, result)
    layer_names = list(provenance.pruned_layers) if provenance else None
    measuring = time.perf_counter()
    metrics = measure(handle.model, handle.tokenizer, plan, progress, layer_names,
                      who=recipe.label() if recipe else f"{handle.source.spec} (dense)")
    seconds = {"prune": round(report.seconds, 3) if recipe else 0.0, "evaluate": round(time.perf_counter() - measuring, 3)}
    return provenance, metrics, seconds


def _offloaded_cell(handle: ModelHandle, result, recipe: PruneRecipe, plan: EvalPlan, progress: Progress):
    """--offload disk: each block is pruned from the checkpoint's dense weights and measured as it is finished;
    nothing needs restoring (the next cell reads the dense blocks again)."""
    started = time.perf_counter()
    report, metrics = measure_while_pruning(handle.model, handle.tokenizer, plan,
                                            lambda: prune_in_memory(handle.model, result and result.entry, recipe, progress),
                                            progress, who=recipe.label())
    evaluating = sum(m.seconds for m in metrics)  # the windows' capture, their run through each block, the heads
    seconds = {"prune": round(time.perf_counter() - started - evaluating, 3), "evaluate": round(evaluating, 3)}
    return make_provenance(handle, report, result), metrics, seconds


def _done(store: ResultsStore, handle: ModelHandle, recipe: PruneRecipe | None, stats_key: str,
          protocols: dict[str, Protocol]) -> bool:
    return all(
        store.find(metric=metric, fingerprint=handle.source.fingerprint, protocol=protocol,
                   method=recipe.method if recipe else "dense", recipe=recipe.digest if recipe else None,
                   stats_key=stats_key if recipe else None) is not None
        for metric, protocol in protocols.items()
    )


NO_STATISTICS = ""  # leaderboard's stats_key for the cells of recipes that read no statistics (stored as NULL)


def leaderboard(store: ResultsStore, fingerprint: str | None = None, model: str | None = None, stats_key: str | None = None,
                protocols: dict[str, Protocol] | None = None, metric: str | None = None) -> list[LeaderboardRow]:
    """One row per (protocol group, model, recipe, statistics): the latest value of each metric.

    A protocol group is one evaluation setup (datasets, seqlen, windows, tasks, limit) on one model with
    one calibration; rows of different groups are never ranked together. The dense model's rows join
    every group measured under the same evaluation setup. Each row says its group (`group`, and the
    `protocol` in words) and which of its metrics are the best of its sparsity and pattern (`best`).
    `stats_key` keeps the pruned cells of one calibration (NO_STATISTICS: those that read none).

    With `protocols` (a grid's metric -> protocol) the rows are the grid's view: only metrics measured
    under those protocols (and sparsity, which has none) count, a row with none of them is left out, and
    every row is grouped under the grid's protocols rather than the settings of the run that recorded it.
    So a dense row an earlier `eval` measured under another protocol opens no group of its own, and one
    measured under the same protocol (by `eval`, or spelled differently) joins the grid's group.
    """
    protocols = {m: Protocol.from_dict(p) for m, p in protocols.items()} if protocols else None  # dicts read as well
    grid = json.dumps({m: p.as_dict() for m, p in protocols.items()}, sort_keys=True, default=str) if protocols else None
    cells: dict[tuple, dict] = {}
    seen: dict[tuple, dict[str, tuple[str, dict]]] = {}  # cell -> metric -> (created, protocol) of its latest row
    for r in store.query(model=model, fingerprint=fingerprint):
        if not _kept(r, stats_key, protocols, metric):
            continue
        # rows of schema 1 carry no recipe digest: they keep their old identity (their own fields)
        identity = r.recipe or (r.sparsity, r.pattern, r.scope, r.allocation, r.propagate)
        key = (r.fingerprint, grid or _evaluation_of(r), r.model, r.method, identity, r.stats_key)
        row, latest = cells.setdefault(key, _row(r)), seen.setdefault(key, {})
        if r.created >= latest.get(r.metric, ("", None))[0]:
            row["metrics"][r.metric] = r.value
            latest[r.metric] = (r.created, r.protocol)
            _keep_evidence(row, r)
            row["seconds"] = (r.settings or {}).get("seconds") or row["seconds"]  # the latest run's times
    if grid is not None:  # a cell whose only number here is its sparsity was measured under other protocols
        cells = {key: row for key, row in cells.items() if set(row["metrics"]) - {"sparsity"}}
    return _grouped(cells, {key: {m: p for m, (_, p) in latest.items()} for key, latest in seen.items()})


def _kept(r: ResultRow, stats_key: str | None, protocols: dict[str, Protocol] | None, metric: str | None) -> bool:
    """Whether a stored row belongs in the leaderboard asked for (see `leaderboard`)."""
    if r.method != "dense" and stats_key is not None and (r.stats_key or NO_STATISTICS) != stats_key:
        return False
    if protocols and r.metric != "sparsity" and _expected(protocols, r.metric) != Protocol.from_dict(r.protocol):
        return False
    return metric is None or r.metric == metric or r.metric.startswith(metric + ":") or r.metric == "sparsity"


def _expected(protocols: dict[str, Protocol], metric: str) -> Protocol | None:
    """The protocol a grid expects for `metric`; acc_norm shares its task's acc protocol (same run)."""
    return protocols.get(metric.replace("acc_norm:", "acc:", 1))


def _evaluation_of(r: ResultRow) -> str:
    """The evaluation setup a row was measured under, as canonical text (batch size does not count)."""
    settings = r.settings or {}
    evaluation = settings.get("evaluation")
    if isinstance(evaluation, dict):
        return json.dumps({k: v for k, v in evaluation.items() if k not in ("batch_size", "speed", "tasks_dir")}, sort_keys=True)
    return json.dumps(r.protocol if r.metric != "sparsity" else None, sort_keys=True, default=str)


def _grouped(cells: dict[tuple, dict], protocols: dict[tuple, dict[str, dict]]) -> list[LeaderboardRow]:
    """Number the protocol groups, put the dense rows into each group of their evaluation, mark the best.
    `protocols`: each cell's metric -> protocol, for the group's description."""
    groups: dict[tuple, list[tuple]] = {}
    dense: dict[tuple, list[tuple]] = {}
    for key, row in cells.items():
        fingerprint, evaluation = key[:2]
        if row["method"] == "dense":
            dense.setdefault((fingerprint, evaluation), []).append(key)
        else:
            groups.setdefault((fingerprint, evaluation, row["stats_key"]), []).append(key)
    for (fingerprint, evaluation), rows in dense.items():  # a dense model measured but never pruned
        if not any(k[:2] == (fingerprint, evaluation) for k in groups):
            groups[(fingerprint, evaluation, "")] = []
    out: list[LeaderboardRow] = []
    for number, (group, keys) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0])), 1):
        member_keys = dense.get(group[:2], []) + keys
        members = [dict(cells[k]) for k in member_keys]  # copies: a dense row joins every group of its evaluation
        for row, k in zip(members, member_keys):
            row["_protocols"] = protocols[k]  # the paired test refuses two windows measured under two protocols
            add_intervals(row)
        mark_best(members)
        description = _describe(members, {m: p for k in member_keys for m, p in protocols[k].items()})
        for row in sorted(members, key=lambda r: (r["method"] != "dense", r["pattern"], r["sparsity"] or 0, r["method"], r["recipe"])):
            out.append({**{k: v for k, v in row.items() if k != "_protocols"}, "group": number, "protocol": description})
    return out


def _keep_evidence(row: dict, r: ResultRow) -> None:
    """The stored row's per-window NLLs (perplexity) or standard error (accuracy), kept for the intervals and
    the paired tests (records/ranking.py); rows stored before windows were kept have none."""
    detail = (r.settings or {}).get("detail") or {}
    if detail.get("window_nll"):
        row["windows"][r.metric] = detail["window_nll"]
    if isinstance(detail.get("stderr"), (int, float)):
        row["stderr"][r.metric] = detail["stderr"]


def _by(rows: list[dict], key) -> dict:
    out: dict = {}
    for row in rows:
        out.setdefault(key(row), []).append(row)
    return out


def _describe(rows: list[dict], protocols: dict[str, dict]) -> str:
    """The protocol of a group in words: model, evaluation windows/tasks, calibration."""
    parts = [rows[0]["model"]] if rows else []
    for metric, p in sorted(protocols.items()):
        if metric.startswith("ppl:") and isinstance(p, dict):
            parts.append(f"{p.get('dataset')} {p.get('split')}, seqlen {p.get('seqlen')}, {p.get('n_windows')} windows")
        elif metric.startswith("acc:") and isinstance(p, dict):
            parts.append(f"{p.get('task')} {p.get('num_fewshot')}-shot" + (f", limit {p['limit']}" if p.get("limit") else ""))
    calibration = next((r["calibration"] for r in rows if r.get("calibration")), None)
    if calibration:
        parts.append(f"calibration {Path(str(calibration.get('data'))).name} {calibration.get('nsamples')}x{calibration.get('seqlen')} "
                     f"seed {calibration.get('seed')}")
    stats = next((r["stats_key"] for r in rows if r["stats_key"]), "")
    if stats:
        parts.append(f"statistics {stats[:10]}")
    return "; ".join(parts)


def _row(r: ResultRow) -> dict:
    settings = r.settings or {}
    recipe = settings.get("recipe")
    label = "dense"
    if isinstance(recipe, dict):
        try:
            label = PruneRecipe.from_dict(recipe).label()
        except ZpruneUsageError:  # a recipe of another zprune version: show its fields instead
            label = r.method
    elif r.method != "dense":
        label = r.method
    return {"model": r.model, "method": r.method, "label": label, "sparsity": r.sparsity,
            "pattern": r.pattern or "", "scope": r.scope or "", "allocation": r.allocation or "",
            "propagate": r.propagate or "", "recipe": r.recipe or "", "stats_key": r.stats_key or "",
            "calibration": settings.get("calibration"), "seconds": settings.get("seconds"),  # prune / evaluate, per cell
            "metrics": {}, "windows": {}, "stderr": {}}
