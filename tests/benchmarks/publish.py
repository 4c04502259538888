"""The leaderboard's data (leaderboard.json) and its published forms: the README "Results" section, the
leaderboard section of RESULTS.md and the PNG plot, and the comparison `leaderboard.py --check` makes.
Rendering is pure (a test re-renders and compares with the committed files); writing replaces only the
text between the markers. No torch import (zprune_cli.records.intervals, pure, only): tests load this module cheaply."""

from __future__ import annotations

import math
import re
from pathlib import Path

from one_run import NEW_RUN, cell_commit, mixed_tables

HERE = Path(__file__).resolve().parent
README = HERE.parents[1] / "README.md"
RESULTS_MD = HERE / "RESULTS.md"
PLOT = HERE.parents[1] / "docs" / "leaderboard.png"
START, END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"
COLUMNS = ("50%", "60%", "70%", "2:4", "4:8")
TASKS = ("arc_easy_local", "arc_challenge_local", "piqa_local", "boolq_local", "winogrande_local", "hellaswag_local")


READ_NO_CALIBRATION = ("dense", "magnitude")


def cell_key(row: dict) -> str:
    """A cell: the model, its evaluation protocol and its recipe (the dense row has none). The statistics
    key is left out: it names the calibration file by its absolute path, which differs on another machine,
    while the protocol text still names the file, the windows and the seed."""
    protocol = re.sub(r"; statistics [0-9a-f]+", "", row["protocol"])
    if row.get("method") in READ_NO_CALIBRATION:
        # a grid of these alone calibrates nothing, so its protocol names no calibration text (the
        # committed cells ran beside other methods, whose group did); their numbers never depended on it
        protocol = re.sub(r"; calibration [^;]*", "", protocol)
    return f"{row['model']}|{protocol}|{row['recipe'] or 'dense'}"


def same_to_4_significant(a: float, b: float) -> bool:
    """|a - b| within half a unit of b's 4th significant digit (29.19 vs 29.185 passes, 29.20 does not)."""
    if a == b:
        return True
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return False
    unit = 10 ** (math.floor(math.log10(abs(b))) - 3)
    return abs(a - b) <= unit / 2 * (1 + 1e-9)  # the half-unit itself passes, whatever the float rounding


def differences(fresh: dict, committed: dict, cpu: str | None = None) -> list[str]:
    """Every perplexity and accuracy of `fresh` (measured on processor `cpu`) that differs from its committed cell
    (a subset may be re-run), naming the committed cell's processor where it was another."""
    known = {cell_key(c): c for c in committed["cells"]}
    out = []
    for cell in fresh["cells"]:
        old = known.get(cell_key(cell))
        if old is None:
            out.append(f"{cell['model']} {cell['label']}: not in the committed results")
            continue
        for metric, value in cell["metrics"].items():
            before = old["metrics"].get(metric)
            if metric.startswith(("acc:", "acc_norm:")) and metric not in old["metrics"]:
                continue  # measured now, not then: nothing to compare with
            if metric.startswith(("ppl:", "acc:", "acc_norm:")) and not same_to_4_significant(_float(value), _float(before)):
                where = f" (measured on {old['cpu']}, now on {cpu})" if old.get("cpu") and cpu and old["cpu"] != cpu else ""
                out.append(f"{cell['model']} {cell['label']} {metric}: {value} now, {before} committed{where}")
    return out


def _float(value) -> float:
    return math.nan if value is None else float(value)  # the store keeps a non-finite value as null


_SEED = re.compile(r"\bseed (\d+)")


def seed_of(cell: dict) -> int:
    """The calibration seed a cell was measured with, as its protocol names it (0 when it names none)."""
    match = _SEED.search(cell.get("protocol") or "")
    return int(match.group(1)) if match else 0


def at_seed_0(cells: list[dict]) -> list[dict]:
    """The cells of the protocol's calibration draw (seed 0): the tables, the plot and the analysis read these;
    the other seeds are shown as the best recipes' spread (seeds_table)."""
    return [c for c in cells if seed_of(c) == 0]


