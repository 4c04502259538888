"""Benchmark: the headline job at real shapes, phase by phase, against the dry run's estimates and the floor.

For each size (SmolLM2-135M, the real model; TinyLlama-1.1B's, Llama-2-7B's and Llama-2-13B's shapes with
seeded random bfloat16 weights from make_checkpoint.py), on this machine, one torch thread:
- the checkpoint is written (not timed in the table), unless the disk cannot hold what the size needs: the
  checkpoint, the statistics store and one output (from the dry runs), plus --keep-free; the size is then
  skipped and the reason printed;
- `zprune calibrate` (the statistics every score method reads), then `zprune prune --out` per method and
  pattern (a cache hit for the score methods; SparseGPT and ALPS propagate pruned inputs, collecting their own
  statistics), each in a fresh process, with `--offload disk` where the model's float32 weights exceed the
  available memory and without --offload otherwise; each output is checked (sparsity) and deleted;
- the first output of a size is reloaded with plain `from_pretrained` in bfloat16 (up to 7B) or measured with
  `zprune eval --offload disk` on 4 windows (larger), so every size runs end to end;
- every command also runs with `--dry-run --json` first; its per-step estimates stand beside the measures.

Each process measures itself, phase by phase (a phase is a top-level progress step: load, calibrate, prune,
save, eval): wall seconds, CPU seconds (user + system: on a machine shared with other jobs, the work itself),
peak resident memory (VmHWM, reset at each phase start through
/proc/self/clear_refs), bytes read from and written to storage (/proc/self/io: read_bytes, write_bytes, so
a read served by the page cache counts 0; the checkpoint's pages are dropped from the cache before each
process, with posix_fadvise, so reads are real). The store's size is measured on disk.

    python tests/benchmarks/bench_scale.py --floor                      # disk and matmul speed, and the floor
    python tests/benchmarks/bench_scale.py --sizes tinyllama-1.1b --methods wanda --patterns 0.5
    python tests/benchmarks/bench_scale.py --sizes llama-2-7b --methods wanda,magnitude -n 8 -l 512 --json out.json
    python tests/benchmarks/bench_scale.py --table out.json [--plot plot.png]   # the table (and plot) from results

--work is where checkpoints, the cache and outputs go (default: a temporary folder, removed at the end);
checkpoints are kept there between runs with --keep-checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import REPO, library_state

sys.path.insert(0, str(Path(__file__).parent))
from make_checkpoint import SHAPES, n_params  # noqa: E402

GiB = 2**30
REAL = {"smollm2-135m": 134_515_008}  # parameters of the real model (alias), for the table
PHASES = (("Loading", "load"), ("Tokenising", "calibrate"), ("Sampling", "calibrate"), ("Embedding", "calibrate"),
          ("Calibrating", "calibrate"), ("Pruning", "prune"), ("Saving", "save"), ("Capturing", "eval"),
          ("Perplexity", "eval"))

# Run inside each zprune process: measure each top-level progress step (the CLI's LineProgress on a pipe).
CHILD = r"""
import atexit, json, os, sys, time
from contextlib import contextmanager
def _status(key):
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))
def _io():
    with open('/proc/self/io') as f:
        return {l.split(':')[0]: int(l.split(':')[1]) for l in f}
def _reset():
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
import threading
RECORD = {'phases': [], 'between_peak': 0, 'started': time.time()}
OPEN = {}  # the top-level step under way: its start, so that a killed sitting's last record holds it so far
LOCK = threading.Lock()
def _snapshot(start, peak):
    io = _io()
    return {'step': start['step'], 'seconds': time.perf_counter() - start['at'], 'cpu': sum(os.times()[:2]) - start['cpu'],
            'peak': peak, 'read': io['read_bytes'] - start['io']['read_bytes'],
            'written': io['write_bytes'] - start['io']['write_bytes'], 'device_peak': 0}
def _write():
    with LOCK:
        RECORD['between_peak'] = max(RECORD['between_peak'], _status('VmHWM')) if not OPEN else RECORD['between_peak']
        RECORD['io'] = _io()
        RECORD['wall'] = time.time() - RECORD['started']
        RECORD['open'] = _snapshot(OPEN, _status('VmHWM')) if OPEN else None
        tmp = os.environ['PHASES_FILE'] + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(RECORD, f)
        os.replace(tmp, os.environ['PHASES_FILE'])
