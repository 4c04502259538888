"""`evaluate`: perplexity, zero-shot accuracy and efficiency of a model, recorded in the results store.

`EvalPlan` holds what to measure and caches the tokenised evaluation windows, so `compare` can
measure many pruned variants of one model without tokenising twice.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from zprune_cli.base.lazy import lazy
from zprune_cli.data.sources import TextSource, resolve_or_sample, resolve_source
from zprune_cli.data.windows import encode_stream
from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.evaluation.efficiency import measure_sparsity, semi_structured_speedup, size_on_disk, throughput
from zprune_cli.evaluation.perplexity import PerplexityResult, eval_windows, perplexity
from zprune_cli.evaluation.protocol_cache import remembered
from zprune_cli.models.handle import ModelHandle
from zprune_cli.models.blocks import counted_layers
from zprune_cli.models.load import max_length
from zprune_cli.models.offload import offloaded, on_done
from zprune_cli.base.progress import Progress, ensure
from zprune_cli.records.provenance import PROVENANCE_FILE, BaseModel, Provenance, is_zprune_folder, locate_base_model
from zprune_cli.records.protocol import SPARSITY, OpenProtocol, PerplexityProtocol, Protocol, ZeroShotProtocol
from zprune_cli.records.results import ResultRow, ResultsStore, package_versions, results_path
from zprune_cli.base.settings import Settings, split_list
from zprune_cli.base.sparsity import BlockwiseSparsity, SparsityCount
from zprune_cli.base.staging import replace_atomically
from zprune_cli.base.settings import resolve as resolve_settings
from zprune_cli.engine.recipe import recipe_of

torch = lazy("torch")
blockwise = lazy("zprune_cli.evaluation.blockwise")

log = logging.getLogger("zprune")

EVAL_SPLITS = {"wikitext2": "test", "ptb": "test", "c4": "validation"}
C4_EVAL_DOCUMENTS = 1100  # the papers: ' '.join of the first 1100 validation documents ...
C4_EVAL_WINDOWS = 256  # ... cut to 256 windows
DEFAULT_EVAL, OFFLINE_EVAL = "wikitext2", "wikitext2-sample"  # the papers' perplexity text; shipped, for offline
T = TypeVar("T")


@dataclass(frozen=True)
class Metric:
    name: str  # "ppl:wikitext2", "acc:arc_easy_local", "sparsity", "tokens_per_s"
    value: float
    protocol: Protocol  # what makes two numbers comparable (the resume key of `compare`)
    seconds: float = 0.0
    detail: dict = field(default_factory=dict)  # what was observed alongside: stderr, counts

    def as_dict(self) -> dict:
        return {"metric": self.name, "value": self.value, "protocol": self.protocol.as_dict(), "detail": self.detail,
                "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class EvalReport:
    """What `evaluate` returns: the metrics of one model (and of its dense base with baseline=True)."""

    target: str
    metrics: list[Metric]
    reused: bool  # every metric came from the results store
    run_ids: list[str] = field(default_factory=list)  # the rows recorded now (none when reused)
    provenance: dict | None = None  # what was pruned how (`_short`), None for a model zprune did not prune
    baseline: EvalReport | None = None

    def as_dict(self) -> dict:
        """The JSON of `zprune eval --json` (a baseline reports its target, reuse and metrics only)."""
        out = {"target": self.target, "provenance": self.provenance, "run_ids": self.run_ids, "reused": self.reused,
               "metrics": [m.as_dict() for m in self.metrics]}
        if self.baseline is not None:
            b = self.baseline
            out["baseline"] = {"target": b.target, "reused": b.reused, "metrics": [m.as_dict() for m in b.metrics]}
        return out


@dataclass(frozen=True)
class Evaluation:
    """What to measure: perplexity datasets (none: ()), zero-shot tasks, and how."""

    # perplexity text: wikitext2, c4, ptb or a local file; None: wikitext2, or offline without a local copy the
    # shipped wikitext2-sample (said in a warning)
    data: tuple[str, ...] | None = None
    seqlen: int | None = None  # None: min(2048, the model's maximum)
    batch_size: int = 1
    max_windows: int | None = None
    tasks: tuple[str, ...] = ()
    tasks_dir: str | None = None
    num_fewshot: int = 0
    limit: int | None = None
    speed: bool = False

    def __post_init__(self) -> None:
        if self.data is not None:
            object.__setattr__(self, "data", tuple(split_list(self.data, str, "--eval")) if self.data else ())
        object.__setattr__(self, "tasks", tuple(split_list(self.tasks, str, "--tasks")) if self.tasks else ())
        for name, low in (("batch_size", 1), ("max_windows", 1), ("seqlen", 2), ("num_fewshot", 0), ("limit", 1)):
            value = getattr(self, name)
            if value is None and name not in ("batch_size", "num_fewshot"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                flag = "--eval-seqlen" if name == "seqlen" else f"--{name.replace('_', '-')}"
                raise ZpruneUsageError(f"{flag} must be an integer >= {low} (got {value!r})")
        if self.data == () and not self.tasks and not self.speed:
            raise ZpruneUsageError("nothing to measure: give perplexity text (--eval), --tasks or --speed")


class EvalPlan:
    """An Evaluation bound to a data directory; caches the tokenised windows so many models share them."""

    def __init__(self, evaluation: Evaluation, data_dir: str | Path | None = None):
        self.evaluation = evaluation
        self.data_dir = data_dir
        self._windows: dict = {}
        if evaluation.data is None:
            self.sources = [resolve_or_sample(DEFAULT_EVAL, EVAL_SPLITS[DEFAULT_EVAL], data_dir, OFFLINE_EVAL)]
        else:
            self.sources = [resolve_source(name, EVAL_SPLITS.get(name, "all"), data_dir) for name in evaluation.data]

    def seqlen_for(self, model_or_config) -> int:
        seqlen, limit = self.evaluation.seqlen, max_length(model_or_config)
        if seqlen is None:
            return min(2048, limit) if limit else 2048
        if limit is not None and seqlen > limit:
            raise ZpruneUsageError(f"--eval-seqlen {seqlen} is beyond the model's maximum of {limit} tokens")
        return seqlen

    def windows(self, source: TextSource, tokenizer, seqlen: int) -> torch.Tensor:
        key = (source.identity, seqlen, id(tokenizer.__class__), tokenizer.vocab_size)
        if key not in self._windows:
            text = source.load()
            if source.name == "c4":
                ids = encode_stream(tokenizer, " ".join(text.documents[:C4_EVAL_DOCUMENTS]))
                windows = eval_windows(ids, seqlen)[:C4_EVAL_WINDOWS]
            else:
                windows = eval_windows(encode_stream(tokenizer, text.as_stream()), seqlen)
            limit = self.evaluation.max_windows
            self._windows[key] = windows if limit is None else windows[:limit]
        return self._windows[key]


def perplexity_protocol(source: TextSource, seqlen: int, n_windows: int) -> PerplexityProtocol:
    """What makes two perplexities comparable (and the key `compare` resumes by): measuring and resuming
    both build it here."""
    return PerplexityProtocol(dataset=source.name if source.name != "file" else source.where, split=source.split,
                              seqlen=seqlen, n_windows=n_windows, n_tokens=n_windows * (seqlen - 1),
                              source=source.identity, data_hash=source.content_hash)


def zeroshot_protocol(task: str, evaluation: Evaluation) -> ZeroShotProtocol:
    """What makes two accuracies on `task` comparable (acc and acc_norm alike): measuring and resuming both
    build it here."""
    return ZeroShotProtocol(task=task, num_fewshot=evaluation.num_fewshot, limit=evaluation.limit)


def metric_name(source: TextSource) -> str:
    return f"ppl:{source.name if source.name != 'file' else Path(source.where).name}"


def measure(model, tokenizer, plan: EvalPlan, progress: Progress | None = None,
            layer_names: list[str] | None = None, who: str = "") -> list[Metric]:
    """Every metric the plan asks for, on a model already in memory. `layer_names`: the pruned layers
    (sparsity's denominator), default every Linear in the decoder blocks; `who` names the model in bars."""
    progress = ensure(progress)
    e = plan.evaluation
    seqlen = plan.seqlen_for(model)
    # --offload disk: the zeros are counted during the first block-by-block perplexity pass (one read of the blocks)
    counting = BlockwiseSparsity(counted_layers(model, layer_names)) if offloaded(model) and plan.sources else None
    metrics = [_perplexity(model, tokenizer, plan, source, seqlen, progress, who, [counting] if counting and i == 0 else [])
               for i, source in enumerate(plan.sources)]
    if e.tasks:
        metrics += _zeroshot(model, tokenizer, plan, progress)
    if counting is not None:
        metrics.append(sparsity_metric(counting.result()))
    else:
        metrics.append(sparsity_metric((blockwise.blockwise_sparsity if offloaded(model) else measure_sparsity)(model, layer_names)))
    if e.speed:
        metrics += _speed(model, seqlen, e.batch_size)
    return metrics


def measure_while_pruning(model, tokenizer, plan: EvalPlan, prune: Callable[[], T], progress: Progress | None = None,
                          who: str = "") -> tuple[T, list[Metric]]:
    """--offload disk: `prune()`'s outcome, and the plan's perplexities and sparsity taken from each block as
    it is finished, before it leaves memory (the pruned weights are never saved or read again)."""
    refuse_whole_model_work(plan.evaluation)
    seqlen = plan.seqlen_for(model)
    with ensure(progress).task(f"Capturing the evaluation windows' inputs for {who}", None):
        perplexities = {source: blockwise.BlockwisePerplexity(model, plan.windows(source, tokenizer, seqlen)) for source in plan.sources}
    counting = BlockwiseSparsity(counted_layers(model))
    with contextlib.ExitStack() as listening:
        for listener in [*perplexities.values(), counting]:
            listening.enter_context(on_done(model, listener))
        outcome = prune()
    metrics = []
    for source, measuring in perplexities.items():
        result = measuring.result()
        metrics.append(Metric(metric_name(source), result.ppl, perplexity_protocol(source, seqlen, result.n_windows),
                              result.seconds, window_detail(result)))
    metrics.append(sparsity_metric(counting.result()))
    return outcome, metrics


def sparsity_metric(counted: SparsityCount) -> Metric:
    """The sparsity Metric of a `sparsity.count_zeros` result."""
    return Metric("sparsity", counted.sparsity, SPARSITY, 0.0, {"params": counted.params, "nonzeros": counted.nonzeros})


def refuse_whole_model_work(evaluation: Evaluation) -> None:
    if evaluation.tasks or evaluation.speed:
        raise ZpruneUsageError("--offload disk measures perplexity and sparsity block by block; zero-shot tasks and "
                               "--speed run the whole model per request: run them without --offload")


def _perplexity(model, tokenizer, plan: EvalPlan, source: TextSource, seqlen: int, progress: Progress, who: str,
                also: list | None = None) -> Metric:
    """One dataset's perplexity; offloaded, block by block, with `also` fed each block (blockwise_perplexity)."""
    windows = plan.windows(source, tokenizer, seqlen)
    what = source.name if source.name != "file" else Path(source.where).name
    by_block = offloaded(model) is not None  # --offload disk: each block read once, not once per window
    steps = len(windows) + (len(offloaded(model).blocks) if by_block else 0)
    with progress.task(f"Perplexity of {who} on {what}" if who else f"Perplexity on {what}", steps) as task:
        done = [0]

        def advance(n_done: int) -> None:
            task.advance(n_done - done[0])
            done[0] = n_done

        if by_block:
            result = blockwise.blockwise_perplexity(model, windows, progress=advance, also=also or ())
        else:
            result = perplexity(model, windows, plan.evaluation.batch_size, progress=advance)
    protocol = perplexity_protocol(source, seqlen, result.n_windows)
    return Metric(metric_name(source), result.ppl, protocol, result.seconds, window_detail(result))


def window_detail(result: PerplexityResult) -> dict:
    """A perplexity's per-window mean NLLs and their token count, kept with it in the results store: its
    interval and paired comparisons are computed from them (zprune_cli.records.intervals)."""
    return {"window_nll": result.window_nlls, "window_tokens": result.seqlen - 1}


def _zeroshot(model, tokenizer, plan: EvalPlan, progress: Progress) -> list[Metric]:
    from zprune_cli.evaluation.zeroshot import zeroshot

    e = plan.evaluation
    started = time.perf_counter()
    with progress.task(f"Zero-shot: {', '.join(e.tasks)}", None):
        scores = zeroshot(model, tokenizer, list(e.tasks), e.tasks_dir, e.num_fewshot, e.limit, e.batch_size,
                          data_dir=plan.data_dir)
    seconds = time.perf_counter() - started
    metrics = []
    for task_name, values in scores.items():
        for key in ("acc", "acc_norm"):
            if values.get(key) is not None:
                detail = {"n": values.get("n"), "stderr": values.get(f"{key}_stderr")}
                metrics.append(Metric(f"{key}:{task_name}", values[key], zeroshot_protocol(task_name, e), seconds, detail))
    return metrics


def _speed(model, seqlen: int, batch_size: int) -> list[Metric]:
    started = time.perf_counter()
    tps = throughput(model, seqlen, batch_size)
    device = str(next(model.parameters()).device)
    metrics = [Metric("tokens_per_s", tps, OpenProtocol.of({"seqlen": seqlen, "batch_size": batch_size, "device": device}),
                      time.perf_counter() - started)]
    speedup = semi_structured_speedup(model, seqlen=seqlen, batch_size=batch_size)
    if isinstance(speedup, dict):
        metrics.append(Metric("speedup_2to4", speedup["speedup"], OpenProtocol.of({**speedup, "device": device})))
    else:
        metrics.append(Metric("speedup_2to4", float("nan"), OpenProtocol.of({"unavailable": speedup})))
    return metrics


def expected_protocols(plan: EvalPlan, handle: ModelHandle, cache_dir: Path | str | None = None) -> dict[str, Protocol]:
    """metric -> protocol that a finished cell has recorded (computed before any cell runs). With `cache_dir`,
    the perplexity protocols of a local model are remembered there (protocol_cache): a re-run reads no
    config or tokenizer."""
    e = plan.evaluation
    wanted = {"seqlen": e.seqlen, "max_windows": e.max_windows,
              "texts": [[s.name, s.split, s.identity, s.content_hash] for s in plan.sources]}
    computed = remembered(cache_dir, handle.source, wanted, lambda: _perplexity_protocols(plan, handle))
    expected = {name: Protocol.from_dict(protocol) for name, protocol in computed.items()}
    for task in e.tasks:
        expected[f"acc:{task}"] = zeroshot_protocol(task, e)
    return expected


def _perplexity_protocols(plan: EvalPlan, handle: ModelHandle) -> dict[str, dict]:
    """metric -> the perplexity protocol's dict (kept on disk by protocol_cache)."""
    if not plan.sources:
        return {}
    seqlen = plan.seqlen_for(handle.config)  # the config alone: a fully cached re-run loads no weights
    expected = {}
    for source in plan.sources:
        windows = plan.windows(source, handle.tokenizer, seqlen)
        expected[metric_name(source)] = perplexity_protocol(source, seqlen, int(windows.shape[0])).as_dict()
    return expected


def cached_metrics(store: ResultsStore, handle: ModelHandle, plan: EvalPlan, provenance: Provenance | None) -> list[Metric] | None:
    """Every metric the plan asks for, from the results store, when all were measured before under the
    same protocol on the same model and recipe (None otherwise). Reads the tokenizer and config only."""
    if plan.evaluation.speed:
        return None  # speed depends on the moment and the machine: always measured
    base = provenance.base_model.fingerprint if provenance else handle.source.fingerprint
    cell = {"fingerprint": base, "method": provenance.recipe.method if provenance else "dense",
            "recipe": provenance.cell_digest if provenance else None, "stats_key": provenance.stats_key if provenance else None}
    # the protocols are remembered beside the results database (the cache dir): a re-run reads no tokenizer
    wanted = {**expected_protocols(plan, handle, store.path.parent), "sparsity": SPARSITY}
    extra = {f"acc_norm:{task}": wanted[f"acc:{task}"] for task in plan.evaluation.tasks}
    metrics = []
    for name, protocol in [*wanted.items(), *extra.items()]:
        row = store.find(metric=name, protocol=protocol, **cell)
        if row is None and name not in extra:
            return None
        if row is not None:
            detail = (row.settings or {}).get("detail") or {}
            metrics.append(Metric(name, row.value, Protocol.from_dict(row.protocol), row.seconds or 0.0, detail))
    return metrics


def provenance_of(handle: ModelHandle) -> Provenance | None:
    """The zprune.json of a zprune output (or export of one); None for any other model."""
    folder = Path(handle.source.location)
    if handle.source.is_local and handle.source.gguf_file is None and is_zprune_folder(folder):
        return Provenance.read(folder)
    return None


def record(store: ResultsStore, handle: ModelHandle, metrics: list[Metric], provenance: Provenance | None,
           settings: dict) -> list[str]:
    """One row per metric, all in one transaction; `provenance` says what was pruned how (None: dense)."""
    base = provenance.base_model if provenance else BaseModel.of(handle.source)
    recipe = recipe_of(provenance.recipe) if provenance else None
    cell = {"model": base.spec, "fingerprint": base.fingerprint, "method": recipe.method if recipe else "dense"}
    if provenance is not None:
        cell |= {"sparsity": recipe.sparsity, "pattern": recipe.pattern, "scope": recipe.scope,
                 "allocation": recipe.allocation, "propagate": recipe.propagate, "stats_key": provenance.stats_key,
                 "recipe": provenance.cell_digest}
        calibration = asdict(provenance.calibration) if provenance.calibration else None
        settings = {**settings, "recipe": recipe.as_dict(), "masks": provenance.masks, "calibration": calibration}
    # float sums depend on how work is split across threads: at 60-70% sparsity with pruned propagation,
    # 1 vs 2 CPU threads moved SmolLM2's perplexity by ~4%; a re-run reproduces a number only with the same count
    versions = {**package_versions(), "torch_threads": str(torch.get_num_threads())}
    return store.record_many([
        ResultRow(**cell, metric=m.name, value=_finite_or_none(m.value), protocol=m.protocol, seconds=m.seconds,
                  settings={**settings, "target": handle.source.spec, "detail": m.detail}, versions=versions)
        for m in metrics
    ])


def _finite_or_none(value: float) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def stored_results(store: ResultsStore, provenance: Provenance) -> dict[str, dict]:
    """The latest value of every metric recorded for this pruned model (its cell), from the results store."""
    rows = store.query(fingerprint=provenance.base_model.fingerprint, recipe=provenance.cell_digest,
                       stats_key=provenance.stats_key)
    latest: dict[str, dict] = {}
    for row in rows:  # oldest first: later rows win
        protocol = {k: v for k, v in (row.protocol or {}).items() if k not in ("source", "data_hash")}
        latest[row.metric] = {"value": row.value, "protocol": protocol, "created": row.created}
    return latest


def refresh_model_card(folder: Path, provenance: Provenance, store: ResultsStore) -> None:
    """Fill zprune.json's results and the model card's "Measured results" from the results store."""
    from zprune_cli.rendering.model_card import model_card

    updated = provenance.with_results(stored_results(store, provenance))
    fmt = (provenance.export or {}).get("format", "hf")
    try:
        updated.write(folder)
        replace_atomically(folder / "README.md", model_card(updated, fmt, folder.name).encode("utf-8"))
    except OSError as exc:  # a read-only model folder: the results are in the store all the same
        log.warning("could not update the model card in %s: %s", folder, exc.strerror or exc)


def evaluate(
    target: str | ModelHandle = "smollm2-135m",
    evaluation: Evaluation | None = None,
    *,
    baseline: bool = False,
    force: bool = False,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> EvalReport:
    """Evaluate a model (hub id, folder, zprune output, .gguf, alias) and record every metric.

    With baseline=True, also evaluates the dense model a zprune output was pruned from. On a zprune
    output folder, its zprune.json and model card get the measured results. Results already in the
    store under the same protocol are reused (no model load) unless force=True.
    """
    evaluation = evaluation or Evaluation()
    settings = resolve_settings(settings)
    plan = EvalPlan(evaluation, settings.data_dir)
    handle = ModelHandle.of(target, settings, progress)
    if handle.offload == "disk":
        refuse_whole_model_work(evaluation)
    provenance = provenance_of(handle)
    if provenance is not None:
        recipe_of(provenance.recipe)  # its rows need the recipe: a record this zprune cannot rebuild is said before measuring
    if baseline and provenance is None:
        raise ZpruneUsageError(f"--baseline needs a zprune output folder (with {PROVENANCE_FILE}); {handle.source.spec} is not one")
    base = base_model_handle(provenance, Path(handle.source.location), settings, handle.offload) if baseline else None
    run = _Run(ResultsStore(results_path(settings.cache_dir)), plan, {"evaluation": asdict(evaluation), "dtype": handle.dtype_name},
               list(provenance.pruned_layers) if provenance else None, force, progress)
    metrics, run_ids, reused = run.metrics(handle, provenance, handle.source.spec)
    if handle.source.is_local:
        where = Path(handle.source.location) / (handle.source.gguf_file or "")
        metrics.append(Metric("size_on_disk_bytes", float(size_on_disk(where)), OpenProtocol()))
    if provenance is not None:
        refresh_model_card(Path(handle.source.location), provenance, run.store)
    baseline_report = None
    if base is not None:
        base_metrics, base_ids, base_reused = run.metrics(base, None, f"{base.source.spec} (dense)")
        baseline_report = EvalReport(base.source.spec, base_metrics, base_reused, base_ids)
    return EvalReport(handle.source.spec, metrics, reused, run_ids, _short(provenance), baseline_report)


@dataclass
class _Run:
    """One `evaluate` call: where results go, what to measure, and whether stored results may answer."""

    store: ResultsStore
    plan: EvalPlan
    settings: dict
    layer_names: list[str] | None
    force: bool
    progress: Progress | None

    def metrics(self, handle: ModelHandle, provenance: Provenance | None, who: str) -> tuple[list[Metric], list[str], bool]:
        """(metrics, new run ids, reused from the store?)"""
        if not self.force:
            cached = cached_metrics(self.store, handle, self.plan, provenance)
            if cached is not None:
                log.info("%s: every metric is in the results store under this protocol (--force measures again)", who)
                return cached, [], True
        handle.progress = handle.progress or self.progress
        metrics = measure(handle.model, handle.tokenizer, self.plan, self.progress, self.layer_names, who=who)
        return metrics, record(self.store, handle, metrics, provenance, self.settings), False


def base_model_handle(provenance: Provenance, folder: Path, settings: Settings, offload: str = "none") -> ModelHandle:
    """The dense model the pruned `folder` came from (provenance.locate_base_model: found by its record, verified
    by its content fingerprint, refused when it is another model)."""
    source, warning = locate_base_model(provenance.base_model, folder)
    if warning:
        log.warning(warning)
    return ModelHandle(source, settings.device, settings.dtype, offload=offload)


def _short(provenance: Provenance | None) -> dict | None:
    if provenance is None:
        return None
    r = recipe_of(provenance.recipe)
    return {"method": r.method, "sparsity": r.sparsity, "pattern": r.pattern, "scope": r.scope, "allocation": r.allocation,
            "propagate": r.propagate, "reconstruct": r.reconstruct, "recipe": provenance.cell_digest,
            "stats_key": provenance.stats_key, "overall_sparsity": provenance.overall_sparsity,
            "base_model": provenance.base_model.spec}
