"""README.md of a pruned folder or export: the recipe, calibration, measured results, per-layer sparsity."""

from __future__ import annotations

from typing import Any

from zprune_cli.models.resolve import HUB_ID
from zprune_cli.records.provenance import Provenance
from zprune_cli.engine.recipe import recipe_of


_LOADING = {
    "hf": (
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'model = AutoModelForCausalLM.from_pretrained("{path}")\n'
        'tokenizer = AutoTokenizer.from_pretrained("{path}")\n```\n\n'
        "The weights are stored dense (pruned entries are zeros), so plain transformers loads them."
    ),
    "sparse": (
        "```python\nimport zprune_cli\n\n"
        'model = zprune_cli.load_pretrained("{path}")\n'
        'tokenizer = zprune_cli.load_tokenizer("{path}")\n```\n\n'
        "Pruned weights are stored as their non-zero values plus a bitmask (see `zprune-sparse.json`); "
        "`load_pretrained` restores them dense, bit for bit. Plain transformers cannot read this folder."
    ),
    "sparse-24-bitmask": (
        "```python\nimport zprune_cli\n\n"
        'model = zprune_cli.load_pretrained("{path}")\n'
        'tokenizer = zprune_cli.load_tokenizer("{path}")\n```\n\n'
        "Legacy compressed-tensors `sparse-24-bitmask` layout (2:4 weights as half their values plus a "
        "bitmask). Current vLLM and compressed-tensors releases no longer load it; `load_pretrained` does."
    ),
}


def model_card(p: Provenance, fmt: str, name: str) -> str:
    """README.md text for a folder holding the model that `p` describes, stored as `fmt`."""
    r = recipe_of(p.recipe)
    front = ["---", "library_name: transformers", "tags:"] + [f"- {t}" for t in ("zprune", "pruned", "sparse", r.method)]
    location = p.base_model.location
    if HUB_ID.match(location) and not location.startswith(("/", ".", "~")):
        front.append(f"base_model: {location}")
    front.append("---")
    spec = p.base_model.spec or location
    lines = front + [
        "", f"# {name}", "",
        f"`{spec}` pruned with [zprune](https://pypi.org/project/zprune/) {p.versions.get('zprune', '?')} "
        f"({r.label()}), stored as `{fmt}`.", "",
        "## Pruning recipe", "", f"Recipe digest `{r.digest}`" + (f"; masks applied from `{p.masks}`" if p.masks else "") + ".", "",
        "| setting | value |", "|---|---|",
    ]
    lines += [f"| {k} | {_value(v)} |" for k, v in r.as_dict().items()]
    lines += [f"| measured sparsity (pruned layers) | {_pct(p.overall_sparsity)} |", _base_line(p)]
    lines += [f"| stored precision | {p.dtype} |"] if p.dtype else []
    lines.append("")
    lines += _calibration(p)
    if p.results:
        lines += ["## Measured results", "", "| metric | value | protocol |", "|---|---|---|"]
        lines += [f"| {metric} | {_value(row.get('value'))} | {_value(row.get('protocol'))} |" for metric, row in sorted(p.results.items())]
        lines.append("")
    lines += [f"## Sparsity per layer ({len(p.pruned_layers)} layers)", "", "| layer | sparsity |", "|---|---|"]
    lines += [f"| `{k}` | {_pct(v)} |" for k, v in p.pruned_layers.items()]
    lines += ["", "## Loading", "", _LOADING.get(fmt, _LOADING["hf"]).format(path=name), "", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in p.versions.items()]
    return "\n".join(lines) + "\n"


def _base_line(p: Provenance) -> str:
    b = p.base_model
    return (f"| base model | `{b.spec}` (fingerprint `{b.fingerprint}`" + (f", GGUF `{b.gguf_file}`" if b.gguf_file else "")
            + (f", revision `{b.revision}`" if b.revision else "") + (f", content `{b.content}`" if b.content else "") + ") |")


def _calibration(p: Provenance) -> list[str]:
    c = p.calibration
    if c is None:
        return ["## Calibration", "", "None: this recipe reads no activation statistics.", ""]
    return ["## Calibration", "", f"{c.nsamples} windows of {c.seqlen} tokens from `{c.data}`, seed {c.seed}, {c.dtype}; "
            f"statistics key `{p.stats_key}`.", ""]


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value) or "none"
    return "none" if value is None else str(value).replace("|", "\\|")
