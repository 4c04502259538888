"""zprune: prune large language models after training, over a cached activation-statistics store."""

__version__ = "0.1.0"

# Nothing imported here: `zprune`'s signal handlers go in place only after this package is imported.
_LAZY = {
    "ZpruneError": "zprune_cli.base.errors",
    "ZpruneUsageError": "zprune_cli.base.errors",
    "calibrate": "zprune_cli.verbs.calibration",
    "prune": "zprune_cli.verbs.pruning",
    "evaluate": "zprune_cli.evaluation.run",
    "compare": "zprune_cli.verbs.comparison",
    "export": "zprune_cli.exports",
    "load_pretrained": "zprune_cli.models.pretrained",
    "load_tokenizer": "zprune_cli.models.pretrained",
    "apply_masks": "zprune_cli.formats.masks",
    "PruneRecipe": "zprune_cli.engine.recipe",
    "Provenance": "zprune_cli.records.provenance",
    "Settings": "zprune_cli.base.settings",
    "Calibration": "zprune_cli.base.settings",
    "load_settings": "zprune_cli.base.settings",
    "Evaluation": "zprune_cli.evaluation.run",
    "grid_recipes": "zprune_cli.verbs.comparison",
    "Grid": "zprune_cli.verbs.grid",
    "ModelHandle": "zprune_cli.models.handle",
}


def __getattr__(name: str):
    # The library verbs, imported on first use so `import zprune_cli` (and the CLI's start) stays fast.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zprune_cli' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
