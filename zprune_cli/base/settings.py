"""Settings, resolved once at the edge: built-in defaults < zprune.toml or [tool.zprune] < ZPRUNE_* env < flags.

The library never reads a TOML file by itself: its verbs take a `Settings` (or none, which means the
built-in defaults under the environment, `Settings.from_env()`). The CLI calls `load_settings`, which
also reads the nearest zprune.toml. Every value is type-checked; a bad one is refused (exit 2) with the
key and the file or variable it came from.

zprune.toml (or [tool.zprune] in pyproject.toml):

    cache_dir = "/data/zprune-cache"      # also ZPRUNE_HOME
    data_dir = "/data/llm-datasets"       # also ZPRUNE_DATA_DIR
    device = "cuda"                       # also ZPRUNE_DEVICE
    dtype = "bfloat16"                    # also ZPRUNE_DTYPE
    [calibration]                         # also ZPRUNE_DATA, ZPRUNE_NSAMPLES, ZPRUNE_SEQLEN, ZPRUNE_SEED
    data = "c4"
    nsamples = 128
    seqlen = 2048
    seed = 0
    [sparsity]                            # per-layer overrides: regex = ratio (the first match wins)
    "mlp\\.down_proj" = 0.4
    [grids.paper]                         # named grids for `zprune compare --grid paper`
    methods = ["wanda", "zpruner"]
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from zprune_cli.base.choices import RECONSTRUCTIONS, REFINEMENTS
from zprune_cli.base.errors import ZpruneUsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MAX_SEED = 2**32 - 1  # numpy's and Python's seeding range that every consumer accepts


@dataclass(frozen=True)
class Calibration:
    """Which calibration windows: the text source, how many windows, their length, the seed."""

    data: str = "c4"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.data, str) or not self.data.strip():
            raise ZpruneUsageError(f"--data must name a text source, got {self.data!r}")
        for name, low in (("nsamples", 1), ("seqlen", 2), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ZpruneUsageError(f"--{name} must be an integer, got {value!r}")
            if value < low:
                raise ZpruneUsageError(f"--{name} must be at least {low} (got {value})")
        if self.seed > MAX_SEED:
            raise ZpruneUsageError(f"--seed must be at most {MAX_SEED} (got {self.seed})")


@dataclass(frozen=True)
class Settings:
    """Everything global: where things live, the device, and the defaults a command starts from."""

    cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    data_dir: Path | None = None  # where local copies of named datasets live (one resolver for all uses)
    device: str = "auto"
    dtype: str = "auto"
    offload: str = "none"  # "disk": decoder blocks read from safetensors only while they run (ModelHandle.of)
    calibration: Calibration = Calibration()
    sparsity_overrides: tuple[tuple[str, float], ...] = ()  # (regex, ratio), from [sparsity]
    grids: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    config_file: Path | None = None  # the TOML these came from, to name it in messages

    def __post_init__(self) -> None:  # plain strings are accepted from library callers
        object.__setattr__(self, "cache_dir", Path(self.cache_dir).expanduser())
        if self.data_dir is not None and not isinstance(self.data_dir, Path):
            object.__setattr__(self, "data_dir", _data_dir(self.data_dir, "Settings(data_dir=...)"))
        if not isinstance(self.calibration, Calibration):
            raise ZpruneUsageError(f"Settings.calibration must be a Calibration, got {self.calibration!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Built-in defaults under ZPRUNE_* variables: what a library call without settings uses."""
        return _apply_env(cls(), os.environ if environ is None else environ)

    def with_flags(self, **flags: Any) -> Settings:
        """These settings with the given (non-None) flag values on top."""
        return _apply_flags(self, {k: v for k, v in flags.items() if v is not None}, "flag")

    def grid(self, name: str) -> dict[str, Any]:
        if name not in self.grids:
            where = self.config_file or "zprune.toml or [tool.zprune.grids]"
            raise ZpruneUsageError(f"no grid named '{name}' in {where} (known: {', '.join(sorted(self.grids)) or 'none defined'})")
        return dict(self.grids[name])


def default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "zprune"


def resolve(settings: Settings | None) -> Settings:
    """The settings a library verb uses: the given ones, else the defaults under the environment."""
    return settings if settings is not None else Settings.from_env()


