"""Run every benchmark and print ratios against the peers measured in the same run.

    python benchmarks/run.py            # full (generates the demo dataset on first use, ~1 min)
    python benchmarks/run.py --quick    # smaller sizes
    python benchmarks/run.py points voxels jobs   # a subset

Results are printed as a table and written to benchmarks/RESULTS.md (with the machine and date).
Numbers are wall time on this machine; read them as +-30% (perf-baseline.md).
"""
from __future__ import annotations

import importlib
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["points", "ids", "voxels", "jobs"]


def print_rows(rows: list[dict]) -> str:
    cols = ["benchmark", "case", "ours", "peer", "peer_value", "ratio"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = [f"{r['ratio']:.1f}x" if c == "ratio" and isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        lines.append("| " + " | ".join(vals) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("-")] or BENCHES
    sys.path.insert(0, str(HERE))
    rows = []
    t0 = time.perf_counter()
    for name in names:
        try:
            module = importlib.import_module(f"bench_{name}")
        except ImportError as e:
            print(f"(skipping {name}: {e})")
            continue
        print(f"== {name}", flush=True)
        got = module.run(quick=quick)
        print_rows(got)
        rows += got
    header = (f"# Benchmark results\n\n`python benchmarks/run.py{' --quick' if quick else ''} {' '.join(names)}` "
              f"on {platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()}), "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - t0:.0f} s in all. "
              "A ratio is ours over the peer (higher is better for rates, lower is better for times and memory "
              "where the row says so).\n\n")
    (HERE / "RESULTS.md").write_text(header + print_rows(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
