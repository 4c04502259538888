"""Benchmark: the exact per-row selection of a score method at a Llama-2-7B down_proj (4096 x 11008), one thread.

Side by side in one process, alternating, median of --repeats: the k-th value of each row by np.partition of
the whole matrix (one copy of it) against ROWS_PER_PARTITION rows at a time (base/masks.py), and each row's
count of a bool mask by torch's sum (it casts the whole mask to the count's dtype first) against numpy's count.
The peak each holds over its inputs is measured in a child process with a fixed mmap threshold (every freed
array goes back to the system), in bytes per entry.

    python tests/benchmarks/bench_selection.py [--rows 4096] [--cols 11008] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

WAYS = {
    "partition whole": "np.partition(a, k - 1, axis=1)[:, k - 1 : k].copy()",
    "partition in chunks": "kth_smallest(s, k)",
    "count: torch sum": "m.sum(dim=1, dtype=torch.int32)",
    "count: numpy": "row_counts(m)",
}

CHILD = """
import sys, torch, numpy as np
sys.path.insert(0, {repo!r})
from zprune_cli.base.masks import kth_smallest, row_counts
torch.set_num_threads(1)
def hwm():
    return int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM'))) * 1024
s = torch.rand({rows}, {cols}, generator=torch.Generator().manual_seed(0)); a = s.numpy(); k = {cols} // 2
m = s <= 0.5
np.partition(np.zeros((4, 8), dtype=np.float32), 1, axis=1); row_counts(m[:2]); m[:2].sum(dim=1, dtype=torch.int32)
before = hwm()
{way}
print((hwm() - before) / s.numel())
"""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", type=int, default=11008)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch

    from zprune_cli.base.masks import kth_smallest, row_counts

    torch.set_num_threads(1)
    s = torch.rand(args.rows, args.cols, generator=torch.Generator().manual_seed(0))
    a, k, m = s.numpy(), args.cols // 2, s <= 0.5
    scope = {"np": np, "torch": torch, "kth_smallest": kth_smallest, "row_counts": row_counts, "s": s, "a": a, "k": k, "m": m}
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way, code in WAYS.items():
            started = time.perf_counter()
            eval(code, scope)
            times[way].append(time.perf_counter() - started)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    print(f"{args.rows} x {args.cols}, one thread, median of {args.repeats}; load average {os.getloadavg()[0]:.2f}")
    for way, code in WAYS.items():
        child = CHILD.format(repo=str(REPO), rows=args.rows, cols=args.cols, way=code)
        peak = float(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env,
                                    check=True).stdout)
        print(f"  {way:20s} {statistics.median(times[way]):7.3f} s   holds {peak:5.2f} bytes an entry")
    for slow, fast in (("partition whole", "partition in chunks"), ("count: torch sum", "count: numpy")):
        print(f"  {fast} / {slow}: {statistics.median(times[fast]) / statistics.median(times[slow]):.2f}x the time")


if __name__ == "__main__":
    main()
