"""zprune: prune large language models after training, over a cached activation-statistics store."""

__version__ = "0.1.0"

from zprune_cli.errors import ZpruneError, ZpruneUsageError  # noqa: E402

__all__ = ["__version__", "ZpruneError", "ZpruneUsageError"]