def load_settings(flags: Mapping[str, Any] | None = None, start: Path | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """defaults < the nearest zprune.toml / [tool.zprune] (from `start` upwards) < ZPRUNE_* < flags."""
    path, table = find_config(start)
    settings = Settings(config_file=path)
    if table:
        settings = _apply_toml(settings, table, path)
    settings = _apply_env(settings, os.environ if environ is None else environ)
    return _apply_flags(settings, {k: v for k, v in (flags or {}).items() if v is not None}, "flag")


# --- reading the TOML -------------------------------------------------------------------------------------


def find_config(start: Path | None = None) -> tuple[Path | None, dict[str, Any]]:
    """(path, table): the nearest zprune.toml (whole file) or pyproject.toml's [tool.zprune]."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        own = folder / "zprune.toml"
        if own.is_file():
            return own, _read(own)
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            section = _read(pyproject).get("tool", {}).get("zprune")
            if section is not None:
                return pyproject, section
    return None, {}


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ZpruneUsageError(f"cannot read config {path}: {exc}") from None


_TOP_KEYS = {"cache_dir", "data_dir", "device", "dtype", "calibration", "sparsity", "grids"}
_CALIBRATION_KEYS = {"data": str, "nsamples": int, "seqlen": int, "seed": int}


def _apply_toml(settings: Settings, table: dict[str, Any], path: Path) -> Settings:
    unknown = sorted(set(table) - _TOP_KEYS)
    if unknown:
        raise ZpruneUsageError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_TOP_KEYS))})")
    flat = {k: table[k] for k in ("cache_dir", "data_dir", "device", "dtype") if k in table}
    for key, value in flat.items():
        _expect(value, str, key, path)
    calibration = _table(table.get("calibration", {}), "calibration", path)
    for key, value in calibration.items():
        if key not in _CALIBRATION_KEYS:
            raise ZpruneUsageError(f"{path}: unknown key calibration.{key} (known: {', '.join(_CALIBRATION_KEYS)})")
        _expect(value, _CALIBRATION_KEYS[key], f"calibration.{key}", path)
    flat.update(calibration)
    settings = _apply_flags(settings, flat, str(path))
    overrides = _table(table.get("sparsity", {}), "sparsity", path, "a table of regex = ratio (per-layer overrides)")
    for key, value in overrides.items():
        _expect(value, float, f"sparsity.{key!r}", path)
    grids = _table(table.get("grids", {}), "grids", path)
    checked = {name: MappingProxyType(check_grid(_table(g, f"grids.{name}", path), f"{path}: grids.{name}"))
               for name, g in grids.items()}
    return replace(settings, sparsity_overrides=tuple((str(k), float(v)) for k, v in overrides.items()),
                   grids=MappingProxyType(checked))


def _table(value: Any, key: str, path: Path, what: str = "a table") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ZpruneUsageError(f"{path}: '{key}' must be {what}, got {type(value).__name__} {value!r}")
    return value


def _expect(value: Any, kind: type, key: str, where: Any) -> None:
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise ZpruneUsageError(f"{where}: '{key}' must be {_KIND_NAMES[kind]}, got {type(value).__name__} {value!r}")


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}

# A grid value is a list, or a comma-separated string, of these; scalars are plain values.
GRID_LISTS: dict[str, type] = {"methods": str, "sparsity": float, "patterns": str, "eval": str, "tasks": str,
                                "reconstruct": str, "refine": str, "permute": str, "wbits": float}
GRID_SCALARS: dict[str, type] = {
    "propagate": str, "allocation": str, "scope": str, "owl_m": float, "owl_lambda": float,
    "data": str, "nsamples": int, "seqlen": int, "seed": int, "eval_seqlen": int, "max_windows": int, "limit": int,
    "batch_size": int,  # evaluation batch (perplexity windows, lm-eval requests); not part of a protocol
    "group_size": int, "sym": bool, "act_order": bool,  # quantization, shared by the cells of every bit width
    "permute_layout": str,  # shared by the cells of every --permute
}


def check_grid(grid: dict[str, Any], where: str) -> dict[str, Any]:
    """A named grid with its values type-checked and lists normalised to Python lists."""
    unknown = sorted(set(grid) - set(GRID_LISTS) - set(GRID_SCALARS))
    if unknown:
        known = ", ".join(sorted({*GRID_LISTS, *GRID_SCALARS}))
        raise ZpruneUsageError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {known})")
    out: dict[str, Any] = {}
    for key, value in grid.items():
        if key == "reconstruct" and isinstance(value, bool):  # the old on/off spelling: true means obs
            out[key] = ["obs" if value else "none"]
        elif key in GRID_LISTS:
            out[key] = split_list(value, GRID_LISTS[key], f"{where}.{key}")
            _check_choices(out[key], key, where)
        else:
            kind = GRID_SCALARS[key]
            if kind is bool:
                if not isinstance(value, bool):
                    raise ZpruneUsageError(f"{where}: '{key}' must be true or false, got {value!r}")
            else:
                _expect(value, kind, key, where)
            out[key] = value
    return out


# Grid keys whose values are names: checked here so a typo in a TOML fails before any work.
GRID_CHOICES = {"reconstruct": RECONSTRUCTIONS, "refine": REFINEMENTS}


def _check_choices(values: list, key: str, where: str) -> None:
    choices = GRID_CHOICES.get(key)
    bad = [v for v in values if choices and v.lower().partition(":")[0] not in choices]
    if bad:
        raise ZpruneUsageError(f"{where}: '{key}' takes {', '.join(choices)}, got {bad[0]!r}")


def split_list(value: Any, kind: type, what: str) -> list:
    """'a, b' or ['a', 'b'] (or one number) -> a list of `kind`; anything else is refused naming `what`."""
    if isinstance(value, str):
        items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]
    else:
        raise ZpruneUsageError(f"{what} must be a list or a comma-separated string, got {value!r}")
    convert: Callable[[Any], Any] = _to_float if kind is float else _to_str
    return [convert(v, what) for v in items]


def _to_float(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ZpruneUsageError(f"{what} takes numbers, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ZpruneUsageError(f"{what} takes numbers, got {value!r}") from None


def _to_str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ZpruneUsageError(f"{what} takes names, got {value!r}")
    return value.strip()


# --- environment and flags --------------------------------------------------------------------------------

ENV = {"ZPRUNE_HOME": "cache_dir", "ZPRUNE_DATA_DIR": "data_dir", "ZPRUNE_DEVICE": "device", "ZPRUNE_DTYPE": "dtype",
       "ZPRUNE_DATA": "data", "ZPRUNE_NSAMPLES": "nsamples", "ZPRUNE_SEQLEN": "seqlen", "ZPRUNE_SEED": "seed"}


def _apply_env(settings: Settings, environ: Mapping[str, str]) -> Settings:
    values: dict[str, Any] = {}
    for variable, key in ENV.items():
        text = environ.get(variable)
        if not text:
            continue
        if key in ("nsamples", "seqlen", "seed"):
            try:
                values[key] = int(text)
            except ValueError:
                raise ZpruneUsageError(f"${variable} must be an integer, got {text!r}") from None
        else:
            values[key] = text
    return _apply_flags(settings, values, "environment")


def _apply_flags(settings: Settings, values: Mapping[str, Any], origin: str) -> Settings:
    unknown = sorted(set(values) - {"cache_dir", "data_dir", "device", "dtype", *_CALIBRATION_KEYS})
    if unknown:
        raise ZpruneUsageError(f"unknown setting(s) from {origin}: {', '.join(unknown)}")
    changes: dict[str, Any] = {}
    if "cache_dir" in values:
        changes["cache_dir"] = Path(values["cache_dir"]).expanduser()
    if "data_dir" in values:
        changes["data_dir"] = _data_dir(values["data_dir"], origin)
        if changes["data_dir"] is None:
            del changes["data_dir"]
    for key in ("device", "dtype"):
        if key in values:
            changes[key] = str(values[key])
    calibration = {k: values[k] for k in _CALIBRATION_KEYS if k in values}
    if calibration:
        try:
            changes["calibration"] = replace(settings.calibration, **calibration)
        except ZpruneUsageError as exc:
            raise ZpruneUsageError(str(exc) if origin == "flag" else f"{origin}: {exc}") from None
    return replace(settings, **changes)


def _data_dir(value: Any, origin: str) -> Path | None:
    """The data folder a setting names. A flag or a config file naming a missing folder is refused; the
    environment is ambient (an exported variable outlives the folder, and a fresh clone has none of the
    folders a README may mention), so there it is named in a warning and ignored."""
    path = Path(value).expanduser().resolve()
    if path.is_dir():
        return path
    if origin == "environment":
        logging.getLogger("zprune").warning(
            "ignoring $ZPRUNE_DATA_DIR=%s: not a folder (named datasets are read from the hub or the samples shipped "
            "with zprune)", value)
        return None
    raise ZpruneUsageError(f"data directory {value} (from {origin}) is not a folder")


