"""Run every benchmark and print ratios against the peers measured in the same run.

    python benchmarks/run.py            # full (generates the demo dataset on first use, ~1 min)
    python benchmarks/run.py --quick    # smaller sizes
    python benchmarks/run.py points voxels jobs   # a subset
    python benchmarks/run.py --preset tiny --quick  # on another embedded preset (a smoke run)
    python benchmarks/run.py --quick storage      # storage (file:// vs HTTP with latency) on tiny
    python benchmarks/run.py jobmem               # peak RSS per worker of the 10^7-row job
    python benchmarks/run.py scale                # scale model: constants, miniature, CRANT (SCALE.md)

Results are printed as tables and written to benchmarks/results/NAME.md (with the command, machine
and date, and the density of the dataset measured on: bytes, labels per chunk, bits per block);
benchmarks/RESULTS.md collects them.
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
BENCHES = ["points", "ids", "voxels", "jobs", "jobmem", "storage", "storagejob", "refresh", "scale"]


def print_rows(rows: list[dict]) -> str:
    cols = ["benchmark", "case", "ours", "peer", "peer_value", "ratio"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = [f"{r['ratio']:.1f}x" if c == "ratio" and isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        lines.append("| " + " | ".join(vals) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def dataset_line(preset: str) -> str:
    """The density figures of the embedded preset the benchmarks run on (``dataset.stats``)."""
    from crantseg_dask.sources.resolve import local_dataset_path
    from crantseg_dask.dataset.stats import dataset_stats, format_stats

    return f"{preset} {format_stats(dataset_stats(local_dataset_path(preset)))}"


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip() + f"\n\nBenchmarks: {' '.join(BENCHES)} (default: all of them).")
        return 0
    quick = "--quick" in argv
    if "--preset" in argv:
        i = argv.index("--preset")
        os.environ["CRANTSEG_BENCH_PRESET"] = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    preset = os.environ.get("CRANTSEG_BENCH_PRESET", "demo")
    names = [a for a in argv if not a.startswith("-")] or BENCHES
    sys.path.insert(0, str(HERE))
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    for name in names:
        try:
            module = importlib.import_module(f"bench_{name}")
        except ImportError as e:
            print(f"(skipping {name}: {e})")
            continue
        print(f"== {name}", flush=True)
        stats = dataset_line(preset)
        print(stats, flush=True)
        t0 = time.perf_counter()
        table = print_rows(module.run(quick=quick))
        header = (f"## {name}\n\n`python benchmarks/run.py{' --quick' if quick else ''} {name}` on {platform.node()} "
                  f"({os.cpu_count()} cores, Python {platform.python_version()}), "
                  f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - t0:.0f} s.\n\n"
                  f"Dataset: {stats}.\n\n")
        doc = (module.__doc__ or "").strip()
        (out_dir / f"{name}.md").write_text(header + doc + "\n\n" + table + "\n")
    write_results()
    return 0


def write_results() -> None:
    """Collect ``results/NAME.md`` into ``RESULTS.md``."""
    out_dir = HERE / "results"
    parts = [(out_dir / f"{n}.md").read_text() for n in BENCHES if (out_dir / f"{n}.md").exists()]
    (HERE / "RESULTS.md").write_text(
        "# Benchmark results\n\nEach section is rewritten by the command it names. A ratio is the peer's time over "
        "ours, or our rate over the peer's (higher is better for us) unless the row says otherwise. Wall time on "
        "one 2-core machine; read every number as +-30% (perf-baseline.md). Each section names the dataset it ran "
        "on (`Dataset:` with its density); a section without that line predates the dense world (generator v3) "
        "and was measured on the old sparse world (generator v2: about 4 KiB, 13-26 labels per chunk, 0.27 "
        "bits per block).\n\n" + "\n".join(parts))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
