"""Perplexity against sparsity, one line per method and pattern (needs the `plot` extra)."""

from __future__ import annotations

import io
from pathlib import Path

from zprune_cli.base.errors import ZpruneError
from zprune_cli.records.leaderboard_cells import LeaderboardRow
from zprune_cli.base.staging import write_file_atomically


class PlotUnavailable(ZpruneError):
    """matplotlib is not installed: `--plot` fails with this, the HTML report says it instead of a plot."""


def plot_image(rows: list[LeaderboardRow], metric: str, image_format: str = "png") -> bytes:
    """The plot of `metric` against sparsity as an image file's bytes (PNG unless told)."""
    plt = _pyplot()
    fig = _draw(plt, rows, metric)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=image_format)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def plot_leaderboard(rows: list[LeaderboardRow], metric: str, path: str | Path) -> Path:
    """Write the plot to `path`, in the format its suffix names (.png, .svg, .pdf; PNG when it has none)."""
    path = Path(path)
    image = plot_image(rows, metric, path.suffix.lstrip(".").lower() or "png")
    try:
        write_file_atomically(path, image)  # a full disk leaves no empty or truncated image behind
    except ZpruneError as exc:
        raise ZpruneError(str(exc).replace("cannot write", "cannot write plot", 1)) from None
    return path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("plotting needs matplotlib: pip install 'zprune[plot]'") from None
    return plt


def _draw(plt, rows: list[LeaderboardRow], metric: str):
    """The figure: one line per (method, pattern), the dense model as a dashed line, log-scale y."""
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
    return fig