def _every_minute():  # a sitting killed mid-phase (a prune of hours) loses at most this much of its record
    while True:
        time.sleep(30)
        _write()
atexit.register(_write)
threading.Thread(target=_every_minute, daemon=True).start()
try:
    from zprune_cli.cli.progress import LineProgress
except ImportError:  # before the progress classes had their own module
    from zprune_cli.cli.output import LineProgress
_task = LineProgress.task
DEPTH = [0]
@contextmanager
def task(self, description, total):
    if DEPTH[0]:
        DEPTH[0] += 1
        try:
            with _task(self, description, total) as step:
                yield step
        finally:
            DEPTH[0] -= 1
        return
    DEPTH[0] += 1
    RECORD['between_peak'] = max(RECORD['between_peak'], _status('VmHWM'))
    _reset()
    with LOCK:
        OPEN.update(step=description, at=time.perf_counter(), cpu=sum(os.times()[:2]), io=_io())
    try:
        with _task(self, description, total) as step:
            yield step
    finally:
        DEPTH[0] -= 1
    with LOCK:
        RECORD['phases'].append({**_snapshot(OPEN, _status('VmHWM')), 'device_peak': _device_peak()})
        OPEN.clear()
    _reset()
def _device_peak():
    import torch
    if not torch.cuda.is_available():
        return 0
    peak = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    return peak
LineProgress.task = task
import runpy
sys.argv = ['zprune', *sys.argv[1:]]
runpy.run_module('zprune_cli', run_name='__main__')
"""

RELOAD = r"""
import json, os, sys, time, torch
started = time.perf_counter()
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
seconds = time.perf_counter() - started
w = model.model.layers[0].mlp.down_proj.weight
with open('/proc/self/status') as f:
    peak = next(int(l.split()[1]) * 1024 for l in f if l.startswith('VmHWM'))
with open('/proc/self/io') as f:
    read = next(int(l.split(':')[1]) for l in f if l.startswith('read_bytes'))
print(json.dumps({'seconds': seconds, 'peak': peak, 'read': read, 'dtype': str(w.dtype),
                  'params': sum(p.numel() for p in model.parameters()), 'down_proj_zeros': float((w == 0).float().mean())}))
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="smollm2-135m,tinyllama-1.1b,llama-2-7b,llama-2-13b")
    p.add_argument("--methods", default="magnitude,wanda,zpruner,sparsegpt,alps")
    p.add_argument("--patterns", default="0.5,2:4")
    p.add_argument("--nsamples", "-n", type=int, default=8)
    p.add_argument("--seqlen", "-l", type=int, default=512)
    p.add_argument("--data", default="c4-sample")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--device", default="cpu", help="zprune's --device (cuda: tests/benchmarks/gpu_check.sh)")
    p.add_argument("--offload", default="auto", help="auto (disk when the float32 weights exceed the available "
                   "memory, else none), none, cpu or disk")
    p.add_argument("--option", action="append", default=[], help="METHOD:KEY=VALUE, a method option (repeatable)")
    p.add_argument("--keep-free", type=float, default=10.0, help="GiB the disk keeps free whatever runs (default 10)")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--sittings", action="store_true",
                   help="a killed run of this benchmark resumes: each prune process is a sitting whose record is kept "
                        "under WORK/sittings (with a fixed --work), and the offloaded prune itself resumes from its "
                        "last finished block; the row sums the sittings. Rows of this size already in --json are not "
                        "measured again, so a benchmark that spans sessions goes on where it stopped")
    p.add_argument("--json", type=Path, default=None, help="append each measured row to this JSON-lines file")
    p.add_argument("--floor", action="store_true", help="measure the disk and the CPU and print the floor, then stop")
    p.add_argument("--table", type=Path, default=None, help="print the table of a --json file, then stop")
    p.add_argument("--plot", type=Path, default=None, help="with --table: time and peak memory against parameters")
    return p.parse_args(argv)


