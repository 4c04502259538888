"""`compare`: methods x sparsities x patterns from one calibration and one load of the weights.

Every cell is pruned in memory from a snapshot of the dense weights, evaluated with one EvalPlan
(windows tokenised once), and recorded in the results store as soon as it finishes, so a re-run
skips finished cells and Ctrl-C loses only the cell in progress.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from zprune_cli.calibration import DEFAULT_DATA, DEFAULT_NSAMPLES, DEFAULT_SEED, DEFAULT_SEQLEN, calibrate
from zprune_cli.config import cache_dir as resolve_cache_dir
from zprune_cli.config import load_toml_config
from zprune_cli.errors import ZpruneUsageError
from zprune_cli.evaluate.run import EvalPlan, measure, record
from zprune_cli.masks import Pattern
from zprune_cli.models.handle import ModelHandle
from zprune_cli.pipeline import DenseSnapshot, PruneSpec, prune_in_memory
from zprune_cli.progress import Progress, ensure
from zprune_cli.results import ResultsStore, results_path

GRID_KEYS = {"methods", "sparsity", "patterns", "eval", "tasks", "propagate", "allocation", "data", "nsamples", "seqlen",
             "seed", "eval_seqlen", "max_windows", "limit"}


@dataclass(frozen=True)
class Cell:
    method: str
    sparsity: float
    pattern: str

    @property
    def label(self) -> str:
        return f"{self.method} {self.pattern}" + ("" if ":" in self.pattern else f" {self.sparsity:g}")


def split_list(value: str | list | None) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [v.strip() for v in items if v.strip()]


def make_cells(methods: list[str], sparsities: list[float], patterns: list[str]) -> list[Cell]:
    """Every method x pattern, and x sparsity for unstructured (N:M fixes its own sparsity n/m)."""
    if not methods or not patterns or (not sparsities and any(p == "unstructured" for p in patterns)):
        raise ZpruneUsageError("the grid is empty: give at least one method, one pattern and (for unstructured) one sparsity")
    cells: list[Cell] = []
    for method in methods:
        for pattern_text in patterns:
            pattern = Pattern.parse(pattern_text)
            ratios = [pattern.n / pattern.m] if pattern.is_nm else sparsities
            for ratio in ratios:
                cell = Cell(method, float(ratio), str(pattern))
                if cell in cells:
                    raise ZpruneUsageError(f"the grid names the cell '{cell.label}' twice")
                cells.append(cell)
    return cells


def load_grid(name: str) -> dict:
    """[grids.NAME] of zprune.toml, or [tool.zprune.grids.NAME] of pyproject.toml."""
    grids = load_toml_config().get("grids", {})
    if name not in grids:
        known = ", ".join(sorted(grids)) or "none defined"
        raise ZpruneUsageError(f"no grid named '{name}' in zprune.toml or [tool.zprune.grids] (known: {known})")
    grid = dict(grids[name])
    unknown = sorted(set(grid) - GRID_KEYS)
    if unknown:
        raise ZpruneUsageError(f"grid '{name}' has unknown keys: {', '.join(unknown)} (known: {', '.join(sorted(GRID_KEYS))})")
    return grid


@dataclass
class CompareOutcome:
    computed: int  # cells pruned and evaluated in this run (the dense row included)
    skipped: int  # cells found in the results store
    calibration_key: str
    rows: list[dict]
    seconds: float


def compare(
    model: str | ModelHandle = "smollm2-135m",
    methods: str | list[str] = "magnitude,wanda,sparsegpt,ria,zpruner",
    sparsities: str | list[float] = "0.5",
    patterns: str | list[str] = "unstructured",
    *,
    eval_data: str | list[str] = "wikitext2",
    tasks: str | list[str] | None = None,
    tasks_dir: str | None = None,
    limit: int | None = None,
    eval_seqlen: int | None = None,
    max_windows: int | None = None,
    batch_size: int = 1,
    propagate: str = "auto",
    allocation: str = "uniform",
    force: bool = False,
    data: str = DEFAULT_DATA,
    nsamples: int = DEFAULT_NSAMPLES,
    seqlen: int = DEFAULT_SEQLEN,
    seed: int = DEFAULT_SEED,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> CompareOutcome:
    started = time.perf_counter()
    progress = ensure(progress)
    try:
        ratios = [float(s) for s in split_list(sparsities)] if not isinstance(sparsities, list) else [float(s) for s in sparsities]
    except ValueError:
        raise ZpruneUsageError(f"--sparsity takes comma-separated numbers, got '{sparsities}'") from None
    cells = make_cells(split_list(methods), ratios, split_list(patterns))
    specs = {c: PruneSpec(c.method, c.sparsity, c.pattern, allocation=allocation, propagate=propagate) for c in cells}
    plan = EvalPlan(split_list(eval_data), eval_seqlen, batch_size, max_windows, split_list(tasks), tasks_dir, 0, limit,
                    False, data_dir)
    handle = ModelHandle.of(model, device, dtype, revision, trust_remote_code)
    store = ResultsStore(results_path(resolve_cache_dir(cache_dir)))
    calibration = calibrate(handle, data, nsamples, seqlen, seed, gram=any(s.needs_gram for s in specs.values()),
                            cache_dir=cache_dir, data_dir=data_dir, progress=progress)
    settings = {"grid": True, "eval": plan.datasets, "tasks": plan.tasks, "limit": limit, "dtype": handle.dtype_name,
                "calibration": {"data": data, "nsamples": nsamples, "seqlen": seqlen, "seed": seed}}
    protocols = _expected_protocols(plan, handle)
    base = {"spec": handle.source.spec, "fingerprint": handle.source.fingerprint}
    computed = skipped = 0
    snapshot = None
    with progress.task(f"Grid of {len(cells) + 1} cells", len(cells) + 1) as grid_task:
        todo: list[tuple[Cell | None, dict]] = [(None, {"base_model": base, "method": "dense"})]
        todo += [(c, {**specs[c].describe(), "stats_key": calibration.key, "base_model": base}) for c in cells]
        for cell, provenance in todo:
            if not force and _done(store, handle, provenance, protocols):
                skipped += 1
                grid_task.advance(1)
                continue
            if cell is not None:
                snapshot = snapshot or DenseSnapshot(handle.model)
                snapshot.restore()
                report = prune_in_memory(handle.model, calibration.entry, specs[cell], progress)
                provenance = {**provenance, "overall_sparsity": report.overall, "prune_seconds": report.seconds}
            metrics = measure(handle.model, handle.tokenizer, plan, progress)
            record(store, handle, metrics, provenance if cell is not None else None, settings)
            computed += 1
            grid_task.advance(1)
        if snapshot is not None:
            snapshot.restore()
    rows = leaderboard(store, fingerprint=handle.source.fingerprint, stats_key=calibration.key,
                       protocols=protocols)
    return CompareOutcome(computed, skipped, calibration.key, rows, time.perf_counter() - started)


def _expected_protocols(plan: EvalPlan, handle: ModelHandle) -> dict[str, dict]:
    """metric -> protocol that a finished cell has recorded (computed before any cell runs)."""
    seqlen = plan.seqlen_for(handle.model)
    expected = {}
    for source in plan.sources:
        windows = plan.windows(source, handle.tokenizer, seqlen)
        name = source.name if source.name != "file" else Path(source.where).name
        expected[f"ppl:{name}"] = {
            "dataset": source.name if source.name != "file" else source.where, "split": source.split, "seqlen": seqlen,
            "n_windows": int(windows.shape[0]), "n_tokens": int(windows.shape[0] * (seqlen - 1)),
            "source": source.identity, "data_hash": source.content_hash,
        }
    for task in plan.tasks:
        expected[f"acc:{task}"] = {"task": task, "num_fewshot": plan.num_fewshot, "limit": plan.limit}
    return expected


def _done(store: ResultsStore, handle: ModelHandle, p: dict, protocols: dict[str, dict]) -> bool:
    dense = p.get("method") == "dense"
    for metric, protocol in protocols.items():
        row = store.find(
            metric=metric, fingerprint=handle.source.fingerprint, protocol=protocol, method=p.get("method", "dense"),
            sparsity=None if dense else p["sparsity"], pattern=None if dense else p["pattern"],
            scope=None if dense else p["scope"], allocation=None if dense else p["allocation"],
            propagate=None if dense else p["propagate"], stats_key=None if dense else p["stats_key"],
        )
        if row is None:
            return False
    return True


def leaderboard(store: ResultsStore, fingerprint: str | None = None, model: str | None = None, stats_key: str | None = None,
                protocols: dict[str, dict] | None = None, metric: str | None = None) -> list[dict]:
    """One row per (model, method, settings): the latest value of each metric. Dense rows included."""
    rows: dict[tuple, dict] = {}
    for r in store.query(model=model, fingerprint=fingerprint):
        if r["method"] != "dense" and stats_key is not None and r["stats_key"] != stats_key:
            continue
        if protocols is not None and r["metric"] in protocols and r["protocol"] != protocols[r["metric"]]:
            continue
        if metric is not None and not (r["metric"] == metric or r["metric"].startswith(metric + ":") or r["metric"] == "sparsity"):
            continue
        key = (r["model"], r["method"], r["sparsity"], r["pattern"], r["scope"], r["allocation"], r["propagate"], r["stats_key"])
        row = rows.setdefault(key, {"model": r["model"], "method": r["method"], "sparsity": r["sparsity"], "pattern": r["pattern"] or "",
                                    "scope": r["scope"] or "", "allocation": r["allocation"] or "", "propagate": r["propagate"] or "",
                                    "stats_key": r["stats_key"] or "", "metrics": {}, "_created": {}})
        if r["created"] >= row["_created"].get(r["metric"], ""):
            row["metrics"][r["metric"]] = r["value"]
            row["_created"][r["metric"]] = r["created"]
    out = []
    for row in rows.values():
        row.pop("_created")
        out.append(row)
    out.sort(key=lambda r: (r["model"], r["method"] != "dense", r["pattern"], r["sparsity"] or 0, r["method"]))
    return out


def known_metrics(rows: list[dict]) -> list[str]:
    return sorted({m for r in rows for m in r["metrics"]})
