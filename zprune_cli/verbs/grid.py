"""`Grid`: a `compare` grid as a value: methods x sparsities x patterns x (refine, reconstruct) x permute x bit
width, the recipe options every cell shares, and the evaluation and calibration of the whole grid.

A grid is read in ONE place, `Grid.parse`, from layers of values: a named grid of zprune.toml, then the
command's flags on top. Each layer is checked against the one list of grid keys (`settings.GRID_LISTS`,
`settings.GRID_SCALARS`), an error naming the key and where it came from.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from zprune_cli.base.errors import ZpruneUsageError
from zprune_cli.evaluation.run import Evaluation
from zprune_cli.base.masks import Pattern
from zprune_cli.methods import method_names
from zprune_cli.methods.quantize import NO_QUANTIZATION
from zprune_cli.engine.recipe import PruneRecipe
from zprune_cli.base.settings import GRID_LISTS, GRID_SCALARS, Calibration, Settings, check_grid, split_list

GRID_KEYS = (*GRID_LISTS, *GRID_SCALARS)
FLAGS = "flags"  # the origin of the command's flags: their errors name the flag itself ("--sparsity takes numbers")
SHARED_KEYS = ("scope", "allocation", "owl_m", "owl_lambda", "propagate", "group_size", "sym", "act_order", "permute_layout")


@dataclass(frozen=True)
class Grid:
    """Every cell is one PruneRecipe (`recipes()`); the dense model is always a row besides them."""

    methods: tuple[str, ...] | None = None  # None: every registered method
    sparsities: tuple[float, ...] = (0.5,)
    patterns: tuple[str, ...] = ("unstructured",)
    reconstruct: tuple[str, ...] = ("none",)
    refine: tuple[str, ...] = ("none",)
    permute: tuple[str, ...] = ("none",)
    wbits: tuple[float, ...] = (float(NO_QUANTIZATION),)
    shared: Mapping[str, Any] = field(default_factory=dict)  # the other PruneRecipe fields, one value for every cell
    evaluation: Evaluation = field(default_factory=Evaluation)
    calibration: Calibration | None = None  # None: the settings' calibration

    def recipes(self) -> list[PruneRecipe]:
        return grid_recipes(method_names() if self.methods is None else self.methods, self.sparsities, self.patterns, self.reconstruct, self.refine,
                            self.permute, self.wbits, **self.shared)

    @classmethod
    def parse(cls, layers: Sequence[tuple[str, Mapping[str, Any]]], settings: Settings, *, ignore: Sequence[str] = (),
              method_options: Mapping[str, Any] | None = None, tasks_dir: str | None = None) -> Grid:
        """The grid of `layers` [(where, {grid key: value})], later layers over earlier ones (a named grid, then
        flags); a key of None is not given. `ignore`, `method_options` and `tasks_dir` have no grid key."""
        g: dict[str, Any] = {}
        for where, values in layers:
            given = {k: v for k, v in values.items() if v is not None}
            if where == FLAGS:
                given = {k: split_list(v, GRID_LISTS[k], _flag(k)) if k in GRID_LISTS else v for k, v in given.items()}
            g |= check_grid(given, where)
        shared = {k: g[k] for k in SHARED_KEYS if k in g} | {"ignore": tuple(ignore), "overrides": settings.sparsity_overrides,
                                                           "method_options": dict(method_options or {})}
        data = g.get("eval", ["wikitext2"])
        evaluation = Evaluation(data=() if data == ["none"] else tuple(data), seqlen=g.get("eval_seqlen"),
                                max_windows=g.get("max_windows"), tasks=tuple(g.get("tasks", ())), tasks_dir=tasks_dir,
                                limit=g.get("limit"), batch_size=g.get("batch_size", 1))
        calibration = settings.with_flags(**{k: g.get(k) for k in ("data", "nsamples", "seqlen", "seed")}).calibration
        axes = {name: tuple(g[key]) for name, key in (("methods", "methods"), ("sparsities", "sparsity"), ("patterns", "patterns"),
                                                      ("reconstruct", "reconstruct"), ("refine", "refine"),
                                                      ("permute", "permute"), ("wbits", "wbits")) if key in g}
        return cls(**axes, shared=shared, evaluation=evaluation, calibration=calibration)


def _flag(key: str) -> str:
    """The `compare` flag of a grid key (its axes are spelled in the singular there)."""
    return {"methods": "--method", "patterns": "--pattern"}.get(key, "--" + key.replace("_", "-"))


def grid_recipes(methods: str | Sequence[str], sparsities: str | Sequence[float] = (0.5,),
                 patterns: str | Sequence[str] = ("unstructured",), reconstruct: str | bool | Sequence[str] = "none",
                 refine: str | Sequence[str] = "none", permute: str | Sequence[str] = "none",
                 wbits: str | Sequence[float] = (16,), **shared: Any) -> list[PruneRecipe]:
    """Every method x pattern x refine x reconstruct x bit width x permute (N:M patterns; unstructured cells
    take permute none), and x sparsity for unstructured (N:M fixes its own n/m); `shared` holds the other
    recipe fields (scope, allocation, propagate, ignore, overrides, group_size, sym, act_order, ...).

    A combination that normalises to a cell already in the grid (sparsegpt with --reconstruct pcg is
    plain sparsegpt) is listed once; sparsity 0 without quantization is the dense row, always there. A shared
    permute_layout applies to the permuted cells (the others take none, without a warning for each)."""
    methods = [m.lower() for m in split_list(methods, str, "--method")]  # any case; repeats are refused below
    ratios = split_list(sparsities, float, "--sparsity")
    patterns = [str(Pattern.parse(p)) for p in split_list(patterns, str, "--pattern")]
    finishes = list(itertools.product(_axis(refine, "--refine"), _axis(reconstruct, "--reconstruct")))
    orders = _axis(permute, "--permute")
    widths = split_list(wbits, float, "--wbits")
    if not methods or not patterns or (not ratios and "unstructured" in patterns):
        raise ZpruneUsageError("the grid is empty: give at least one method, one pattern and (for unstructured) one sparsity")
    for axis, flag in ((methods, "--method"), (ratios, "--sparsity"), (patterns, "--pattern"), (finishes, "--refine/--reconstruct"),
                       (orders, "--permute"), (widths, "--wbits")):
        if len(set(axis)) != len(axis):
            raise ZpruneUsageError(f"the grid names a {flag} value twice")
    recipes: dict[PruneRecipe, None] = {}
    for method, pattern, (refine_one, reconstruct_one), bits in itertools.product(methods, patterns, finishes, widths):
        for ratio, order in ([(None, o) for o in orders] if pattern != "unstructured" else [(r, "none") for r in ratios]):
            if ratio == 0 and bits == NO_QUANTIZATION:
                continue
            cell = shared if order != "none" else {k: v for k, v in shared.items() if k != "permute_layout"}
            recipes[PruneRecipe(method=method, sparsity=ratio, pattern=pattern, refine=refine_one,
                                reconstruct=reconstruct_one, permute=order, wbits=bits, **cell)] = None
    if not recipes:
        raise ZpruneUsageError("the grid is empty: sparsity 0 without --wbits is the dense model, which every grid has")
    return list(recipes)


def _axis(values: str | bool | Sequence[str], flag: str) -> list[str | bool]:
    """A comma list, a list, or one value (True / False for the old --reconstruct flag)."""
    return [values] if isinstance(values, bool) else [v.lower() for v in split_list(values, str, flag)]