def seeds_table(cells: list[dict]) -> list[str]:
    """Per recipe x propagation x column measured at more than one calibration seed: each seed's perplexity,
    their mean and their spread (largest minus smallest, % of the mean)."""
    groups: dict[tuple[str, str, str], dict[int, float]] = {}
    for cell in cells:
        value = perplexity_of(cell)
        if cell["method"] != "dense" and value is not None:
            groups.setdefault((recipe_name(cell), cell["propagate"], column_of(cell)), {})[seed_of(cell)] = value
    several = {key: values for key, values in groups.items() if len(values) > 1}
    if not several:
        return []
    seeds = sorted({seed for values in several.values() for seed in values})
    lines = ["| method | propagation | column | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | spread |",
             "|---|---|---|" + "---:|" * (len(seeds) + 2)]
    for (name, propagate, column), values in sorted(several.items(), key=lambda kv: (COLUMNS.index(kv[0][2]), kv[0])):
        mean = sum(values.values()) / len(values)
        shown = [f"{values[s]:.2f}" if s in values else "-" for s in seeds]
        lines.append(f"| {name} | {propagate or '-'} | {column} | " + " | ".join(shown)
                     + f" | {mean:.2f} | {100 * (max(values.values()) - min(values.values())) / mean:.1f}% |")
    return lines


def column_of(cell: dict) -> str | None:
    if cell["method"] == "dense":
        return None
    return f"{cell['sparsity'] * 100:.0f}%" if cell["pattern"] == "unstructured" else cell["pattern"]


def recipe_name(cell: dict) -> str:
    """'zpruner + swaps:100 + pcg' from the label 'zpruner 0.5 (swaps:100, reconstruct=pcg)'; the bits stay beside
    the method ('sparsegpt w4 g64 + ...' from 'sparsegpt 0.5 w4 g64 (...)'), so a quantized cell never shares a
    row with its unquantized recipe."""
    head, _, tail = cell["label"].partition(" (")
    extras = [x.replace("reconstruct=", "") for x in tail.rstrip(")").split(", ") if x]
    bits = head.split()[2:]  # after the method and its sparsity or pattern: 'w4 g64', 'w8 per-channel'
    return " + ".join([" ".join([cell["method"], *bits]), *extras])


def perplexity_of(cell: dict) -> float | None:
    values = [v for m, v in cell["metrics"].items() if m.startswith("ppl:")]
    return values[0] if values else None


