"""Each permuted N:M cell of a `compare --json` run against the same recipe without permutation, by the paired test.

Issue 22's quality goal: for every score method at 2:4 and 4:8, `--permute lsa` below `--permute none`. A cell
and its unpermuted twin are scored on the same windows, so their per-window NLLs are compared window by window
(zprune_cli.records.intervals.paired_difference): "lower" only where the 95% interval of the ratio lies below 1.

    zprune compare smollm2-135m --method magnitude,wanda,ria,zpruner --pattern 2:4,4:8 --permute none,lsa \\
      --data <C4 shard> --nsamples 32 --seqlen 512 --eval wikitext2 --eval-seqlen 512 --max-windows 16 --json > smollm2.json
    python tests/benchmarks/permute_pairs.py smollm2.json gemma3.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from zprune_cli.records.intervals import paired_difference

METRIC = "ppl:wikitext2"


def base_label(label: str) -> str:
    """The label of the same recipe without permutation ('ria 2:4 (permute=lsa)' -> 'ria 2:4')."""
    head, _, extras = label.partition(" (")
    kept = [e for e in extras.rstrip(")").split(", ") if e and not e.startswith("permute=") and e != "layout=free"]
    return head + (f" ({', '.join(kept)})" if kept else "")


def pairs(rows: list[dict]) -> list[str]:
    """Markdown rows: model, recipe, ppl without and with permutation, the ratio and its paired 95% interval."""
    by_label = {(r["model"], r["label"]): r for r in rows if METRIC in r["metrics"]}
    lines = []
    for (model, label), row in by_label.items():
        if "permute=" not in label:
            continue
        base = by_label.get((model, base_label(label)))
        if base is None:
            continue
        d = paired_difference(row["windows"][METRIC], base["windows"][METRIC])
        verdict = "lower" if d.high < 0 else "higher" if d.low > 0 else "tied"
        lines.append(f"| {model} | {label} | {base['metrics'][METRIC]:.2f} | {row['metrics'][METRIC]:.2f} | "
                     f"{d.ratio:.3f} [{math.exp(d.low):.3f}, {math.exp(d.high):.3f}] | {verdict} |")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", type=Path, nargs="+", help="`zprune compare --json` outputs")
    args = p.parse_args(argv)
    print("| model | recipe | ppl, no permutation | ppl | ratio [95% paired interval] | verdict |")
    print("|---|---|---:|---:|---|---|")
    for path in args.json:
        print("\n".join(pairs(json.loads(path.read_text())["rows"])))


if __name__ == "__main__":
    main()