def load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def env_for(work: Path, phases: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ZPRUNE_NO_PROGRESS"}  # LineProgress: the phases
    env.update(ZPRUNE_HOME=str(work / "cache"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PHASES_FILE=str(phases), NO_COLOR="1")
    return env


def drop_cache(folder: Path | str) -> None:
    """Drop the pages of this folder's files from the page cache, so the next process reads from the disk."""
    path = Path(folder)
    if not path.is_dir():
        return
    for file in path.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd) if os.access(file, os.W_OK) else None
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def zprune(args: list[str], work: Path, phases: Path | None = None) -> dict:
    """One zprune process, measured phase by phase (its record in `phases`); raises SystemExit with its stderr
    on failure."""
    phases = phases or work / "phases.json"
    phases.unlink(missing_ok=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=REPO, env=env_for(work, phases),
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"zprune {' '.join(args)}: exit {done.returncode}\n{done.stderr[-3000:]}")
    record = json.loads(phases.read_text())
    record.update(wall=wall, stdout=done.stdout, stderr=done.stderr)
    return record


def dry_run(args: list[str], work: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "zprune_cli", *args, "--dry-run", "--json"], cwd=REPO,
                          env=env_for(work, work / "unused.json"), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"dry run of zprune {' '.join(args)}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def by_phase(record: dict) -> dict[str, dict]:
    """Steps grouped into phases: seconds and bytes summed, the peak the largest."""
    out: dict[str, dict] = {}
    for step in record["phases"]:
        phase = next((p for prefix, p in PHASES if step["step"].startswith(prefix)), "other")
        row = out.setdefault(phase, {"seconds": 0.0, "cpu": 0.0, "peak": 0, "read": 0, "written": 0})
        row["seconds"] += step["seconds"]
        row["cpu"] += step.get("cpu", 0.0)  # this process's user + system seconds: the work, whatever else ran
        row["peak"] = max(row["peak"], step["peak"])
        row["device_peak"] = max(row.get("device_peak", 0), step.get("device_peak", 0))
        row["read"] += step["read"]
        row["written"] += step["written"]
    return out


def estimated_phase_peaks(estimate: dict) -> dict[str, int]:
    """The dry run's step totals grouped into the same phases (pruning and writing blocks: prune)."""
    out: dict[str, int] = {}
    for step, total in estimate.get("step_bytes", {}).items():
        phase = ("load" if step == "loading" else "calibrate" if step == "calibrating" else
                 "save" if step == "saving" else "eval" if step == "evaluating" else "prune")
        out[phase] = max(out.get(phase, 0), total)
    return out


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


# --- the floor ---------------------------------------------------------------------------------------------
def dd_speed(args: list[str]) -> float:
    """Bytes per second that dd reports (O_DIRECT: the disk, not the page cache)."""
    done = subprocess.run(["dd", *args], capture_output=True, text=True, check=True)
    line = done.stderr.strip().splitlines()[-1]  # "N bytes (...) copied, S s, ..."
    return int(line.split()[0]) / float(line.split("copied, ")[1].split()[0])


def matmul_flops(threads: int = 1) -> dict[str, float]:
    """FLOP/s of float32 matmuls of a Llama-2-7B block's shapes, 512 tokens, one thread (best of 3)."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, (k, n) in {"x @ W^T, 4096 -> 11008": (4096, 11008), "x @ W^T, 11008 -> 4096": (11008, 4096),
                         "x @ W^T, 4096 -> 4096": (4096, 4096)}.items():
        x, w = torch.randn(512, k), torch.randn(n, k)
        best = min(_timed(lambda: x @ w.T) for _ in range(3))
        out[name] = 2 * 512 * k * n / best
    return out


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def floor(args: argparse.Namespace, work: Path) -> dict:
    """The floor of a score method's prune of the 7B shape: every weight read once from the disk, and the
    calibration tokens through every block once at the measured matmul speed (linear layers and attention)."""
    shape = SHAPES["llama-2-7b"]
    probe = work / "dd-probe"
    write = dd_speed(["if=/dev/zero", f"of={probe}", "bs=16M", "count=128", "oflag=direct"])
    read = dd_speed([f"if={probe}", "of=/dev/null", "bs=16M", "iflag=direct"])
    probe.unlink()
    flops = matmul_flops()
    speed = min(flops.values())
    head = shape.hidden // shape.heads
    kv = shape.kv_heads * head
    linear = shape.hidden * (2 * shape.hidden + 2 * kv) + 3 * shape.hidden * shape.intermediate  # per block
    tokens = args.nsamples * args.seqlen
    attention = 2 * 2 * args.seqlen * shape.hidden  # scores and weighted sum per token, full (not causal) square
    compute = tokens * shape.layers * (2 * linear + attention) / speed
    weights = 2 * n_params(shape)
    result = {"disk_read_Bps": read, "disk_write_Bps": write, "matmul_flops": flops, "tokens": tokens,
              "read_s": weights / read, "compute_s": compute, "write_s": weights / write,
              "floor_s": weights / read + compute, "floor_with_save_s": weights / read + compute + weights / write}
    print(f"disk (O_DIRECT, 2 GiB, 16 MiB blocks): read {read / 1e6:.0f} MB/s, write {write / 1e6:.0f} MB/s; "
          f"load average {load_average()}")
    for name, value in flops.items():
        print(f"matmul float32, one thread, 512 tokens, {name}: {value / 1e9:.1f} GFLOP/s")
    print(f"llama-2-7b: {weights / GiB:.2f} GiB of bfloat16 weights read once: {result['read_s']:.1f} s; "
          f"{tokens} calibration tokens ({args.nsamples} x {args.seqlen}) through {shape.layers} blocks of "
          f"{linear / 1e6:.1f} M linear weights ({2 * linear * tokens * shape.layers / 1e12:.1f} TFLOP of matmuls, "
          f"+{attention * tokens * shape.layers / 1e12:.2f} TFLOP of attention) at {speed / 1e9:.1f} GFLOP/s: "
          f"{compute:.0f} s")
    print(f"floor (read + compute): {result['floor_s']:.0f} s; with the output written once: {result['floor_with_save_s']:.0f} s")
    return result


# --- one size ----------------------------------------------------------------------------------------------
def spec_args(spec: str) -> list[str]:
    return ["--pattern", spec] if ":" in spec else ["--sparsity", spec]


def offload_for(model: str) -> str:
    """--offload disk when the model's float32 weights exceed the available memory (the refusal's own rule)."""
    from zprune_cli.models.host_memory import available_memory, checkpoint_params

    params = checkpoint_params(Path(model)) if Path(model).is_dir() else None
    return "disk" if params and 4 * params > (available_memory() or 0) else "none"


def disk_plan(size: str, model: str, cal: list[str], work: Path, args) -> tuple[int, dict]:
    """(bytes this size needs on the disk at once beside its checkpoint, the calibrate dry run): the
    calibration entry and the largest prune's output. Propagated statistics are a cache zprune gives up
    where they would leave under 10% of the disk free (stats/store.py), so they are not counted."""
    estimate = dry_run(["calibrate", model, *cal], work)
    largest = 0
    for method in args.methods.split(","):
        for spec in args.patterns.split(","):
            plan = work / "plan" / "out"  # never made: the prune outputs' folder (work/out) exists after a size
            e = dry_run(["prune", model, "--method", method, *spec_args(spec), *cal, "--out", str(plan)], work)
            largest = max(largest, e["output_bytes"])
    return estimate["store_bytes"] + largest, estimate


def run_size(size: str, args, work: Path, rows: list[dict]) -> None:
    started = time.perf_counter()
    model = size if size in REAL else str(work / "ckpt" / size)
    if size not in REAL and not Path(model).is_dir():
        need = 2 * 2 * n_params(SHAPES[size]) + 4 * GiB  # the checkpoint and one output, before any dry run
        free = shutil.disk_usage(work).free
        if free - need < args.keep_free * GiB:
            print(f"SKIPPED {size}: it needs about {need / GiB:.1f} GiB (checkpoint and one output), the disk has "
                  f"{free / GiB:.1f} GiB free and keeps {args.keep_free:.0f} GiB free", flush=True)
            return
        subprocess.run([sys.executable, str(Path(__file__).parent / "make_checkpoint.py"), size, model], check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        print(f"{size}: checkpoint written in {time.perf_counter() - started:.0f} s", flush=True)
    mode = offload_for(model) if args.offload == "auto" else args.offload
    offload = ["--offload", mode] if size not in REAL or args.offload != "auto" else []
    cal = ["--data", args.data, "-n", str(args.nsamples), "-l", str(args.seqlen), *offload, "--device", args.device]
    need, _ = disk_plan(size, model, cal, work, args)
    need -= sum(folder_bytes(f) for f in (work / "out").glob(".*.zprune-partial"))  # a resumed output: on disk already
    free = shutil.disk_usage(work).free
    if free - need < args.keep_free * GiB:
        print(f"SKIPPED {size}: its store and largest output need {need / GiB:.1f} GiB, the disk has {free / GiB:.1f} "
              f"GiB free and keeps {args.keep_free:.0f} GiB free", flush=True)
        return
    print(f"{size}: {offload or 'model loaded whole'}; disk: {need / GiB:.1f} GiB needed, {free / GiB:.1f} GiB free; "
          f"load average {load_average()}", flush=True)
    speed = matmul_flops()  # this machine's speed now, for the floor of this size (the load changes it)
    print(f"{size}: float32 matmul, one thread: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in speed.items()),
          flush=True)
    done = measured_before(args, size)
    if args.sittings and (any(sitting_files(work, f"{sitting_slug(size, '')}*")) or "calibrate" in done):
        print(f"{size}: resuming; its calibration is in the cache already, not measured again", flush=True)
        calibrated = dry_run(["calibrate", model, *cal], work)["store_bytes"]  # what each prune's estimate leaves out
    else:
        calibrated = measure(size, model, ["calibrate", model, *cal], "calibrate", work, rows, args,
                             extra={"matmul_flops": speed})
    first = not any(c.startswith(("from_pretrained", "eval")) for c in done)
    for method in args.methods.split(","):
        for spec in args.patterns.split(","):
            options = [a for o in args.option if o.startswith(f"{method}:") for a in ("--option", o.split(":", 1)[1])]
            label = " ".join([f"prune {method} {spec}", *options[1::2]])
            if label in done:
                print(f"{size}: {label} is in {args.json} already, not measured again", flush=True)
                continue
            out = work / "out" / f"{size}-{method}-{spec.replace(':', 'of')}"
            stats_before = set((work / "cache" / "stats").iterdir())
            measure(size, model, ["prune", model, "--method", method, *spec_args(spec), *options, *cal, "--out", str(out),
                                  "--overwrite"], label, work, rows, args, out, calibrated)
            if first:
                end_to_end(size, out, work, rows, args, offload)
                first = False
            shutil.rmtree(out, ignore_errors=True)
            for extra in set((work / "cache" / "stats").iterdir()) - stats_before:  # propagated statistics
                shutil.rmtree(extra, ignore_errors=True) if extra.is_dir() else extra.unlink()
    if size not in REAL and not args.keep_checkpoints:
        shutil.rmtree(model, ignore_errors=True)
    shutil.rmtree(work / "cache", ignore_errors=True)
    print(f"{size}: done in {time.perf_counter() - started:.0f} s", flush=True)


def measure(size: str, model: str, command: list[str], label: str, work: Path, rows: list[dict], args,
            out: Path | None = None, calibrated: int = 0, extra: dict | None = None) -> int:
    """Run and record one command; returns the store bytes its dry run counts (`calibrated`: the part of a cold
    prune's store that the calibrate before it wrote already, so not written again)."""
    estimate = dry_run(command, work)
    estimate["store_bytes"] -= calibrated if estimate["store_bytes"] >= calibrated else 0
    store = work / "cache" / "stats"
    store_before = folder_bytes(store)
    drop_cache(model)
    load = load_average()
    record = zprune(command, work) if not args.sittings else in_sittings(command, work, sitting_slug(size, label))
    phases = by_phase(record)
    est = estimated_phase_peaks(estimate)
    row = {"size": size, "params": estimate["params"], "command": label, "offload": estimate["offload"],
           "tokens": args.nsamples * args.seqlen, "wall": record["wall"], "load_before": load, "load_after": load_average(),
           "peak": max([p["peak"] for p in phases.values()] + [record["between_peak"]]),
           "peak_estimate": estimate["host_peak_bytes"], "device_peak": max((p.get("device_peak", 0) for p in phases.values()), default=0),
           "device_peak_estimate": estimate["device_peak_bytes"], "store": folder_bytes(store) - store_before,
           "store_estimate": estimate["store_bytes"], "output": folder_bytes(out) if out else 0,
           "output_estimate": estimate["output_bytes"], "phases": phases, "phase_estimates": est,
           "read": record["io"]["read_bytes"], "written": record["io"]["write_bytes"], "library": library_state(),
           **(extra or {})}
    if out is not None:
        row["sparsity"] = json.loads((out / "zprune.json").read_text()).get("overall_sparsity")
    rows.append(row)
    print(json.dumps({k: v for k, v in row.items() if k not in ("phases", "phase_estimates")}), flush=True)
    for phase, p in phases.items():
        print(f"  {phase:9s} {p['seconds']:8.1f} s  peak {p['peak'] / GiB:6.2f} GiB (estimate "
              f"{est.get(phase, 0) / GiB:6.2f})  read {p['read'] / 1e9:6.2f} GB  written {p['written'] / 1e9:6.2f} GB",
              flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")
    return estimate["store_bytes"]


def measured_before(args, size: str) -> set[str]:
    """--sittings: the commands of this size whose rows an earlier invocation appended to --json."""
    if not (args.sittings and args.json and args.json.exists()):
        return set()
    rows = [json.loads(line) for line in args.json.read_text().splitlines() if line.strip()]
    return {r["command"] for r in rows if r.get("size") == size}


def sitting_slug(size: str, label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{size}-{label}")


def sitting_files(work: Path, slug: str) -> list[Path]:
    """The records of a command's earlier sittings (processes killed before it finished), in order."""
    return sorted((work / "sittings").glob(f"{slug}-*.json"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))


def in_sittings(command: list[str], work: Path, slug: str) -> dict:
    """--sittings: one more process of a command that resumes (an offloaded prune: verbs/partial.py), its record
    kept where the next invocation finds it if this one is killed; once it finishes, every sitting's record
    combined and removed."""
    earlier = sitting_files(work, slug)
    (work / "sittings").mkdir(parents=True, exist_ok=True)
    if earlier:
        print(f"resuming after {len(earlier)} sitting(s) of {sum(json.loads(f.read_text()).get('wall', 0) for f in earlier):.0f} s",
              flush=True)
    mine = work / "sittings" / f"{slug}-{len(earlier)}.json"
    record = zprune(command, work, mine)
    whole = combined([json.loads(f.read_text()) for f in earlier] + [record])
    for f in [*earlier, mine]:
        f.unlink(missing_ok=True)
    return whole


def combined(records: list[dict]) -> dict:
    """One command's record from its sittings: the phases of each (a killed sitting's phase under way as far as
    its last record), bytes and wall time summed, the peak the largest; by_phase sums each phase over them."""
    phases = [step for r in records for step in r["phases"] + ([r["open"]] if r.get("open") else [])]
    io = {key: sum(r["io"][key] for r in records) for key in ("read_bytes", "write_bytes")}
    last = records[-1]
    return {**last, "phases": phases, "io": io, "between_peak": max(r["between_peak"] for r in records),
            "wall": sum(r["wall"] for r in records), "sittings": len(records)}


def end_to_end(size: str, out: Path, work: Path, rows: list[dict], args, offload: list[str]) -> None:
    """The saved model loads with plain from_pretrained (bfloat16) when it fits memory, else `zprune eval
    --offload disk` on 4 windows."""
    drop_cache(out)
    if offload_for(str(out)) == "none" or size in REAL or 2 * n_params(SHAPES[size]) < 0.8 * _available():
        started, load = time.perf_counter(), load_average()
        done = subprocess.run([sys.executable, "-c", RELOAD, str(out)], capture_output=True, text=True, check=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
        result = json.loads(done.stdout.strip().splitlines()[-1])
        row = {"size": size, "command": "from_pretrained bf16", "wall": time.perf_counter() - started, "load_before": load,
               "peak": result["peak"], "read": result["read"], "phases": {"load": {"seconds": result["seconds"],
               "peak": result["peak"], "read": result["read"], "written": 0}}, "check": result}
        print(json.dumps(row), flush=True)
    else:
        command = ["eval", str(out), "--eval", args.data, "--eval-seqlen", str(args.seqlen), "--max-windows", "4",
                   "--offload", "disk"]
        estimate = dry_run(command, work)
        record = zprune(command, work)
        row = {"size": size, "command": "eval --offload disk, 4 windows", "wall": record["wall"],
               "peak": max(p["peak"] for p in record["phases"]), "peak_estimate": estimate["host_peak_bytes"],
               "phases": by_phase(record), "phase_estimates": estimated_phase_peaks(estimate),
               "read": record["io"]["read_bytes"], "written": record["io"]["write_bytes"], "stdout": record["stdout"][-500:]}
        print(json.dumps({k: v for k, v in row.items() if k not in ("phases", "phase_estimates")}), flush=True)
    rows.append(row)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")


def _available() -> int:
    from zprune_cli.models.host_memory import available_memory

    return available_memory() or 0


# --- the table and the plot --------------------------------------------------------------------------------
def table(rows: list[dict]) -> str:
    """One line per (size, command, phase): measured beside the dry run's estimate."""
    lines = ["| size | params | offload | command | phase | wall | CPU | peak RSS (estimate) | read | written | store (estimate) | "
             "output (estimate) | load avg |", "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        est = r.get("phase_estimates", {})
        for i, (phase, p) in enumerate(r["phases"].items()):
            first = i == 0
            store = f"{r['store'] / 2**20:.1f} MiB ({r['store_estimate'] / 2**20:.1f})" if first and "store" in r else ""
            output = (f"{r['output'] / GiB:.2f} GiB ({r['output_estimate'] / GiB:.2f})"
                      if first and r.get("output") else "")
            estimate = f" ({est[phase] / GiB:.2f})" if phase in est else ""
            lines.append(f"| {r['size'] if first else ''} | {_params(r) if first else ''} | {r.get('offload', '') if first else ''} "
                         f"| {r['command'] if first else ''} | {phase} | {p['seconds']:.1f} s | {_cpu(p)} | {p['peak'] / GiB:.2f} GiB{estimate} "
                         f"| {p['read'] / 1e9:.2f} GB | {p['written'] / 1e9:.2f} GB | {store} | {output} | "
                         f"{r.get('load_before', '') if first else ''} |")
    return "\n".join(lines)


def _cpu(phase: dict) -> str:
    return f"{phase['cpu']:.1f} s" if phase.get("cpu") else "-"  # rows measured before CPU seconds were kept


def _params(r: dict) -> str:
    return f"{r['params'] / 1e9:.2f} B" if r.get("params") else ""


def totals(rows: list[dict]) -> str:
    """One line per command: wall, whole-process peak against the dry run's, bytes written."""
    gpu = any(r.get("device_peak") for r in rows)
    lines = ["| size | command | wall | peak RSS | dry-run peak | peak error | written | dry-run writes | sparsity |"
             + (" device peak | dry-run device peak |" if gpu else ""), "|---|---|---:|---:|---:|---:|---:|---:|---:|"
             + ("---:|---:|" if gpu else "")]
    for r in rows:
        est = r.get("peak_estimate")
        error = f"{(est - r['peak']) / r['peak']:+.0%}" if est else ""
        writes = r.get("output_estimate", 0) + r.get("store_estimate", 0)
        lines.append(f"| {r['size']} | {r['command']} | {r['wall']:.0f} s | {r['peak'] / GiB:.2f} GiB | "
                     f"{est / GiB if est else 0:.2f} GiB | {error} | {r.get('written', 0) / 1e9:.2f} GB | "
                     f"{writes / 1e9:.2f} GB | {r.get('sparsity', '')} |"
                     + (f" {r.get('device_peak', 0) / GiB:.2f} GiB | {r.get('device_peak_estimate', 0) / GiB:.2f} GiB |" if gpu else ""))
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, command: str = "prune wanda 0.5") -> None:
    """Time (calibrate + prune) and peak memory against parameters, log-log, the dry run's peak as a second line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["size"] for r in rows if r["command"] == command]
    calib = {r["size"]: r for r in rows if r["command"] == "calibrate"}
    pts = sorted((r["params"], r["wall"] + calib[r["size"]]["wall"], r["peak"], r["peak_estimate"],
                  max(r["peak"], calib[r["size"]]["peak"]), max(r["peak_estimate"], calib[r["size"]]["peak_estimate"]),
                  cpu_seconds(r) + cpu_seconds(calib[r["size"]]), r.get("offload", ""))
                 for r in rows if r["command"] == command and r["size"] in calib)
    if not pts:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    p = [x[0] for x in pts]
    a.loglog(p, [x[1] for x in pts], "o-", label=f"calibrate + {command}, wall")
    if all(x[6] for x in pts):
        a.loglog(p, [x[6] for x in pts], "s--", label="the same, CPU seconds")
    a.set_xlabel("parameters"), a.set_ylabel("seconds"), a.legend(), a.grid(True, which="both", alpha=0.3)
    b.loglog(p, [x[4] / GiB for x in pts], "o-", label="measured peak RSS")
    for x in pts:  # the model whole in memory, or one block at a time (--offload disk)
        b.annotate(f"--offload {x[7]}", (x[0], x[4] / GiB), textcoords="offset points", xytext=(6, -12), fontsize=8)
    b.loglog(p, [x[5] / GiB for x in pts], "s--", label="--dry-run estimate")
    b.set_xlabel("parameters"), b.set_ylabel("GiB"), b.legend(), b.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"zprune at real shapes ({', '.join(sizes)}), one thread")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def exponents(rows: list[dict], command: str = "prune wanda 0.5") -> str:
    """Least-squares slopes of log(time) and log(peak) against log(parameters)."""
    import math

    calib = {r["size"]: r for r in rows if r["command"] == "calibrate"}
    pts = [(math.log(r["params"]), math.log(r["wall"] + calib[r["size"]]["wall"]),
            math.log(max(r["peak"], calib[r["size"]]["peak"])), math.log(max(cpu_seconds(r) + cpu_seconds(calib[r["size"]]), 1e-9)))
           for r in rows if r["command"] == command and r["size"] in calib]
    if len(pts) < 2:
        return "fewer than two sizes: no exponent"

    def slope(i: int) -> float:
        mx, my = sum(p[0] for p in pts) / len(pts), sum(p[i] for p in pts) / len(pts)
        return sum((p[0] - mx) * (p[i] - my) for p in pts) / sum((p[0] - mx) ** 2 for p in pts)

    cpu = all(cpu_seconds(r) for r in rows if r["command"] in (command, "calibrate"))
    return (f"{command} (with its calibration): time ~ params^{slope(1):.2f}" + (f", CPU time ~ params^{slope(3):.2f}" if cpu else "")
            + f", peak RSS ~ params^{slope(2):.2f} over {len(pts)} sizes")


def cpu_seconds(row: dict) -> float:
    """The process's CPU seconds over its phases (0 where a row was measured before they were kept)."""
    return sum(p.get("cpu", 0.0) for p in row.get("phases", {}).values())


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.table:
        rows = [json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]
        print(table(rows) + "\n\n" + totals([r for r in rows if "peak_estimate" in r]) + "\n\n" + exponents(rows))
        if args.plot:
            plot(rows, args.plot)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="zprune-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{library_state()}; {os.cpu_count()} CPUs, one torch thread; disk free {shutil.disk_usage(work).free / GiB:.1f} "
          f"GiB; load average {load_average()}; calibration {args.data} {args.nsamples} x {args.seqlen}", flush=True)
    if args.floor:
        floor(args, work)
        return
    rows: list[dict] = []
    try:
        for size in args.sizes.split(","):
            run_size(size, args, work, rows)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + table(rows) + "\n\n" + totals([r for r in rows if "peak_estimate" in r]) + "\n\n" + exponents(rows))
    print(f"at the end: {library_state()}; load average {load_average()}")


if __name__ == "__main__":
    main()
