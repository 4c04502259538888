"""The shape of the package: imports run one way, verbs take few parameters, functions stay short,
and the engine never names a method."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "zprune_cli"

# Low to high: a unit (a folder of zprune_cli, or __init__ / __main__) may import only units of a strictly
# lower layer, or itself. docs/architecture.md states the same order; each folder's __init__ says what it holds.
LAYERS = [
    {"base", "__version__"},  # plain values and plumbing: errors, settings, atomic writes, masks, zero counts
    {"formats", "tasks"},  # on-disk codecs, lm-eval task files
    {"data", "models", "stats"},  # never each other
    {"records"},  # protocols, result rows, intervals, provenance: read without the method registry
    {"methods"},
    {"engine"},  # recipe, OWL allocation, the block-by-block pipeline
    {"rendering"},  # model card, HTML report, plot: documents from records
    {"evaluation", "exports", "estimation"},
    {"verbs"},  # calibrate, prune, compare, the grid, the cache's upkeep
    {"cli", "__init__"},
    {"__main__"},
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def unit_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def imported_units(path: Path) -> set[str]:
    """Top-level zprune_cli units a module imports (at any depth of the file, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = list(lazily_bound(node))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "zprune_cli":
            names = [node.module] if node.module != "zprune_cli" else [f"zprune_cli.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("zprune_cli.")]
        found |= {n.split(".")[1] for n in names if n.count(".") >= 1}
    return found


def modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_every_unit_has_a_layer():
    assert {unit_of(p) for p in modules()} <= set(RANK)


def test_the_package_is_its_layers_folders():
    """No module sits loose at the top (23 did, mixing verbs, engine, records and rendering): each is in the folder
    of its layer, every folder says in its __init__ what it holds, and docs/architecture.md draws the same order."""
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "__main__.py"]
    folders = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert folders | {"tasks"} == set(RANK) - {"__init__", "__main__", "__version__"}  # tasks/: lm-eval YAML, no code
    for folder in folders:
        assert ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text())), f"{folder}/__init__.py says nothing"
    rule = next(line for line in (PACKAGE.parent / "docs" / "architecture.md").read_text().split("\n\n")
                if line.startswith("- Imports run one way"))
    drawn = [part.strip(" ()`\n") for part in rule.split(":", 1)[1].split(". The order")[0].split("<")]
    assert [set(re.findall(r"`(\w+)`", "`" + part + "`")) - {"never", "each", "other"} for part in drawn] == \
        [layer - {"__init__", "__main__", "__version__"} for layer in LAYERS if layer - {"__init__", "__main__", "__version__"}]


def test_a_record_is_read_without_the_method_registry(tmp_path):
    """Provenance reads zprune.json without importing methods/: a folder pruned by a method since renamed stays
    readable (its method, digest, layers, results); what needs the recipe itself says so in one line."""
    import json
    import subprocess
    import sys

    from zprune_cli.base.errors import ZpruneError
    from zprune_cli.engine.recipe import PruneRecipe, recipe_of
    from zprune_cli.records.provenance import BaseModel, Provenance

    recipe = PruneRecipe("wanda", sparsity=0.5)
    Provenance(BaseModel("tiny", str(tmp_path), "f" * 16), recipe.record(), {"model.layers.0.mlp.up_proj": 0.5}, 0.5).write(tmp_path)
    record = json.loads((tmp_path / "zprune.json").read_text())
    assert record["recipe_digest"] == recipe.digest == "439637323bf8b150"  # pinned (as in test_recipe): a format change is deliberate
    record["recipe"]["method"] = "wanda-renamed"
    (tmp_path / "zprune.json").write_text(json.dumps(record))
    code = ("import sys; from zprune_cli.records.provenance import Provenance; p = Provenance.read(sys.argv[1]); "
            "print(p.recipe.method, p.cell_digest, p.overall_sparsity, any(m.startswith('zprune_cli.methods') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["wanda-renamed", recipe.digest, "0.5", "False"]
    with pytest.raises(ZpruneError, match="cannot be rebuilt by this zprune: .*wanda-renamed"):
        recipe_of(Provenance.read(tmp_path).recipe)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path):
    unit = unit_of(path)
    for target in imported_units(path) - {unit}:
        assert RANK[target] < RANK[unit], f"{path.relative_to(PACKAGE)} ({unit}) imports {target}, against the drawn direction"


def imported_modules(path: Path) -> set[str]:
    """Dotted zprune_cli modules a module imports (lazy imports included; `from zprune_cli.x import y`
    counts as x.y when x/y.py exists, else as x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zprune_cli"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).is_file() else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("zprune_cli.")}
        found |= lazily_bound(node)
    return found


def lazily_bound(node: ast.AST) -> set[str]:
    """`x = lazy("zprune_cli.a.b")` (base/lazy.py) imports zprune_cli.a.b as surely as an import statement."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "lazy" and node.args
            and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("zprune_cli.")):
        return {node.args[0].value}
    return set()


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def test_no_two_modules_import_each_other():
    """Within a layer too: models/load.py and models/pretrained.py imported each other (one lazily); what they
    share now lives in models/runtime.py."""
    graph = {module_name(p): imported_modules(p) for p in modules()}
    circles = {tuple(sorted((a, b))) for a, targets in graph.items() for b in targets if a in graph.get(b, ()) and a != b}
    # Typer's registration, on purpose: cli/app.py imports each command module for its @app.command, which
    # imports `app` (and the package re-exports it)
    registration = {"zprune_cli.cli", "zprune_cli.cli.app"}
    assert sorted(c for c in circles if not set(c) & registration) == []
    assert len(circles) == 8  # the package and its seven commands: a new circle anywhere else fails above


