"""`evaluate`: perplexity, zero-shot accuracy and efficiency of a model, recorded in the results store.

`EvalPlan` holds what to measure and caches the tokenised evaluation windows, so `compare` can
measure many pruned variants of one model without tokenising twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zprune_cli.config import cache_dir as resolve_cache_dir
from zprune_cli.config import data_dir as resolve_data_dir
from zprune_cli.data.sources import TextSource, resolve_source
from zprune_cli.data.windows import encode_stream
from zprune_cli.errors import ZpruneUsageError
from zprune_cli.evaluate.efficiency import measure_sparsity, semi_structured_speedup, size_on_disk, throughput
from zprune_cli.evaluate.perplexity import eval_windows, perplexity
from zprune_cli.export.provenance import PROVENANCE_FILE, read_provenance
from zprune_cli.models.handle import ModelHandle
from zprune_cli.models.load import max_length
from zprune_cli.progress import Progress, ensure
from zprune_cli.results import ResultsStore, package_versions, results_path

EVAL_SPLITS = {"wikitext2": "test", "ptb": "test", "c4": "validation"}
C4_EVAL_DOCUMENTS = 1100  # the papers: ' '.join of the first 1100 validation documents ...
C4_EVAL_WINDOWS = 256  # ... cut to 256 windows


@dataclass
class Metric:
    name: str  # "ppl:wikitext2", "acc:arc_easy_local", "sparsity", "tokens_per_s"
    value: float
    protocol: dict  # what makes two numbers comparable (the resume key of `compare`)
    seconds: float = 0.0
    detail: dict = field(default_factory=dict)  # what was observed alongside: stderr, counts

    def as_dict(self) -> dict:
        return {"metric": self.name, "value": self.value, "protocol": self.protocol, "detail": self.detail,
                "seconds": round(self.seconds, 3)}


@dataclass
class EvalPlan:
    datasets: list[str] = field(default_factory=lambda: ["wikitext2"])
    seqlen: int | None = None  # None: min(2048, the model's maximum)
    batch_size: int = 1
    max_windows: int | None = None
    tasks: list[str] = field(default_factory=list)
    tasks_dir: str | None = None
    num_fewshot: int = 0
    limit: int | None = None
    speed: bool = False
    data_dir: str | Path | None = None
    _windows: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ZpruneUsageError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if self.max_windows is not None and self.max_windows < 1:
            raise ZpruneUsageError(f"--max-windows must be at least 1 (got {self.max_windows})")
        if self.seqlen is not None and self.seqlen < 2:
            raise ZpruneUsageError(f"--seqlen must be at least 2 (got {self.seqlen})")
        self.sources: list[TextSource] = [
            resolve_source(name, EVAL_SPLITS.get(name, "all"), resolve_data_dir(self.data_dir)) for name in self.datasets
        ]

    def seqlen_for(self, model) -> int:
        limit = max_length(model)
        if self.seqlen is None:
            return min(2048, limit) if limit else 2048
        if limit is not None and self.seqlen > limit:
            raise ZpruneUsageError(f"--seqlen {self.seqlen} is beyond the model's maximum of {limit} tokens")
        return self.seqlen

    def windows(self, source: TextSource, tokenizer, seqlen: int) -> torch.Tensor:
        key = (source.identity, seqlen, id(tokenizer.__class__), tokenizer.vocab_size)
        if key not in self._windows:
            text = source.load()
            if source.name == "c4":
                ids = encode_stream(tokenizer, " ".join(text.documents[:C4_EVAL_DOCUMENTS]))
                windows = eval_windows(ids, seqlen)[:C4_EVAL_WINDOWS]
            else:
                windows = eval_windows(encode_stream(tokenizer, text.as_stream()), seqlen)
            self._windows[key] = windows if self.max_windows is None else windows[: self.max_windows]
        return self._windows[key]


def measure(model, tokenizer, plan: EvalPlan, progress: Progress | None = None) -> list[Metric]:
    """Every metric the plan asks for, on a model already in memory."""
    progress = ensure(progress)
    metrics: list[Metric] = []
    seqlen = plan.seqlen_for(model)
    for source in plan.sources:
        windows = plan.windows(source, tokenizer, seqlen)
        with progress.task(f"Perplexity on {source.name if source.name != 'file' else source.where}", len(windows)) as task:
            done = [0]

            def advance(n_done: int) -> None:
                task.advance(n_done - done[0])
                done[0] = n_done

            result = perplexity(model, windows, plan.batch_size, progress=advance)
        protocol = {
            "dataset": source.name if source.name != "file" else source.where,
            "split": source.split,
            "seqlen": seqlen,
            "n_windows": result.n_windows,
            "n_tokens": result.n_tokens,
            "source": source.identity,
            "data_hash": source.content_hash,
        }
        name = source.name if source.name != "file" else Path(source.where).name
        metrics.append(Metric(f"ppl:{name}", result.ppl, protocol, result.seconds))
    if plan.tasks:
        from zprune_cli.evaluate.zeroshot import zeroshot

        started = time.perf_counter()
        with progress.task(f"Zero-shot: {', '.join(plan.tasks)}", None):
            scores = zeroshot(model, tokenizer, plan.tasks, plan.tasks_dir, plan.num_fewshot, plan.limit,
                              plan.batch_size, data_dir=plan.data_dir)
        seconds = time.perf_counter() - started
        for task_name, values in scores.items():
            for key in ("acc", "acc_norm"):
                if values.get(key) is not None:
                    protocol = {"task": task_name, "num_fewshot": plan.num_fewshot, "limit": plan.limit}
                    detail = {"n": values.get("n"), "stderr": values.get(f"{key}_stderr")}
                    metrics.append(Metric(f"{key}:{task_name}", values[key], protocol, seconds, detail))
    sparsity = measure_sparsity(model)
    metrics.append(Metric("sparsity", sparsity["sparsity"], {"layers": "decoder-block Linear"}, 0.0,
                          {"params": sparsity["params"], "nonzeros": sparsity["nonzeros"]}))
    if plan.speed:
        started = time.perf_counter()
        tps = throughput(model, seqlen, plan.batch_size)
        device = str(next(model.parameters()).device)
        metrics.append(Metric("tokens_per_s", tps, {"seqlen": seqlen, "batch_size": plan.batch_size, "device": device},
                              time.perf_counter() - started))
        speedup = semi_structured_speedup(model, seqlen=seqlen, batch_size=plan.batch_size)
        if isinstance(speedup, dict):
            metrics.append(Metric("speedup_2to4", speedup["speedup"], {**speedup, "device": device}))
        else:
            metrics.append(Metric("speedup_2to4", float("nan"), {"unavailable": speedup}))
    return metrics


def provenance_of(handle: ModelHandle) -> dict | None:
    """The zprune.json of a zprune output (or export of one); None for any other model."""
    folder = Path(handle.source.location)
    if handle.source.is_local and handle.source.gguf_file is None and (folder / PROVENANCE_FILE).is_file():
        return read_provenance(folder)
    return None


def record(store: ResultsStore, handle: ModelHandle, metrics: list[Metric], provenance: dict | None, settings: dict) -> list[str]:
    """One row per metric; `provenance` (a zprune.json, or a compare cell) says what was pruned how."""
    p = provenance or {}
    ids = []
    for m in metrics:
        ids.append(store.record(
            metric=m.name, value=m.value, model=(p.get("base_model") or {}).get("spec", handle.source.spec),
            fingerprint=(p.get("base_model") or {}).get("fingerprint", handle.source.fingerprint),
            method=p.get("method", "dense"), sparsity=p.get("sparsity"), pattern=p.get("pattern"), scope=p.get("scope"),
            allocation=p.get("allocation"), propagate=p.get("propagate"), stats_key=p.get("stats_key"),
            settings={**settings, "target": handle.source.spec, "detail": m.detail}, protocol=m.protocol, seconds=m.seconds,
            versions=package_versions(),
        ))
    return ids


def evaluate(
    target: str | ModelHandle = "smollm2-135m",
    data: str | list[str] = "wikitext2",
    *,
    seqlen: int | None = None,
    batch_size: int = 1,
    max_windows: int | None = None,
    tasks: list[str] | None = None,
    tasks_dir: str | None = None,
    num_fewshot: int = 0,
    limit: int | None = None,
    speed: bool = False,
    baseline: bool = False,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> dict:
    """Evaluate a model (hub id, folder, zprune output, .gguf, alias) and record every metric.

    With baseline=True, also evaluates the dense model named in a zprune output's provenance.
    """
    datasets = [d.strip() for d in data.split(",") if d.strip()] if isinstance(data, str) else list(data)
    plan = EvalPlan(datasets, seqlen, batch_size, max_windows, list(tasks or []), tasks_dir, num_fewshot, limit, speed, data_dir)
    handle = ModelHandle.of(target, device, dtype, revision, trust_remote_code)
    provenance = provenance_of(handle)
    if baseline and provenance is None:
        raise ZpruneUsageError(f"--baseline needs a zprune output folder (with {PROVENANCE_FILE}); {handle.source.spec} is not one")
    settings = {"datasets": datasets, "seqlen": seqlen, "batch_size": batch_size, "max_windows": max_windows,
                "tasks": plan.tasks, "num_fewshot": num_fewshot, "limit": limit, "dtype": handle.dtype_name}
    store = ResultsStore(results_path(resolve_cache_dir(cache_dir)))
    metrics = measure(handle.model, handle.tokenizer, plan, progress)
    if handle.source.is_local:
        metrics.append(Metric("size_on_disk_bytes", float(size_on_disk(handle.source.location if not handle.source.gguf_file
                                                                             else Path(handle.source.location) / handle.source.gguf_file)), {}))
    run_ids = record(store, handle, metrics, provenance, settings)
    report = {"target": handle.source.spec, "provenance": _short(provenance), "run_ids": run_ids,
              "metrics": [m.as_dict() for m in metrics]}
    if baseline:
        base = ModelHandle(provenance["base_model"]["spec"], device, dtype, provenance["base_model"].get("revision"), trust_remote_code)
        base_metrics = measure(base.model, base.tokenizer, plan, progress)
        record(store, base, base_metrics, None, settings)
        report["baseline"] = {"target": base.source.spec, "metrics": [m.as_dict() for m in base_metrics]}
    return report


def _short(provenance: dict | None) -> dict | None:
    if provenance is None:
        return None
    keys = ("method", "sparsity", "pattern", "scope", "allocation", "propagate", "reconstruct", "stats_key", "overall_sparsity")
    return {k: provenance.get(k) for k in keys} | {"base_model": provenance["base_model"]["spec"]}
