"""Benchmark: sizes and load times of the hf and sparse exports of SmolLM2-135M pruned at 50% (wanda, unstructured).

Calibrates (norms only) into a fresh cache, prunes, saves the zprune output folder with `save_pruned`, exports
it as `hf` and as `sparse`, then loads each export with `load_pretrained`, alternating which goes first, and
checks that both give the pruned weights back bit for bit. Sizes come from the export summaries and the disk.

    python tests/benchmarks/bench_export.py [--nsamples 8] [--seqlen 256] [--reps 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _bench import C4, DATA_DIR, library_state  # noqa: E402,F401  (sets offline env first)

import torch  # noqa: E402

from zprune_cli.verbs.calibration import calibrate  # noqa: E402
from zprune_cli.exports import export, load_pretrained, load_tokenizer  # noqa: E402
from zprune_cli.models.blocks import pruned_layers  # noqa: E402
from zprune_cli.models.handle import ModelHandle  # noqa: E402
from zprune_cli.engine.pipeline import prune_in_memory  # noqa: E402
from zprune_cli.base.progress import NullProgress  # noqa: E402
from zprune_cli.verbs.pruning import make_provenance, save_pruned  # noqa: E402
from zprune_cli.engine.recipe import PruneRecipe  # noqa: E402
from zprune_cli.base.settings import Calibration, Settings  # noqa: E402

MiB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=str(C4), help="calibration text (default: the shared C4 shard)")
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--method", default="wanda")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--reps", type=int, default=5, help="load repetitions per format (median is reported)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine, 2 threads stall on a busy core; 0 = torch's choice)")
    return p.parse_args(argv)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def timed_load(folder: Path):
    gc.collect()
    started = time.perf_counter()
    model = load_pretrained(folder)
    load_tokenizer(folder)  # timed as before, when load_pretrained returned (model, tokenizer)
    return time.perf_counter() - started, model


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="zprune-bench-export-"))
    try:
        return run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args, root: Path) -> int:
    print(f"{library_state()}; {time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} CPUs, "
          f"cuda available: {torch.cuda.is_available()}", flush=True)
    print(f"model {args.model}, {args.method} {args.sparsity:.0%} unstructured, calibration {args.nsamples} x {args.seqlen}, "
          f"{args.reps} load reps, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    started = time.perf_counter()
    handle = ModelHandle(args.model, device="cpu")
    handle.model, handle.tokenizer  # noqa: B018  load both now
    print(f"model loaded in {time.perf_counter() - started:.1f} s", flush=True)
    recipe = PruneRecipe(args.method, args.sparsity, pattern="unstructured")
    calibration = calibrate(handle, Calibration(args.data, args.nsamples, args.seqlen, 0), gram=recipe.needs_gram,
                            settings=Settings(cache_dir=root / "cache", data_dir=DATA_DIR, device="cpu"))
    report = prune_in_memory(handle.model, calibration.entry, recipe)
    print(f"pruned: overall {report.overall:.4f} in {report.seconds:.2f} s", flush=True)
    reference = {prefix + name: lin.weight.detach().clone()
                 for _, prefix, found in pruned_layers(handle.model, []) for name, lin in found.items()}

    out = root / "pruned"
    t0 = time.perf_counter()
    save_pruned(handle, make_provenance(handle, report, calibration), out, overwrite=True, progress=NullProgress())
    save_s = time.perf_counter() - t0
    summaries = {}
    for fmt in ("hf", "sparse"):
        summaries[fmt] = export(out, root / f"export-{fmt}", format=fmt, overwrite=True)
    del handle
    gc.collect()

    folders = {fmt: Path(s["destination"]) for fmt, s in summaries.items()}
    loads: dict[str, list[float]] = {"hf": [], "sparse": []}
    timed_load(folders["hf"])  # warm-up, not timed: imports and the page cache
    for rep in range(args.reps):
        for fmt in (("hf", "sparse") if rep % 2 == 0 else ("sparse", "hf")):
            seconds, model = timed_load(folders[fmt])
            loads[fmt].append(seconds)
            if rep == 0:
                state = model.state_dict()
                for name, weight in reference.items():
                    assert torch.equal(state[f"{name}.weight"], weight), f"{fmt}: {name} differs"
            del model
        print(f"rep {rep + 1}/{args.reps} (load avg {os.getloadavg()[0]:.2f}): load hf {loads['hf'][-1]:.2f} s, "
              f"sparse {loads['sparse'][-1]:.2f} s", flush=True)

    hf, sp = summaries["hf"], summaries["sparse"]
    hf_disk = folder_bytes(folders["hf"])
    print()
    print(f"zprune output (save_pruned): {folder_bytes(out) / MiB:.1f} MiB on disk, saved in {save_s:.1f} s; "
          f"export hf {hf['seconds']:.1f} s, sparse {sp['seconds']:.1f} s")
    print()
    header = (f"{'layout':<36}{'folder MiB':>11}{'weights MiB':>12}{'x hf':>7}{'pruned W MiB':>14}{'x dense W':>10}"
              f"{'load s':>8}{'x hf load':>10}")
    print(header)
    print("-" * len(header))
    med_hf = statistics.median(loads["hf"])
    rows = [
        ("hf export (dense safetensors)", hf_disk, hf["weights_disk_bytes"], hf["pruned_stored_bytes"], med_hf),
        ("sparse export (values + bitmask)", folder_bytes(folders["sparse"]), sp["weights_disk_bytes"],
         sp["pruned_stored_bytes"], statistics.median(loads["sparse"])),
        ("theoretical (nonzeros + 1 bit/w)", None, sp["theoretical_bytes"], sp["pruned_theoretical_bytes"], None),
    ]
    for label, folder, weights, pruned, load in rows:
        print(f"{label:<36}{(f'{folder / MiB:.1f}' if folder else '-'):>11}{weights / MiB:>12.1f}"
              f"{weights / hf['weights_disk_bytes']:>7.3f}{pruned / MiB:>14.1f}{pruned / hf['pruned_dense_bytes']:>10.3f}"
              f"{(f'{load:.2f}' if load else '-'):>8}{(f'{load / med_hf:.2f}' if load else '-'):>10}")
    print()
    print(f"tensor bytes: dense {hf['dense_bytes'] / MiB:.1f} MiB, sparse stored {sp['stored_bytes'] / MiB:.1f} MiB, "
          f"theoretical {sp['theoretical_bytes'] / MiB:.1f} MiB; pruned weights alone: dense {hf['pruned_dense_bytes'] / MiB:.1f}"
          f" -> sparse {sp['pruned_stored_bytes'] / MiB:.1f} MiB ({sp['pruned_stored_bytes'] / sp['pruned_dense_bytes']:.3f}x), "
          f"{sp['pruned_layers']} layers, overall sparsity {sp['overall_sparsity']}")
    per_rep = [s / h for s, h in zip(loads["sparse"], loads["hf"])]
    print(f"load sparse / hf: {statistics.median(per_rep):.2f}x (per rep: {', '.join(f'{r:.2f}' for r in per_rep)})")
    print(f"at the end: {library_state()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