def test_the_direction_check_catches_a_wrong_import(tmp_path, monkeypatch):
    bad = PACKAGE / "models" / "load.py"
    source = bad.read_text() + "\nfrom zprune_cli.exports import export  # noqa\n"
    fake = tmp_path / "load.py"
    fake.write_text(source)
    assert "exports" in imported_units(fake) and RANK["exports"] > RANK["models"]


def test_the_engine_never_names_a_method():
    from zprune_cli.methods import method_names

    method_modules = {f"zprune_cli.methods.{name}" for name in method_names()}
    for path in modules():
        if unit_of(path) == "methods":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in method_modules:
                pytest.fail(f"{path.relative_to(PACKAGE)} imports {node.module}: ask the registry instead")
            if isinstance(node, ast.Compare) and any(
                isinstance(c, ast.Constant) and c.value in method_names() for c in [node.left, *node.comparators]
            ):
                pytest.fail(f"{path.relative_to(PACKAGE)}:{node.lineno} branches on a method's name")


def test_verbs_are_not_shadowed_by_subpackages():
    """`import zprune_cli.X` binds X on the package: no subpackage may share a verb's name."""
    import importlib

    import zprune_cli as zp

    for path in modules():
        if path.name == "__main__.py":
            continue
        importlib.import_module("zprune_cli." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__"))
    for name in ("calibrate", "prune", "evaluate", "compare", "export", "load_pretrained", "load_tokenizer"):
        assert callable(getattr(zp, name)) and not inspect.ismodule(getattr(zp, name)), name


def test_public_verbs_take_few_parameters():
    import zprune_cli as zp

    objects = {"PruneRecipe", "Settings", "Calibration", "Evaluation", "recipe", "recipes", "settings", "calibration",
               "evaluation"}
    for name in ("calibrate", "prune", "evaluate", "compare", "export", "load_pretrained", "load_tokenizer"):
        params = [p for p in inspect.signature(getattr(zp, name)).parameters if p not in objects]
        assert len(params) <= 8, (name, params)


def test_no_function_over_60_lines():
    long = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert not long, long


def test_the_engine_reads_pruned_weights_through_weight_view():
    """Conv1D stores [in, out]: a direct `.weight.data` / `.weight.detach()` in the engine would read it transposed."""
    import re

    for rel in ("engine/pipeline.py", "engine/allocation.py", "verbs/calibration.py", "stats/collect.py"):
        source = (PACKAGE / rel).read_text()
        assert not re.search(r"\.weight\.(data|detach)\b", source), f"{rel} reads a weight directly; use weight_view"


def test_a_new_method_file_is_picked_up_with_no_other_edit(tmp_path):
    """The method contract: one file in methods/ is a method (registered, listed, usable, its options
    declared and checked); nothing else in the package is edited."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "zprune_cli"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "methods" / "halfmagnitude.py").write_text(
        '"""Half magnitude: |W_ij| ** p, a test method."""\n'
        "from dataclasses import dataclass\n"
        "from typing import ClassVar\n"
        "from zprune_cli.methods.base import Method, option, register\n\n\n"
        "@register\n@dataclass\nclass HalfMagnitude(Method):\n"
        '    name: ClassVar[str] = "halfmagnitude"\n'
        '    default_scope: ClassVar[str] = "row"\n'
        "    uses_stats: ClassVar[bool] = False\n"
        "    p: float = option(1.0, 0, open_low=True)\n\n"
        "    def score(self, weight_fp32, stats):\n"
        "        return weight_fp32.abs() ** self.p\n")
    probe = (
        "import torch\n"
        "from zprune_cli.base.masks import Pattern\n"
        "from zprune_cli.methods import get_method, method_names, method_titles\n"
        "from zprune_cli.base.errors import ZpruneUsageError\n"
        "W = torch.tensor([[1.0, -4.0, 2.0, -3.0]])\n"
        "print(method_names())\n"
        "print(method_titles()['halfmagnitude'])\n"
        "print(get_method('halfmagnitude', p=2).prune(W, None, 0.5, Pattern()).weight.tolist())\n"
        "try:\n    get_method('halfmagnitude', p=0)\nexcept ZpruneUsageError as e:\n    print(e)\n")
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert ran.returncode == 0, ran.stderr[-2000:]
    names, title, weight, refused = ran.stdout.splitlines()
    from zprune_cli.methods import method_names

    assert names == str(sorted([*method_names(), "halfmagnitude"]))
    assert title == "Half magnitude"
    assert weight == "[[0.0, -4.0, 0.0, -3.0]]"
    assert refused == "halfmagnitude option p must be a finite number > 0, got 0"
