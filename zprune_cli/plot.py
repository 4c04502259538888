"""Perplexity against sparsity, one line per method and pattern (needs the `plot` extra)."""

from __future__ import annotations

from pathlib import Path

from zprune_cli.errors import ZpruneError


def plot_leaderboard(rows: list[dict], metric: str, path: str | Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ZpruneError("--plot needs matplotlib: pip install 'zprune[plot]'") from None
    path = Path(path)
    series: dict[str, list[tuple[float, float]]] = {}
    dense = [r["metrics"][metric] for r in rows if r["method"] == "dense" and metric in r["metrics"]]
    for r in rows:
        if r["method"] != "dense" and metric in r["metrics"]:
            series.setdefault(f"{r['method']} ({r['pattern']})", []).append((r["sparsity"], r["metrics"][metric]))
    if not series:
        raise ZpruneError(f"nothing to plot: no pruned cell has {metric}")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    if dense:
        ax.axhline(dense[0], color="black", linestyle="--", linewidth=1, label=f"dense ({dense[0]:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity of the pruned layers")
    ax.set_ylabel(f"{metric} (log scale)")
    ax.set_title(f"{rows[0]['model']}: {metric} by method")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise ZpruneError(f"cannot write plot {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)
    return path
