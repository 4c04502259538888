"""zprune.json: what a pruned folder was made from, carried into every export and its model card."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from zprune_cli import __version__
from zprune_cli.errors import ZpruneError

PROVENANCE_FILE = "zprune.json"
PROVENANCE_FORMAT = 1
METADATA_KEY = "zprune"  # safetensors metadata key holding the provenance as compact JSON
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def read_provenance(folder: Path) -> dict[str, Any]:
    """Read and check `folder/zprune.json`; raise ZpruneError when the folder is not a zprune output."""
    if not folder.is_dir():
        raise ZpruneError(f"{folder} is not a folder")
    path = folder / PROVENANCE_FILE
    if not path.is_file():
        raise ZpruneError(f"{folder} is not a zprune output folder (no {PROVENANCE_FILE})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ZpruneError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != PROVENANCE_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ZpruneError(f"{path} has format {found!r}; this zprune reads format {PROVENANCE_FORMAT}")
    layers = data.get("pruned_layers", {})
    if not isinstance(layers, dict):
        raise ZpruneError(f"{path}: 'pruned_layers' must map module names to sparsities")
    data["pruned_layers"] = layers
    return data


def with_export(provenance: dict[str, Any], fmt: str, source: Path) -> dict[str, Any]:
    """The source's provenance plus a record of this export (the original keys are unchanged)."""
    out = dict(provenance)
    out["export"] = {
        "format": fmt,
        "source": str(source),
        "zprune_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return out


def safetensors_metadata(provenance: dict[str, Any]) -> dict[str, str]:
    """Header metadata for every safetensors file we write (all values must be str).

    "format": "pt" is what transformers checks before loading a file.
    """
    return {"format": "pt", METADATA_KEY: json.dumps(provenance, separators=(",", ":"), sort_keys=True)}


def write_provenance(folder: Path, provenance: dict[str, Any]) -> None:
    (folder / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")


def weights_updated(provenance: dict[str, Any]) -> bool:
    """True when pruning changed surviving weights too (masks alone cannot reproduce them)."""
    return bool(provenance.get("reconstruct")) or provenance.get("method") == "sparsegpt"


# --- model card ------------------------------------------------------------------------------------

_LOADING = {
    "hf": (
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'model = AutoModelForCausalLM.from_pretrained("{path}")\n'
        'tokenizer = AutoTokenizer.from_pretrained("{path}")\n```\n\n'
        "The weights are stored dense (pruned entries are zeros), so plain transformers loads them."
    ),
    "sparse": (
        "```python\nimport zprune_cli\n\n"
        'model, tokenizer = zprune_cli.load_pretrained("{path}")\n```\n\n'
        "Pruned weights are stored as their non-zero values plus a bitmask (see `zprune-sparse.json`); "
        "`load_pretrained` restores them dense, bit for bit. Plain transformers cannot read this folder."
    ),
    "sparse-24-bitmask": (
        "```python\nimport zprune_cli\n\n"
        'model, tokenizer = zprune_cli.load_pretrained("{path}")\n```\n\n'
        "Legacy compressed-tensors `sparse-24-bitmask` layout (2:4 weights as half their values plus a "
        "bitmask). Current vLLM and compressed-tensors releases no longer load it; `load_pretrained` does."
    ),
}


def model_card(provenance: dict[str, Any], fmt: str, name: str) -> str:
    """README.md for an exported model: settings, calibration, per-layer sparsity, results, versions."""
    base = provenance.get("base_model") or {}
    calibration = provenance.get("calibration") or {}
    layers: dict[str, float] = provenance.get("pruned_layers") or {}
    method = str(provenance.get("method", "unknown"))
    tags = ["zprune", "pruned", "sparse", method]
    front = ["---", "library_name: transformers", "tags:"] + [f"- {t}" for t in tags]
    location = str(base.get("location") or "")
    if _HUB_ID.match(location) and not location.startswith(("/", ".", "~")):
        front.append(f"base_model: {location}")
    front.append("---")

    spec = base.get("spec") or location or "an unknown model"
    lines = front + [
        "",
        f"# {name}",
        "",
        f"`{spec}` pruned with [zprune](https://pypi.org/project/zprune/) {provenance.get('zprune_version', '?')} "
        f"({method}, {_pct(provenance.get('sparsity'))} target sparsity), exported as `{fmt}`.",
        "",
        "## Pruning",
        "",
        "| setting | value |",
        "|---|---|",
        f"| method | {method} |",
        f"| target sparsity | {_pct(provenance.get('sparsity'))} |",
        f"| measured sparsity (pruned layers) | {_pct(provenance.get('overall_sparsity'))} |",
        f"| pattern | {provenance.get('pattern', '?')} |",
        f"| scope | {provenance.get('scope', '?')} |",
        f"| allocation | {provenance.get('allocation', '?')} |",
        f"| statistics propagation | {provenance.get('propagate', '?')} |",
        f"| weight reconstruction | {'yes' if provenance.get('reconstruct') else 'no'} |",
        f"| base model | `{spec}` (fingerprint `{base.get('fingerprint', '?')}`"
        + (f", GGUF `{base['gguf_file']}`" if base.get("gguf_file") else "")
        + (f", revision `{base['revision']}`" if base.get("revision") else "")
        + ") |",
        "",
        "## Calibration",
        "",
        f"{calibration.get('nsamples', '?')} windows of {calibration.get('seqlen', '?')} tokens from "
        f"`{calibration.get('data', '?')}`, seed {calibration.get('seed', '?')}; "
        f"statistics key `{provenance.get('stats_key', '?')}`.",
        "",
    ]
    results = _flatten(provenance.get("results") or {})
    if results:
        lines += ["## Measured results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in results]
        lines.append("")
    lines += [f"## Sparsity per layer ({len(layers)} layers)", "", "| layer | sparsity |", "|---|---|"]
    lines += [f"| `{k}` | {_pct(v)} |" for k, v in layers.items()]
    lines += ["", "## Loading", "", _LOADING.get(fmt, _LOADING["hf"]).format(path=name), "", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in _versions().items()]
    return "\n".join(lines) + "\n"


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    # Results may nest (per dataset, per task); a card shows one row per leaf.
    if isinstance(data, dict):
        rows: list[tuple[str, Any]] = []
        for key, value in data.items():
            rows += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(data, float):
        return [(prefix, f"{data:.4g}")]
    return [(prefix, data)]


def _versions() -> dict[str, str]:
    import safetensors
    import torch
    import transformers

    return {"zprune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__}
