"""PruneRecipe: every setting that changes the pruned weights, as one frozen, validated value.

A recipe is built at the edge (flags, TOML, a compare grid, library code) and normalised to what takes
effect, so two recipes that prune the same weights are equal and have the same `digest`, and two that
differ in any weight-changing field differ. The digest keys pruned-propagation statistics, results cells
and leaderboard rows.

Normalisation rules (each said once on stderr through the `zprune` logger when it changes a value the
user set; refusals raise ZpruneUsageError, exit 2, naming both fields):
- N:M fixes the sparsity to n/m: a different explicit `sparsity` is refused; `scope` does not apply
  (every group of m prunes exactly n) and is dropped.
- `allocation="owl"` with N:M is refused (OWL varies the sparsity per block; N:M cannot).
- `owl_m`/`owl_lambda` without `allocation="owl"` are refused (they would do nothing), naming the option.
- A method that does not rank by scope (SparseGPT chooses per block of columns) drops `scope`; other
  methods record their default scope when none is given.
- `reconstruct` is "none", "obs" (SparseGPT's update with the mask fixed; `True` means this) or "pcg"
  (the exact least-squares weights on the mask); with a method that updates weights itself (SparseGPT,
  ALPS) it is dropped, and so is `refine`.
- `refine` is "none" or "swaps:ROUNDS" ("swaps" alone takes the default number of rounds).
- `propagate="auto"` resolves to "pruned" for methods that update weights or with `reconstruct`, else
  "dense"; a method that reads no statistics (magnitude) without reconstruction always resolves to
  "dense", since both give the same weights.
- Method options are checked by the method and completed with its defaults (`ria` == `ria a=0.5`).
- `permute` is "none", "heuristic" or "lsa" (N:M channel permutation, methods/permutation.py); with an
  unstructured pattern anything but "none" is refused. With `wbits`, the kept weights are quantized by GPTQ after
  the permuted mask, in the column order the layer is stored in (SparseGPT's joint walk too: it walks the
  permuted columns, which a layer whose mask is mapped back does not store contiguously). "none" is left out of
  `as_dict()` and so of the digest, which keeps every recipe written before the field existed at its digest.
- `permute_layout` is "native" (the default: a layer whose producers can absorb its permutation only when it
  is restricted, o_proj's to within each key-value head, gets the restricted search and is stored natively
  N:M) or "free" (every layer's permutation searched over all its columns; only layers whose producers absorb
  any permutation, down_proj's, are stored natively N:M, the others keep their mask mapped back, as RIA's
  code). Without `permute` it is "native"; "native" is left out of `as_dict()` and the digest.
- `ignore` regexes are sorted and de-duplicated (their order does not matter); `overrides` keep their
  order (the first matching regex wins).
- `wbits` 2..8 quantizes the kept weights (methods/quantize.py), 16 (the default) leaves them in floating
  point. With 16, `group_size`, `sym` and `act_order` are dropped (said when set) and the four fields are
  left out of `as_dict()` and the digest, so every recipe without quantization keeps its digest; with
  2..8 they are completed (group 128, asymmetric, no act-order) and all four are part of the digest.
  Quantization reads the Gram and updates weights: `auto` propagation is then "pruned", and sparsity
  0 is allowed (plain GPTQ). `act_order` with a method that quantizes inside its own N:M walk
  (SparseGPT) is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping

from zprune_cli.base.choices import RECONSTRUCTIONS, REFINEMENTS, SCOPES
from zprune_cli.base.errors import ZpruneError, ZpruneUsageError
from zprune_cli.base.masks import Pattern
from zprune_cli.methods import get_method, method_options
from zprune_cli.methods.base import Cost, Method
from zprune_cli.methods.obs import obs_flops
from zprune_cli.methods.permutation import PERMUTATIONS, PERMUTE_LAYOUTS, permutation_cost, permutation_work_bytes
from zprune_cli.methods.quantize import BITS, DEFAULT_GROUP_SIZE, NO_QUANTIZATION, QuantSpec, quantization_work_bytes
from zprune_cli.methods.reconstruction import finish_cost
from zprune_cli.records.provenance import RecipeRecord

log = logging.getLogger("zprune")

RECIPE_VERSION = 2  # 2: reconstruct became a name and refine was added; bump when the meaning of a field changes: old digests then never match new ones
PROPAGATE = ("auto", "dense", "pruned")
ALLOCATIONS = ("uniform", "owl")
DEFAULT_SWAP_ROUNDS = 100
DEFAULT_SPARSITY = 0.5
DEFAULT_OWL_M = 5.0
DEFAULT_OWL_LAMBDA = 0.08


@dataclass(frozen=True)
class PruneRecipe:
    """What to prune and how. Construct it with plain values; it validates and normalises itself."""

    method: str = "zpruner"
    sparsity: float | None = None  # None: 0.5, or n/m for N:M
    pattern: str = "unstructured"  # "unstructured" or "N:M"
    scope: str | None = None  # "row" | "layer"; None: the method's default (or none where it does not apply)
    allocation: str = "uniform"
    owl_m: float | None = None  # OWL outlier threshold (x mean score); only with allocation="owl"
    owl_lambda: float | None = None  # OWL spread; only with allocation="owl"
    reconstruct: str | bool = "none"  # "none" | "obs" | "pcg": new surviving weights for the method's mask
    refine: str = "none"  # "none" | "swaps:ROUNDS": Gram-based 1-swaps on the mask before any reconstruction
    propagate: str = "auto"
    permute: str = "none"  # "none" | "heuristic" | "lsa": reorder input channels before N:M groups are formed
    permute_layout: str = "native"  # "native" | "free": restrict a permutation where that keeps a layer natively N:M
    ignore: tuple[str, ...] = ()  # regexes of layer names left dense
    overrides: tuple[tuple[str, float], ...] = ()  # (regex, sparsity), the first match wins
    method_options: tuple[tuple[str, Any], ...] = ()  # e.g. (("a", 0.5),) for ria
    wbits: int = NO_QUANTIZATION  # 2..8: quantize the kept weights (GPTQ, or SparseGPT's joint walk); 16: none
    group_size: int | None = None  # columns per grid (None: 128 when quantizing); 0: one grid per output row
    sym: bool | None = None  # symmetric grids (None: asymmetric when quantizing)
    act_order: bool | None = None  # walk the columns by decreasing Hessian diagonal (static groups)

    def __post_init__(self) -> None:
        for name, value in _normalise(self).items():
            object.__setattr__(self, name, value)

    # --- what the engine asks -------------------------------------------------------------------
    @property
    def method_obj(self) -> Method:
        """The configured method (a new instance each call: methods are small and stateless)."""
        return get_method(self.method, **dict(self.method_options))

    @property
    def pattern_obj(self) -> Pattern:
        return Pattern.parse(self.pattern)

    @property
    def quant(self) -> QuantSpec | None:
        """How the kept weights are quantized (None: not at all)."""
        if self.wbits == NO_QUANTIZATION:
            return None
        return QuantSpec(self.wbits, self.group_size, self.sym, self.act_order)

    @property
    def needs_gram(self) -> bool:
        return (type(self.method_obj).needs_gram or self.reconstruct != "none" or self.refine != "none"
                or self.quant is not None)

    @property
    def updates_weights(self) -> bool:
        """True when surviving weights change (or move: an absorbed permutation), so masks alone cannot
        reproduce the model."""
        return (type(self.method_obj).updates_weights or self.reconstruct != "none" or self.permute != "none"
                or self.quant is not None)

    @property
    def statistics(self) -> str:
        """What the dense store entry must hold: "inputs" (block 0's inputs: pruned propagation collects
        its own statistics; magnitude reads none), "norms" (per-block sums of squares) or "gram"."""
        reads_stats = (type(self.method_obj).uses_stats or self.reconstruct != "none" or self.refine != "none"
                       or self.quant is not None)
        if self.allocation == "owl":  # outlier shares are read from the dense statistics
            return "gram" if self.needs_gram and self.propagate == "dense" else "norms"
        if self.propagate == "pruned" or not reads_stats:
            return "inputs"
        return "gram" if self.needs_gram else "norms"

    @property
    def reads_data(self) -> bool:
        """False for a recipe that needs no calibration text at all (magnitude, dense propagation)."""
        return self.propagate == "pruned" or self.statistics != "inputs"

    def cost(self, out: int, width: int) -> Cost:
        """The work of pruning one [out, width] layer with this recipe: the permutation's search, the method's,
        its finishes', then the quantization's (the rounding of every weight, and GPTQ's own walk unless the
        method quantizes in its walk)."""
        cost = self.method_obj.cost(out, width) + finish_cost(out, width, self.swap_rounds, self.reconstruct)
        cost += permutation_cost(out, width, self.permute, self.pattern_obj)
        if self.quant is not None:
            cost += Cost(selected=float(out * width)) + (Cost() if self.joint else Cost(obs_flops(out, width, 128)))
        return cost

    @property
    def joint(self) -> bool:
        """Whether the method quantizes inside its own walk (SparseGPT with nothing after its mask, unpermuted: a
        permuted walk's column order is not the stored one where the mask is mapped back)."""
        return (type(self.method_obj).joint_quantization and self.reconstruct == "none" and self.swap_rounds == 0
                and self.permute == "none")

    def extra_work_bytes(self, out: int, width: int) -> int:
        """Bytes the permutation and the quantization hold beside the method's own, at one [out, width] layer."""
        work = permutation_work_bytes(out, width, self.permute, self.needs_gram)
        return work + (quantization_work_bytes(self.quant, out, width, self.joint) if self.quant is not None else 0)

    @property
    def swap_rounds(self) -> int:
        """Rounds of mask refinement by swaps (0: none)."""
        return int(self.refine.split(":")[1]) if self.refine != "none" else 0

    # --- identity ---------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """Strict-JSON-able and complete: PruneRecipe.from_dict(r.as_dict()) == r."""
        out = asdict(self)
        out["ignore"] = list(self.ignore)
        out["overrides"] = [[p, r] for p, r in self.overrides]
        out["method_options"] = dict(self.method_options)
        if self.permute == "none":
            del out["permute"]  # as before the field existed: the digests of earlier recipes stay as they were
        if self.permute_layout == "native":
            del out["permute_layout"]  # likewise
        if self.quant is None:  # absent, so recipes without quantization keep the digests they always had
            for name in QUANT_FIELDS:
                del out[name]
        return out

    @property
    def digest(self) -> str:
        """16 hex characters of sha256 over the canonical JSON of the normalised recipe."""
        return _digest(RECIPE_VERSION, self.as_dict())

    def known_digests(self) -> set[str]:
        """This digest, and the one recipe version 1 gave the same weights (reconstruct was on/off, no
        refine), so records written before version 2 still check out."""
        digests = {self.digest}
        if self.refine == "none" and self.reconstruct in ("none", "obs") and self.quant is None:
            old = {k: v for k, v in self.as_dict().items() if k != "refine"}
            digests.add(_digest(1, {**old, "reconstruct": self.reconstruct == "obs"}))
        return digests

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruneRecipe:
        """A recipe from as_dict() output (or a TOML table); unknown keys are refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ZpruneUsageError(f"unknown recipe field(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**dict(data))

    def record(self) -> RecipeRecord:
        """What a pruned folder's zprune.json stores of this recipe."""
        return RecipeRecord(self.as_dict(), self.digest)

    def replace(self, **changes: Any) -> PruneRecipe:
        """A copy with some fields changed, normalised again (explicit values of the original are kept)."""
        return PruneRecipe.from_dict({**self.as_dict(), **changes})

    def label(self) -> str:
        """A short human name: 'wanda 0.5', 'sparsegpt 2:4', with what differs from the defaults."""
        text = f"{self.method} {self.pattern if self.pattern != 'unstructured' else f'{self.sparsity:g}'}"
        text += f" {self.quant.text()}" if self.quant else ""
        extras = [f"{k}={v}" for k, v in self.method_options if method_options(self.method).get(k) != v]
        extras += ["owl"] if self.allocation == "owl" else []
        extras += [f"permute={self.permute}"] if self.permute != "none" else []
        extras += ["layout=free"] if self.permute_layout == "free" else []
        extras += [f"swaps:{self.swap_rounds}"] if self.swap_rounds else []
        extras += [{"obs": "reconstruct", "pcg": "reconstruct=pcg"}[self.reconstruct]] if self.reconstruct != "none" else []
        extras += [f"ignore={','.join(self.ignore)}"] if self.ignore else []
        extras += [f"overrides={len(self.overrides)}"] if self.overrides else []
        extras += [x for x, on in (("sym", self.sym), ("act-order", self.act_order)) if on]
        return text + (f" ({', '.join(extras)})" if extras else "")


def recipe_of(record: RecipeRecord) -> PruneRecipe:
    """The recipe a folder's record names, rebuilt through the method registry, its stored digest checked."""
    try:
        recipe = PruneRecipe.from_dict(record.fields)
    except (TypeError, ValueError, ZpruneUsageError) as exc:
        raise ZpruneError(f"the recipe recorded in zprune.json cannot be rebuilt by this zprune: {exc}") from None
    if record.digest is not None and record.digest not in recipe.known_digests():
        raise ZpruneError(f"zprune.json's recipe_digest {record.digest} does not match its recipe ({recipe.digest})")
    return recipe


def _digest(version: int, fields: dict[str, Any]) -> str:
    payload = json.dumps({"recipe_version": version, **fields}, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --- normalisation ------------------------------------------------------------------------------------


def _normalise(r: PruneRecipe) -> dict[str, Any]:
    method = get_method(_text(r.method, "method"), **_options_dict(r.method_options))
    cls = type(method)
    pattern = _pattern(r.pattern)
    out: dict[str, Any] = {"method": cls.name, "pattern": str(pattern)}
    out["method_options"] = tuple((k, getattr(method, k)) for k in sorted(method_options(cls.name)))
    out.update(_quantization(r, cls, pattern))
    quantized = out["wbits"] != NO_QUANTIZATION
    out["sparsity"] = _sparsity(r.sparsity, pattern, quantized)
    out["allocation"] = _choice(r.allocation, ALLOCATIONS, "allocation")
    if out["allocation"] == "owl" and out["sparsity"] == 0:
        raise ZpruneUsageError("--allocation owl spreads a sparsity above 0 over the blocks; with --sparsity 0 use uniform")
    if out["allocation"] == "owl" and pattern.is_nm:
        raise ZpruneUsageError(f"--allocation owl cannot take effect with --pattern {pattern}: "
                               "OWL varies sparsity per block, N:M fixes it to n/m (use one or the other)")
    out["owl_m"], out["owl_lambda"] = _owl(r, out["allocation"] == "owl")
    out["scope"] = _scope(r.scope, cls, pattern)
    out["reconstruct"], out["refine"] = _reconstruct(r.reconstruct), _refine(r.refine)
    for field, flag in (("reconstruct", "--reconstruct"), ("refine", "--refine")):
        if out[field] != "none" and cls.updates_weights:
            log.warning("%s has no effect with %s, which chooses its mask and weights itself; recorded as none", flag, cls.name)
            out[field] = "none"
    out["propagate"] = _propagate(r.propagate, cls, out["reconstruct"] != "none" or quantized)
    out["permute"] = _permute(r.permute, pattern)
    out["permute_layout"] = _permute_layout(r.permute_layout, out["permute"])
    out["ignore"] = tuple(sorted({_regex(p, "--ignore") for p in _strings(r.ignore, "ignore")}))
    out["overrides"] = _overrides(r.overrides, pattern)
    return out


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ZpruneUsageError(f"recipe field '{field}' must be a non-empty string, got {value!r}")
    return value.strip()


def _pattern(value: Any) -> Pattern:
    return value if isinstance(value, Pattern) else Pattern.parse(_text(value, "pattern"))


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ZpruneUsageError(f"{field} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ZpruneUsageError(f"{field} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ZpruneUsageError(f"{field} must be a finite number, got {value!r}")
    return number


def _sparsity(value: Any, pattern: Pattern, quantized: bool = False) -> float:
    if pattern.is_nm:
        fixed = pattern.n / pattern.m
        if value is not None and abs(_number(value, "--sparsity") - fixed) > 1e-12:
            raise ZpruneUsageError(f"--sparsity {value} cannot take effect with --pattern {pattern}, which prunes "
                                   f"exactly {fixed:g}; drop --sparsity or choose another pattern")
        return fixed
    sparsity = DEFAULT_SPARSITY if value is None else _number(value, "--sparsity")
    if quantized and sparsity == 0:
        return 0.0  # quantization alone: plain GPTQ
    if not 0.0 < sparsity < 1.0:
        hint = " (0 only with --wbits: quantization alone)" if sparsity == 0 else ""
        raise ZpruneUsageError(f"--sparsity must be between 0 and 1 (exclusive), got {value}{hint}")
    return sparsity


def _choice(value: Any, choices: tuple[str, ...], field: str) -> str:
    """`value` as one of `choices`, in any case (`--allocation OWL` is owl: the digest is the same)."""
    value = value.strip().lower() if isinstance(value, str) else value
    if value not in choices:
        raise ZpruneUsageError(f"--{field} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _owl(r: PruneRecipe, owl: bool) -> tuple[float | None, float | None]:
    if not owl:
        given = [n for n, v in (("--owl-m", r.owl_m), ("--owl-lambda", r.owl_lambda)) if v is not None]
        if given:
            raise ZpruneUsageError(f"{' and '.join(given)} needs --allocation owl (without it OWL's options do nothing)")
        return None, None
    m = DEFAULT_OWL_M if r.owl_m is None else _number(r.owl_m, "--owl-m")
    lam = DEFAULT_OWL_LAMBDA if r.owl_lambda is None else _number(r.owl_lambda, "--owl-lambda")
    if m <= 0:
        raise ZpruneUsageError(f"--owl-m must be positive, got {r.owl_m}")
    if lam < 0:
        raise ZpruneUsageError(f"--owl-lambda must be >= 0, got {r.owl_lambda}")
    return m, lam


def _scope(value: Any, cls: type[Method], pattern: Pattern) -> str | None:
    if value is not None:
        value = _choice(value, SCOPES, "scope")
    if pattern.is_nm or not cls.uses_scope:
        if value is not None:
            why = f"--pattern {pattern} prunes per group" if pattern.is_nm else f"{cls.name} chooses its mask per block of columns"
            log.warning("--scope %s has no effect (%s); recorded as none", value, why)
        return None
    return value or cls.default_scope


def _reconstruct(value: Any) -> str:
    """A name; True / False (the old flag, and recipes recorded before version 2) mean obs / none."""
    if isinstance(value, bool):
        return "obs" if value else "none"
    if value is None:
        return "none"
    return _choice(value, RECONSTRUCTIONS, "reconstruct")


def _refine(value: Any) -> str:
    """'none', or 'swaps:ROUNDS' with ROUNDS a positive integer ('swaps' alone: the default rounds)."""
    text = "none" if value is None else _text(value, "refine").lower()
    name, _, rounds = text.partition(":")
    if name not in REFINEMENTS or (name == "none" and rounds):
        raise ZpruneUsageError(f"--refine must be none or swaps[:ROUNDS], got {value!r}")
    if name == "none":
        return "none"
    if not rounds:
        return f"swaps:{DEFAULT_SWAP_ROUNDS}"
    if not rounds.isdigit() or int(rounds) < 1:
        raise ZpruneUsageError(f"--refine swaps:ROUNDS needs a positive whole number of rounds, got {value!r}")
    return f"swaps:{int(rounds)}"


def _propagate(value: Any, cls: type[Method], reconstruct: bool) -> str:
    value = _choice(value, PROPAGATE, "propagate")
    if not cls.uses_stats and not reconstruct:
        if value == "pruned":
            log.warning("--propagate pruned has no effect with %s, which reads no statistics; recorded as dense", cls.name)
        return "dense"
    if value == "auto":
        return "pruned" if (cls.updates_weights or reconstruct) else "dense"
    return value


def _permute(value: Any, pattern: Pattern) -> str:
    value = _choice("none" if value is None else value, PERMUTATIONS, "permute")
    if value != "none" and not pattern.is_nm:
        raise ZpruneUsageError(f"--permute {value} reorders the input channels of N:M groups; it cannot take effect "
                               "with --pattern unstructured (use --pattern 2:4 or 4:8, or --permute none)")
    return value


def _permute_layout(value: Any, permute: str) -> str:
    value = _choice("native" if value is None else value, PERMUTE_LAYOUTS, "permute-layout")
    if value != "native" and permute == "none":
        log.warning("--permute-layout %s has no effect without --permute; recorded as native", value)
        return "native"
    return value


QUANT_FIELDS = ("wbits", "group_size", "sym", "act_order")


def _quantization(r: PruneRecipe, cls: type[Method], pattern: Pattern) -> dict[str, Any]:
    """wbits, group_size, sym and act_order as they take effect (see the module's rules)."""
    wbits = _whole(r.wbits, "--wbits")
    if wbits != NO_QUANTIZATION and wbits not in BITS:
        raise ZpruneUsageError(f"--wbits must be {BITS[0]}..{BITS[-1]} bits, or {NO_QUANTIZATION} for no quantization; got {r.wbits}")
    if wbits == NO_QUANTIZATION:
        given = [f for f, v in (("--group-size", r.group_size), ("--sym/--asym", r.sym), ("--act-order", r.act_order))
                 if v is not None]
        if given:
            log.warning("%s has no effect without --wbits; recorded as unset", " and ".join(given))
        return {"wbits": wbits, "group_size": None, "sym": None, "act_order": None}
    group_size = DEFAULT_GROUP_SIZE if r.group_size is None else _whole(r.group_size, "--group-size")
    if group_size < 0:
        raise ZpruneUsageError(f"--group-size must be a positive number of columns, or 0 for one grid per output channel; got {r.group_size}")
    act_order = _flag(r.act_order, "act_order")
    if act_order and cls.joint_quantization and pattern.is_nm:
        raise ZpruneUsageError(f"--act-order cannot take effect with {cls.name} at --pattern {pattern}: it quantizes inside "
                               f"its own walk, which chooses each group of {pattern.m} columns in order; drop --act-order "
                               "or prune unstructured")
    return {"wbits": wbits, "group_size": group_size, "sym": _flag(r.sym, "sym"), "act_order": act_order}


def _whole(value: Any, flag: str) -> int:
    number = _number(value, flag)
    if number != int(number):
        raise ZpruneUsageError(f"{flag} must be a whole number, got {value!r}")
    return int(number)


def _flag(value: Any, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ZpruneUsageError(f"recipe field '{field}' must be true or false, got {value!r}")
    return value


def _strings(values: Any, field: str) -> list[str]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, Iterable):
        raise ZpruneUsageError(f"{field} must be a list of strings, got {values!r}")
    return [_text(v, field) for v in values]


def _regex(pattern: str, what: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ZpruneUsageError(f"{what} '{pattern}' is not a valid regular expression: {exc}") from None
    return pattern


def _overrides(values: Any, pattern: Pattern) -> tuple[tuple[str, float], ...]:
    pairs = list(values.items()) if isinstance(values, Mapping) else list(values)
    out = []
    for item in pairs:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ZpruneUsageError(f"a sparsity override must be (regex, ratio), got {item!r}")
        regex, ratio = _regex(_text(item[0], "sparsity override"), "sparsity override"), item[1]
        ratio = _number(ratio, f"sparsity override '{regex}'")
        if not 0.0 <= ratio < 1.0:
            raise ZpruneUsageError(f"sparsity override '{regex}' = {item[1]} must be in [0, 1)")
        if pattern.is_nm and ratio != 0.0:
            raise ZpruneUsageError(f"sparsity override '{regex}' = {ratio:g} cannot take effect with --pattern {pattern} "
                                   "(N:M fixes every layer's sparsity; only 0, leave dense, is allowed)")
        out.append((regex, ratio))
    return tuple(out)


def _options_dict(options: Any) -> dict[str, Any]:
    """A mapping, or (key, value) pairs as the frozen recipe holds them."""
    try:
        return dict(options)
    except (TypeError, ValueError):
        raise ZpruneUsageError(f"method options must be KEY=VALUE pairs, got {options!r}") from None


STATISTICS = ("inputs", "norms", "gram")  # each holds what the ones before it hold


def needs_calibration(recipes: Iterable[PruneRecipe]) -> bool:
    """Whether any recipe reads calibration text (magnitude alone reads none: no data is loaded)."""
    return any(r.reads_data for r in recipes)


def calibration_needs(recipes: Iterable[PruneRecipe]) -> dict[str, bool]:
    """calibrate()'s keywords for the least statistics that serve every recipe."""
    level = max((STATISTICS.index(r.statistics) for r in recipes), default=1)
    return {"gram": STATISTICS[level] == "gram", "inputs_only": STATISTICS[level] == "inputs"}


def parse_method_list(text: str | Iterable[str]) -> list[str]:
    """'wanda, RIA' -> ['wanda', 'ria']; empty or repeated names are refused."""
    names = [m.strip().lower() for m in (text.split(",") if isinstance(text, str) else map(str, text))]
    names = [n for n in names if n]
    if not names:
        raise ZpruneUsageError("--method is empty")
    if len(set(names)) != len(names):
        raise ZpruneUsageError(f"--method names a method twice: {','.join(names)}")
    return names
