"""`prune`: statistics from the store (calibrating first when missing), prune, optionally save."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from zprune_cli import __version__
from zprune_cli.calibration import DEFAULT_DATA, DEFAULT_NSAMPLES, DEFAULT_SEED, DEFAULT_SEQLEN, CalibrationResult, calibrate
from zprune_cli.config import load_toml_config
from zprune_cli.errors import ZpruneUsageError
from zprune_cli.models.handle import ModelHandle
from zprune_cli.export.io import staged_folder
from zprune_cli.export.provenance import PROVENANCE_FILE, PROVENANCE_FORMAT, model_card
from zprune_cli.models.save import save_model
from zprune_cli.pipeline import DenseSnapshot, PruneReport, PruneSpec, prune_in_memory
from zprune_cli.progress import Progress, ensure



@dataclass
class PruneOutcome:
    report: PruneReport
    calibration: CalibrationResult
    out: Path | None
    provenance: dict

    def summary(self) -> dict:
        return {
            **self.report.spec,
            "overall_sparsity": round(self.report.overall, 6),
            "stats_key": self.calibration.key,
            "out": str(self.out) if self.out else None,
            "seconds": round(self.report.seconds, 3),
            "layers": {k: round(v, 6) for k, v in self.report.layers.items()},
        }


def split_methods(method: str | list[str]) -> list[str]:
    names = [m.strip() for m in method.split(",")] if isinstance(method, str) else list(method)
    names = [n for n in names if n]
    if not names:
        raise ZpruneUsageError("--method is empty")
    if len(set(names)) != len(names):
        raise ZpruneUsageError(f"--method names a method twice: {','.join(names)}")
    return names


def prune(
    model: str | ModelHandle = "smollm2-135m",
    method: str | list[str] = "zpruner",
    sparsity: float = 0.5,
    pattern: str = "unstructured",
    *,
    scope: str | None = None,
    allocation: str = "uniform",
    owl_m: float = 5.0,
    owl_lambda: float = 0.08,
    reconstruct: bool = False,
    propagate: str = "auto",
    ignore: list[str] | None = None,
    method_options: dict | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
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
) -> list[PruneOutcome]:
    """Prune `model` with each of `method` (comma-separated) from one load of weights and statistics.

    With `out`, each pruned model is saved there (one method) or under out/<method> (several).
    Per-layer sparsity overrides come from the config: [tool.zprune.sparsity] regex = ratio.
    """
    progress = ensure(progress)
    overrides = {str(k): float(v) for k, v in load_toml_config().get("sparsity", {}).items()}
    specs = [
        PruneSpec(
            method=name, sparsity=sparsity, pattern=pattern, scope=scope, allocation=allocation, owl_m=owl_m,
            owl_lambda=owl_lambda, reconstruct=reconstruct, propagate=propagate, ignore=list(ignore or []),
            overrides=overrides, method_options=dict(method_options or {}),
        )
        for name in split_methods(method)
    ]
    outs = _output_paths(out, [s.method for s in specs], overwrite)
    handle = ModelHandle.of(model, device, dtype, revision, trust_remote_code)
    calibration = calibrate(
        handle, data, nsamples, seqlen, seed, gram=any(s.needs_gram for s in specs),
        cache_dir=cache_dir, data_dir=data_dir, progress=progress,
    )
    snapshot = DenseSnapshot(handle.model, specs[0].ignore) if len(specs) > 1 else None
    outcomes = []
    for spec, target in zip(specs, outs):
        if snapshot is not None:
            snapshot.restore()
        report = prune_in_memory(handle.model, calibration.entry, spec, progress)
        provenance = make_provenance(handle, calibration, report)
        if target is not None:
            save_pruned(handle, provenance, target, overwrite, progress)
        outcomes.append(PruneOutcome(report, calibration, target, provenance))
    return outcomes


@dataclass
class MaskOutcome:
    layers: int
    out: Path | None
    provenance: dict

    def summary(self) -> dict:
        return {"masks_applied_layers": self.layers, "overall_sparsity": self.provenance["overall_sparsity"],
                "out": str(self.out) if self.out else None, "method": self.provenance.get("method")}


def prune_with_masks(
    model: str | ModelHandle,
    masks: str | Path,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> MaskOutcome:
    """Apply masks from `zprune export --format masks` to the same base model (no statistics needed)."""
    from zprune_cli.export import apply_masks
    from zprune_cli.export.masks import read_masks
    from zprune_cli.pipeline import measure, pruned_layers

    progress = ensure(progress)
    [target] = _output_paths(out, ["masks"], overwrite)
    handle = ModelHandle.of(model, device, dtype, revision, trust_remote_code)
    n_layers = apply_masks(handle.model, masks, fingerprint=handle.source.fingerprint)
    _, manifest = read_masks(masks)
    sparsity, params = measure(pruned_layers(handle.model, []))
    masked = {name: value for name, value in sparsity.items() if name in set(manifest["modules"])}
    overall = sum(masked[n] * params[n] for n in masked) / max(1, sum(params[n] for n in masked))
    provenance = {
        "format": PROVENANCE_FORMAT, "zprune_version": __version__,
        "base_model": {"spec": handle.source.spec, "location": handle.source.location, "gguf_file": handle.source.gguf_file,
                       "revision": handle.source.revision, "fingerprint": handle.source.fingerprint},
        **(manifest.get("settings") or {}), "masks": str(Path(masks).resolve()),
        "pruned_layers": {k: round(v, 6) for k, v in masked.items()}, "overall_sparsity": round(overall, 6),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": {},
    }
    if target is not None:
        save_pruned(handle, provenance, target, overwrite, progress)
    return MaskOutcome(n_layers, target, provenance)


def _output_paths(out, methods: list[str], overwrite: bool) -> list[Path | None]:
    if out is None:
        return [None] * len(methods)
    out = Path(out).expanduser()
    paths = [out] if len(methods) == 1 else [out / m for m in methods]
    for path in paths:  # refuse before any work is done, not after an hour of pruning
        if path.exists() and not overwrite:
            raise ZpruneUsageError(f"output {path} already exists; pass --overwrite to replace it")
    return paths


def make_provenance(handle: ModelHandle, calibration: CalibrationResult, report: PruneReport) -> dict:
    s = calibration.entry.manifest["settings"]
    import transformers

    return {
        "format": PROVENANCE_FORMAT,
        "zprune_version": __version__,
        "base_model": {
            "spec": handle.source.spec,
            "location": handle.source.location,
            "gguf_file": handle.source.gguf_file,
            "revision": handle.source.revision,
            "fingerprint": handle.source.fingerprint,
        },
        **report.spec,
        "stats_key": calibration.key,
        "calibration": {k: s[k] for k in ("data", "data_description", "nsamples", "seqlen", "seed", "dtype")},
        "pruned_layers": {k: round(v, 6) for k, v in report.layers.items()},
        "overall_sparsity": round(report.overall, 6),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(report.seconds, 3),
        "versions": {"zprune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "results": {},
    }


def save_pruned(handle: ModelHandle, provenance: dict, out: Path, overwrite: bool, progress: Progress) -> None:
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise ZpruneUsageError(f"output {out} already exists; pass --overwrite to replace it")
    with progress.task(f"Saving to {out}", None), staged_folder(out, overwrite) as tmp:
        save_model(handle.model, handle.tokenizer, tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1))
        (tmp / "README.md").write_text(model_card(provenance, "hf", out.name))