def perplexity_table(cells: list[dict]) -> list[str]:
    """Rows: dense, then each recipe x propagation; columns: 50/60/70% and 2:4, 4:8. A value carries its 95%
    interval where its windows are stored; the best pruned value of a column is bold only when the paired test
    tells it from the runner-up, and both read "tied" when it does not (without windows: the lowest, bold)."""
    rows: dict[tuple[str, str], dict[str, dict]] = {}
    for cell in cells:
        if perplexity_of(cell) is None:
            continue
        name = ("dense", "") if cell["method"] == "dense" else (recipe_name(cell), cell["propagate"])
        rows.setdefault(name, {})[column_of(cell) or "dense"] = cell
    marks = {c: column_marks([v[c] for k, v in rows.items() if k[0] != "dense" and c in v]) for c in COLUMNS}
    lines = ["| method | propagation | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * len(COLUMNS)]
    for (name, propagate), values in sorted(rows.items(), key=lambda kv: (kv[0][0] != "dense", kv[0])):
        shown = [_number(values.get("dense")) if name == "dense" else _number(values.get(c), marks[c].get(id(values.get(c))))
                 for c in COLUMNS]
        lines.append(f"| {name} | {propagate or '-'} | " + " | ".join(shown) + " |")
    return lines


def column_marks(cells: list[dict]) -> dict[int, str]:
    """id(cell) -> "best" or "tied" for one column's pruned cells (see perplexity_table): the leaderboard's own
    rule (zprune_cli.records.ranking.mark_column), on views of the cells; a lone cell is the best of its column."""
    from zprune_cli.records.ranking import mark_column

    ranked = [c for c in cells if math.isfinite(_float(perplexity_of(c)))]
    if len(ranked) < 2:
        return {id(c): "best" for c in ranked}
    views = [{"metrics": {"ppl:": perplexity_of(c)}, "windows": {"ppl:": window_nlls(c)}, "best": [], "tied": []} for c in ranked]
    mark_column(views, "ppl:")
    return {id(c): "best" if v["best"] else "tied" for c, v in zip(ranked, views) if v["best"] or v["tied"]}


def window_nlls(cell: dict) -> list[float] | None:
    metric = next((m for m in cell["metrics"] if m.startswith("ppl:")), None)
    return (cell.get("windows") or {}).get(metric)


def _number(cell: dict | None, mark: str | None = None) -> str:
    if cell is None:
        return "-"
    value = perplexity_of(cell)
    text = f"{value:.2f}"
    nlls = window_nlls(cell)
    if nlls and len(nlls) >= 2 and math.isfinite(value):
        from zprune_cli.records.intervals import ppl_interval

        low, high = ppl_interval(nlls)
        text += f" [{low:.2f}, {high:.2f}]"
    return {"best": f"**{text}**", "tied": f"{text} tied"}.get(mark, text)


def zeroshot_table(cells: list[dict]) -> list[str]:
    """acc (acc_norm where lm-eval reports it) per task, and the mean acc, per recipe."""
    scored = [c for c in cells if any(m.startswith("acc:") for m in c["metrics"])]
    if not scored:
        return []
    tasks = [t for t in TASKS if any(f"acc:{t}" in c["metrics"] for c in scored)]
    lines = ["| method | pattern | " + " | ".join(t.removesuffix("_local") for t in tasks) + " | mean acc |",
             "|---|---|" + "---:|" * (len(tasks) + 1)]
    for cell in sorted(scored, key=lambda c: (c["method"] != "dense", column_of(c) or "", recipe_name(c))):
        values = []
        for task in tasks:
            acc, norm = cell["metrics"].get(f"acc:{task}"), cell["metrics"].get(f"acc_norm:{task}")
            stderr = (cell.get("stderr") or {}).get(f"acc:{task}")  # lm-eval's, where the cell kept it: the 95% half-width
            values.append("-" if acc is None else f"{acc * 100:.1f}" + (f" ±{196 * stderr:.1f}" if stderr is not None else "")
                          + (f" / {norm * 100:.1f}" if norm is not None else ""))
        accs = [cell["metrics"][f"acc:{t}"] for t in tasks if cell["metrics"].get(f"acc:{t}") is not None]
        mean = f"{100 * sum(accs) / len(accs):.1f}" if accs else "-"
        name = "dense" if cell["method"] == "dense" else f"{recipe_name(cell)} ({cell['propagate']})"
        lines.append(f"| {name} | {column_of(cell) or '-'} | " + " | ".join(values) + f" | {mean} |")
    return lines


def zeroshot_caveat(protocol: dict) -> str:
    """How far apart two accuracies must be to mean something: the binomial standard error at p = 0.5."""
    n = protocol.get("zero-shot questions")
    if not n:
        return f"Zero-shot: {protocol.get('zero-shot', '')}."
    per_set, mean = 100 * math.sqrt(0.25 / n), 100 * math.sqrt(0.25 / (n * len(TASKS)))
    return (f"Zero-shot: {protocol['zero-shot']}. At {n} questions a set's accuracy has a standard error of about "
            f"±{per_set:.0f} points (±{mean:.0f} on the mean of the six): differences smaller than that are noise.")


def measured_code(board: dict) -> str:
    """The code the cells record measuring them ("zprune_cli at 708b3f7"), not the HEAD each run started at
    (board["library"]): a run pinned to one commit of the measured code outlives commits of results and prose."""
    commits = sorted({cell_commit(c, board.get("runs", [])) or "an unrecorded commit" for c in board["cells"]})
    return ", ".join(f"zprune_cli at {c}" for c in commits)


def models_of(board: dict) -> list[str]:
    """The models with cells, in the run's schedule order (not the order their grids happened to finish)."""
    with_cells = [c["model"] for c in board["cells"]]
    scheduled = [model for model, _ in board.get("schedule", [])]
    return [m for m in dict.fromkeys([*scheduled, *with_cells]) if m in with_cells]


def readme_section(board: dict) -> str:
    """The README's Results: per model, the perplexity table and the zero-shot table, labelled."""
    out = [START, "", f"Measured with `python tests/benchmarks/leaderboard.py` ({measured_code(board)}, CPU, float32). "
           f"Calibration: {board['protocol']['calibration']}. Perplexity: {board['protocol']['perplexity']}. "
           "Lower is better; the best pruned value per column is bold. Every cell, its time and the "
           "analysis are in [tests/benchmarks/RESULTS.md](tests/benchmarks/RESULTS.md).", ""]
    for model in models_of(board):
        every = [c for c in board["cells"] if c["model"] == model]
        cells = at_seed_0(every)
        out += [f"**{model}: wikitext-2 perplexity**", "", *perplexity_table(cells), ""]
        seeds = seeds_table(every)
        if seeds:
            out += [f"**{model}: the best recipes over calibration draws (C4 seeds)**", "", *seeds, ""]
        zeroshot = zeroshot_table(cells)
        if zeroshot:
            out += [f"**{model}: zero-shot accuracy, % (acc / acc_norm)**", "", *zeroshot, "",
                    zeroshot_caveat(board["protocol"]), ""]
    if PLOT.exists():
        out += ["![perplexity against sparsity](docs/leaderboard.png)", ""]
    out.append(END)
    return "\n".join(out)


def results_section(board: dict) -> str:
    """RESULTS.md: the commands, each run's wall time against its cells' own times, and every cell's times."""
    out = [START, "", "## Leaderboard (`tests/benchmarks/leaderboard.py`)", "", f"Library: {measured_code(board)}.", "",
           "    python tests/benchmarks/leaderboard.py            # runs (resumes) every model x grid", 
           "    python tests/benchmarks/leaderboard.py --publish  # this section, the README's Results, the PNG", "",
           "| model | grid | cells computed | wall s | cells' prune + eval s | overhead |", "|---|---|---:|---:|---:|---:|"]
    for run in board["runs"]:
        overhead = f"{run['overhead']:.2f}x" if run["overhead"] else "-"
        out.append(f"| {run['model']} | {run['grid']} | {run['computed']} | {run['wall_seconds']:.0f} | "
                   f"{run['cells_seconds']:.0f} | {overhead} |")
    core_minutes = sum(r["wall_seconds"] for r in board["runs"]) / 60
    # resumed over sittings, a grid's row is the sitting that finished it; the sittings hold the whole time
    runs = (f"The grids' rows are the sittings that finished them ({core_minutes:.1f} core-minutes)." if board.get("sittings")
            else f"All runs: {core_minutes:.1f} core-minutes.")
    out += ["", f"{runs} {wall_time_sentence(board)}", "",
            "| model | recipe | column | propagation | ppl | prune s | eval s |", "|---|---|---|---|---:|---:|---:|"]
    for cell in board["cells"]:
        seconds = cell.get("seconds") or {}
        value = perplexity_of(cell)
        out.append(f"| {cell['model']} | {recipe_name(cell)} | {column_of(cell) or '-'} | {cell['propagate'] or '-'} | "
                   f"{'-' if value is None else f'{value:.2f}'} | {seconds.get('prune', 0):.1f} | {seconds.get('evaluate', 0):.1f} |")
    out += ["", END]
    return "\n".join(out)


def wall_time_sentence(board: dict) -> str:
    """The leaderboard's wall time: measured when one leaderboard.py invocation ran every cell, else only the
    makespan the runs' wall times would give, said to be computed."""
    if board.get("wall_seconds") is not None:
        return f"One `leaderboard.py` run computed every cell in {board['wall_seconds'] / 60:.1f} min, measured."
    if board.get("sittings"):  # one run resumed over several invocations (cells kept in its cache)
        sittings = board["sittings"]
        wall = sum(s["wall_seconds"] for s in sittings)
        cores = sum(s["wall_seconds"] * s["jobs"] for s in sittings)
        jobs = "/".join(str(j) for j in sorted({s["jobs"] for s in sittings}))
        return (f"One run in {len(sittings)} sitting{'s' if len(sittings) > 1 else ''} of `leaderboard.py` (`--jobs {jobs}`, one core a job): "
                f"{wall / 3600:.2f} h of wall time in all, measured by each sitting (one killed outright misses at "
                f"most its last minute), {cores / 3600:.2f} core-hours at most (wall x jobs).")
    return (f"The runs were not one sitting: {makespan(board, 2) / 60:.1f} min is the makespan their wall times would "
            "give two at a time in the script's schedule (`--jobs 2`, one core each), computed, not measured.")


def makespan(board: dict, jobs: int) -> float:
    """Seconds until the last run ends when `jobs` workers take the runs in schedule order, each the next
    one as it finishes (what leaderboard.py does), from the runs' measured wall times."""
    order = {tuple(job): i for i, job in enumerate(board.get("schedule", []))}
    runs = sorted(board["runs"], key=lambda r: order.get((r["model"], r["grid"]), len(order)))
    free = [0.0] * jobs
    for run in runs:
        free[free.index(min(free))] += run["wall_seconds"]
    return max(free, default=0.0)


def replace_section(text: str, section: str, start: str = START, end: str = END) -> str:
    """`text` with the part between the markers replaced (appended when there is none yet)."""
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    return pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"


def published_section(text: str, start: str = START, end: str = END) -> str | None:
    match = re.search(re.escape(start) + ".*?" + re.escape(end), text, re.S)
    return match.group(0) if match else None


def plot(board: dict, path: Path = PLOT) -> None:
    """Perplexity against unstructured sparsity, one panel per model, one line per recipe x propagation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = models_of(board)
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), dpi=110, squeeze=False)
    for ax, model in zip(axes[0], models):
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # a dozen recipes: no colour twice
        dense = next((perplexity_of(c) for c in board["cells"] if c["model"] == model and c["method"] == "dense"
                      and perplexity_of(c) is not None), None)
        if dense is not None:  # one dense line, though several protocol groups hold a dense row
            ax.axhline(dense, color="black", linestyle="--", linewidth=1, label=f"dense ({dense:.2f})")
        for label, (xs, ys) in plot_lines(board, model).items():
            style = ":" if label.endswith("(dense)") else "-"  # calibrate-once statistics dotted, pruned propagation solid
            ax.plot(xs, ys, marker="o", linestyle=style, label=label)
        ax.set(yscale="log", xlabel="sparsity (unstructured)", ylabel="wikitext-2 perplexity (log)", title=model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


class MixedCommits(Exception):
    """A table whose cells were measured by two versions of the code: never published."""


def plot_lines(board: dict, model: str) -> dict[str, tuple[list[float], list[float]]]:
    """label -> (sparsities, perplexities) of each recipe x propagation at unstructured sparsity, with a NaN
    perplexity at every sparsity some other recipe of the model was measured at and this one was not: the
    line breaks there instead of passing through a value nobody measured."""
    series: dict[str, dict[float, float]] = {}
    for cell in at_seed_0(board["cells"]):
        value = perplexity_of(cell)
        if cell["model"] == model and value is not None and cell["method"] != "dense" and cell["pattern"] == "unstructured":
            series.setdefault(f"{recipe_name(cell)} ({cell['propagate']})", {})[cell["sparsity"]] = value
    levels = sorted({x for points in series.values() for x in points})
    out = {}
    for label, points in sorted(series.items()):
        span = [x for x in levels if min(points) <= x <= max(points)]
        out[label] = (span, [points.get(x, math.nan) for x in span])
    return out


def publish(board: dict) -> None:
    """Write the plot, the README's Results and RESULTS.md's leaderboard section; refuses (MixedCommits) a
    board with a table whose cells come from more than one commit."""
    mixed = mixed_tables(board)
    if mixed:
        raise MixedCommits(f"{'; '.join(mixed)}: a published table is one run at one commit ({NEW_RUN})")
    import analysis

    plot(board)
    readme = replace_section(README.read_text(), readme_section(board))
    README.write_text(replace_section(readme, analysis.readme_summary(board), analysis.README_START, analysis.README_END))
    results = replace_section(RESULTS_MD.read_text(), results_section(board))
    RESULTS_MD.write_text(replace_section(results, analysis.analysis_section(board), analysis.START, analysis.END))
    print(f"wrote {README.name} (Results), {RESULTS_MD.name} (Leaderboard), {PLOT.relative_to(HERE.parents[1])}")
