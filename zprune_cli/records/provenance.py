"""zprune.json: what a pruned folder was made from, as one typed record written and read here only.

Written by `prune` beside the weights, carried into every export (and into each safetensors header),
read back by `eval`, `export` and `compare`. The file is strict JSON (no NaN), carries a schema version,
and is validated field by field when read; a format-1 file (zprune 0.1, flat keys) is still read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from zprune_cli import __version__
from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.models.resolve import ALIASES, ModelSource, content_fingerprint, hub_source, resolve_model
from zprune_cli.base.staging import replace_atomically

PROVENANCE_FILE = "zprune.json"
SCHEMA_VERSION = 2
METADATA_KEY = "zprune"  # safetensors metadata key holding the provenance as compact JSON


@dataclass(frozen=True)
class BaseModel:
    """The dense model a pruned folder came from: where it was (an absolute folder, or a hub id and revision) and
    what it is (`content`, models.resolve.content_fingerprint), so `eval --baseline` finds it again or refuses."""

    spec: str
    location: str
    fingerprint: str = ""  # where it was and its files' sizes and times: what results and statistics are keyed by
    gguf_file: str | None = None
    revision: str | None = None
    content: str | None = None  # config and weight samples, wherever the files lie (None in records before it)
    relative: str | None = None  # `location` relative to the folder holding this record (set when it is written)

    @classmethod
    def of(cls, source, content: bool = False) -> BaseModel:
        """From a models.resolve.ModelSource; with `content`, its content fingerprint too (a 3 MiB read)."""
        return cls(source.spec, str(source.location), source.fingerprint, source.gguf_file, source.revision,
                   content_fingerprint(source) if content else None)

    @property
    def is_hub(self) -> bool:
        return not os.path.isabs(self.location) and self.spec == self.location

    def placed_in(self, folder: Path) -> BaseModel:
        """This record as written into `folder`. A relative `relative` is kept: the record is rewritten where it lies
        (eval refreshing the results), and the model may have moved with it since `location` was true. Otherwise it
        is made relative to `folder` from the absolute place: `location`, or where an export found the model."""
        if self.relative and not os.path.isabs(self.relative):
            return self
        anchor = self.relative or self.location
        if not os.path.isabs(anchor):
            return self  # a hub id
        try:
            return replace(self, relative=os.path.relpath(anchor, Path(folder).resolve()))
        except ValueError:  # another drive
            return replace(self, relative=None)

    def leaving(self, folder: Path) -> BaseModel:
        """This record, read from `folder`, about to be written into another one (an export): `relative` becomes
        the absolute place the model lies now (`location` while it is there), for `placed_in` to re-anchor."""
        if not self.relative or os.path.isabs(self.relative) or Path(self.location).exists():
            return replace(self, relative=None) if self.relative and not os.path.isabs(self.relative) else self
        return replace(self, relative=os.path.normpath(Path(folder).resolve() / self.relative))


@dataclass(frozen=True)
class CalibrationRecord:
    """The calibration whose statistics the recipe read (None for a method that reads none)."""

    data: str
    nsamples: int
    seqlen: int
    seed: int
    dtype: str = ""
    data_description: str = ""


@dataclass(frozen=True)
class RecipeRecord:
    """The recipe as the folder stores it: its fields and digest, read without the method registry, so a folder
    pruned by a method since renamed or removed stays readable. engine.recipe.recipe_of rebuilds the PruneRecipe
    (and checks the digest) where one is needed."""

    fields: dict[str, Any]
    digest: str | None  # None only in records of zprune 0.1 (format 1), which stored none

    @property
    def method(self) -> str:
        return str(self.fields["method"])

    @property
    def cell_digest(self) -> str:
        """The digest; for a record that stored none, one of its stored fields (marked, never equal to a recipe's)."""
        if self.digest is not None:
            return self.digest
        canonical = json.dumps(self.fields, sort_keys=True, separators=(",", ":"))
        return "v1-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Provenance:
    base_model: BaseModel
    recipe: RecipeRecord
    pruned_layers: dict[str, float]  # full Linear name -> measured sparsity; these are the pruned layers
    overall_sparsity: float  # over pruned_layers, weighted by parameters
    stats_key: str | None = None
    calibration: CalibrationRecord | None = None
    masks: str | None = None  # the masks export applied, when the folder came from `prune --masks`
    dtype: str | None = None  # the precision the weights are stored in
    seconds: float | None = None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    versions: dict[str, str] = field(default_factory=lambda: current_versions())
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> {value, protocol, created}
    export: dict[str, Any] | None = None  # set by `export`: format, source, version, time
    # with --permute: layer -> "native" (its stored weight is N:M as it stands: the permutation was absorbed by
    # its producers, or none was found) or "permuted" (N:M only after its inputs are permuted: mask mapped back)
    nm_layout: dict[str, str] | None = None

    @property
    def cell_digest(self) -> str:
        """What keys this model's results: the recipe digest (marked when the weights came from masks,
        which reproduce the recipe's zeros but not a weight update)."""
        return self.recipe.cell_digest + ("+masks" if self.masks else "")

    # --- JSON -------------------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        out = {"schema": SCHEMA_VERSION, "zprune_version": __version__, **asdict(self)}
        out["recipe"] = dict(self.recipe.fields)
        out["recipe_digest"] = self.recipe.digest
        if self.recipe.digest is None:
            del out["recipe_digest"]
        if self.nm_layout is None:
            del out["nm_layout"]  # records without --permute stay as they were
        return out

    def to_json(self, indent: int | None = 1) -> str:
        try:
            return json.dumps(self.as_dict(), indent=indent, allow_nan=False,
                              separators=None if indent else (",", ":"), sort_keys=indent is None)
        except ValueError as exc:  # a NaN or inf slipped into a measurement
            raise ZpruneError(f"refusing to write a non-finite number into {PROVENANCE_FILE}: {exc}") from None

    @classmethod
    def from_dict(cls, data: Any, where: str = PROVENANCE_FILE) -> Provenance:
        if not isinstance(data, dict):
            raise ZpruneError(f"{where}: expected a JSON object, found {type(data).__name__}")
        if data.get("format") == 1 and "schema" not in data:
            data = _from_format_1(data)
        if data.get("schema") != SCHEMA_VERSION:
            raise ZpruneError(f"{where} has schema {data.get('schema')!r}; this zprune reads schema {SCHEMA_VERSION}")
        try:
            return _parse(data)
        except (KeyError, TypeError, ValueError, ZpruneUsageError) as exc:
            raise ZpruneError(f"{where} is not a valid zprune record: {exc}") from None

    # --- files ------------------------------------------------------------------------------------------
    def write(self, folder: Path) -> None:
        """Write folder/zprune.json (through a temporary file, so a reader never sees half of it)."""
        placed = replace(self, base_model=self.base_model.placed_in(folder))
        replace_atomically(Path(folder) / PROVENANCE_FILE, (placed.to_json() + "\n").encode("utf-8"))

    @classmethod
    def read(cls, folder: str | Path) -> Provenance:
        """Read and validate folder/zprune.json; ZpruneError when the folder is not a zprune output."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ZpruneError(f"{folder} is not a folder")
        path = folder / PROVENANCE_FILE
        if not path.is_file():
            raise ZpruneError(f"{folder} is not a zprune output folder (no {PROVENANCE_FILE})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ZpruneError(f"cannot read {path}: {exc}") from None
        return cls.from_dict(data, str(path))

    def safetensors_metadata(self) -> dict[str, str]:
        """Header metadata for every safetensors file we write ("format": "pt" is what transformers checks)."""
        return {"format": "pt", METADATA_KEY: self.to_json(indent=None)}

    def with_export(self, fmt: str, source: Path) -> Provenance:
        return replace(self, base_model=self.base_model.leaving(source), export={"format": fmt, "source": str(source), "zprune_version": __version__,
                                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def with_results(self, results: dict[str, dict[str, Any]]) -> Provenance:
        return replace(self, results=dict(results))


def is_zprune_folder(folder: str | Path) -> bool:
    return (Path(folder) / PROVENANCE_FILE).is_file()


def current_versions() -> dict[str, str]:
    import torch
    import transformers

    return {"zprune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def _nm_layout(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(v in ("native", "permuted") for v in value.values()):
        raise ValueError("'nm_layout' must map module names to \"native\" or \"permuted\"")
    return {str(k): str(v) for k, v in value.items()}


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _parse(data: dict[str, Any]) -> Provenance:
    known = {"schema", "zprune_version", "recipe_digest", *Provenance.__dataclass_fields__}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}")
    recipe = data["recipe"]
    if not isinstance(recipe, dict) or not isinstance(recipe.get("method"), str):
        raise ValueError("'recipe' must be an object naming its method")
    digest = data.get("recipe_digest")
    if digest is not None and not isinstance(digest, str):
        raise ValueError("'recipe_digest' must be a string")
    layers = data["pruned_layers"]
    if not isinstance(layers, dict) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in layers.values()):
        raise ValueError("'pruned_layers' must map module names to finite sparsities")
    calibration = data.get("calibration")
    return Provenance(
        base_model=_base_model(data["base_model"]),
        recipe=RecipeRecord(dict(recipe), digest),
        pruned_layers={str(k): float(v) for k, v in layers.items()},
        overall_sparsity=float(data["overall_sparsity"]),
        stats_key=data.get("stats_key"),
        calibration=CalibrationRecord(**calibration) if calibration else None,
        masks=data.get("masks"),
        dtype=data.get("dtype"),
        seconds=data.get("seconds"),
        created=str(data.get("created", "")),
        versions=dict(data.get("versions") or {}),
        results=dict(data.get("results") or {}),
        nm_layout=_nm_layout(data.get("nm_layout")),
        export=data.get("export"),
    )


def _base_model(data: Any) -> BaseModel:
    """The base-model record with its fields' types checked: each names a place or a fingerprint, read as paths."""
    if not isinstance(data, dict):
        raise ValueError("'base_model' must be an object")
    model = BaseModel(**data)
    for name in BaseModel.__dataclass_fields__:
        value = getattr(model, name)
        if not (isinstance(value, str) or (value is None and name not in ("spec", "location"))):
            raise ValueError(f"'base_model.{name}' must be a string, not {type(value).__name__}")
    return model


_RECIPE_V1 = ("method", "sparsity", "pattern", "scope", "allocation", "owl_m", "owl_lambda", "reconstruct", "propagate",
              "ignore", "overrides", "method_options")


def _from_format_1(old: dict[str, Any]) -> dict[str, Any]:
    """zprune 0.1 wrote the recipe's fields at the top level; lift them into `recipe`."""
    recipe = {k: old[k] for k in _RECIPE_V1 if old.get(k) is not None}
    if recipe.get("pattern", "unstructured") != "unstructured":
        recipe.pop("sparsity", None)
    calibration = old.get("calibration")
    return {
        "schema": SCHEMA_VERSION,
        "base_model": {k: v for k, v in (old.get("base_model") or {}).items() if k in BaseModel.__dataclass_fields__},
        "recipe": recipe,
        "pruned_layers": old.get("pruned_layers") or {},
        "overall_sparsity": old.get("overall_sparsity", 0.0),
        "stats_key": old.get("stats_key"),
        "calibration": {k: v for k, v in calibration.items() if k in CalibrationRecord.__dataclass_fields__} if calibration else None,
        "masks": old.get("masks"),
        "seconds": old.get("seconds"),
        "created": old.get("created", ""),
        "versions": old.get("versions") or {},
        "results": {},
        "export": old.get("export"),
    }


def locate_base_model(base: BaseModel, folder: Path) -> tuple[ModelSource, str | None]:
    """The dense model that the record in `folder` names: where it was, else where it lies relative to `folder` as
    it did then (both moved together), else its hub id or alias; never its spec read against the working
    directory. Returns (source, a warning or None). A record without a content fingerprint (an older zprune) is
    verified by its location fingerprint while that still matches, else used with a warning that it cannot be.
    ZpruneError, naming each place tried, when no model there is the one recorded."""
    where, tried = Path(folder) / PROVENANCE_FILE, []
    for spec in _base_candidates(base, Path(folder)):
        try:
            source = hub_source(spec, base.revision) if base.is_hub else resolve_model(spec, base.revision)
        except ZpruneError:
            tried.append(f"nothing at {spec}")
            continue
        if base.content is None:
            if source.fingerprint == base.fingerprint:
                return source, None
            return source, (f"{where} records no content fingerprint of its base model (written by an older zprune): "
                            f"{spec} is measured as the dense baseline unverified")
        found = content_fingerprint(source)
        if found == base.content:
            return source, None
        if found is None and base.is_hub:  # not in the local hub cache: the id and revision are all there is
            return source, f"{base.spec} is not in the local hub cache: the dense baseline is downloaded unverified"
        tried.append(f"{spec} holds another model (content {found})")
    raise ZpruneError(f"the base model that {where} records ({base.spec}, content {base.content or 'unrecorded'}) is in "
                      f"none of its places: {'; '.join(tried) or 'none recorded'}; --baseline measures no other model in its place")


def _base_candidates(base: BaseModel, folder: Path) -> list[str]:
    """Where the base model may be, in order, each once."""
    def model_at(path: Path) -> str:
        return str(path / base.gguf_file) if base.gguf_file else str(path)

    if base.is_hub:
        return [base.spec]
    places = [Path(base.location)]
    if base.relative:
        places.append(folder / base.relative)
    elif base.content is None and not os.path.isabs(base.spec) and base.spec not in ALIASES:
        places.append(folder / base.spec)  # an older record: its relative spec read against the pruned folder
    candidates = list(dict.fromkeys(model_at(Path(os.path.normpath(p))) for p in places))
    return candidates + ([base.spec] if base.spec in ALIASES else [])
