"""``crantseg run`` and ``crantseg status``."""
from __future__ import annotations

import argparse
import json
import re
import sys

from ..errors import CrantsegError
from ..persist import status, verify
from .operations import OPERATIONS
from .runner import run_job

__all__ = ["run_main", "status_main", "add_cluster_arguments"]


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scheduler", help="tcp://HOST:PORT of a running scheduler, or a scheduler file (.json)")
    g.add_argument("--cluster", help="a cluster spec YAML (see cluster/)")
    p.add_argument("--workers", type=int, default=2, help="workers of the default LocalCluster (default 2)")
    p.add_argument("--performance-report", help="write a Dask performance report (HTML) here")


def run_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="crantseg run", description="Run an operation over a table as a resumable job.")
    p.add_argument("operation", choices=sorted(OPERATIONS))
    p.add_argument("--input", required=True, help="parquet, CSV or Zarr table")
    p.add_argument("--output", required=True, help="Zarr group to write (OUT.zarr)")
    p.add_argument("--dataset", help="latest | sandbox | local | tiny | demo | a dataset directory")
    p.add_argument("--timestamp", help='None (now), "mat", "mat_<N>", ISO 8601 or unix seconds (e.g. 1751005783)')
    p.add_argument("--resume", action="store_true", help="finish an interrupted job (only unfinished partitions run)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing output; with --resume, start again from scratch (discarding finished "
                   "partitions) when the job changed")
    p.add_argument("--partition-size", type=int, help="rows per task (default: crantseg.partition-size)")
    p.add_argument("--coordinates", help="locs-to-supervoxels, locs-to-segments, snap: units of x, y, z: nm "
                   "(default) or voxel (8x8x42 nm)")
    p.add_argument("--mip", type=int, help="locs-to-supervoxels and get-voxels: the mip (default 0)")
    p.add_argument("--thin", action="store_true", help="get-voxels: drop voxels at unjoined interfaces")
    p.add_argument("--id-column", help="snap: the column holding each row's target ID (default target_id)")
    p.add_argument("--search-radius", type=float, help="snap: radius in nm (default 160)")
    p.add_argument("--allow-float-ids", action="store_true",
                   help="accept ID columns stored as floats when every value is a whole number below 2**53 "
                   "(larger floats cannot hold a uint64 ID exactly and are always refused)")
    p.add_argument("--no-progress", action="store_true")
    add_cluster_arguments(p)
    a = p.parse_args(argv)
    timestamp = a.timestamp
    if timestamp is not None and re.fullmatch(r"[+-]?[0-9]+(\.[0-9]*)?", timestamp.strip()):
        timestamp = float(timestamp)  # unix seconds, as --help says
    op = OPERATIONS[a.operation]
    # each option goes to the operations that read it; given to another one it is an error, not ignored
    takes = {"coordinates": ("locs-to-supervoxels", "locs-to-segments", "snap"),
             "mip": ("locs-to-supervoxels", "get-voxels"), "thin": ("get-voxels",),
             "id_column": ("snap",), "search_radius": ("snap",)}
    extra = {}
    for name, ops in takes.items():
        value = getattr(a, name)
        if value is None or value is False:
            continue
        if a.operation not in ops:
            p.error(f"--{name.replace('_', '-')} does not apply to {a.operation} (only to {', '.join(ops)})")
        extra[name] = value
    if a.timestamp is not None and not op.uses_timestamp:
        p.error(f"--timestamp does not apply to {a.operation}: it reads no root IDs at a time")
    try:
        import dask.config

        with dask.config.set({"crantseg.allow-float-ids": bool(a.allow_float_ids)}):
            summary = run_job(a.operation, a.input, a.output, dataset=a.dataset, timestamp=timestamp,
                              scheduler=a.scheduler, cluster=a.cluster, resume=a.resume, force=a.force,
                              partition_size=a.partition_size, progress=not a.no_progress,
                              performance_report=a.performance_report, n_workers=a.workers, **extra)
    except CrantsegError as e:
        print(f"crantseg run: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a file the job touched outside the store (permissions, full disk ...)
        print(f"crantseg run: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1, default=str))
    return 0


def status_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="crantseg status", description="Progress of a job's Zarr output.")
    p.add_argument("output")
    p.add_argument("--verify", action="store_true",
                   help="read every chunk (checksums) and list damaged partitions; exit 1 when any is damaged")
    a = p.parse_args(argv)
    try:
        s = status(a.output)
        found = verify(a.output) if a.verify else None
    except (CrantsegError, OSError) as e:
        print(f"crantseg status: {_one_line(e)}", file=sys.stderr)
        return 2
    print(f"{a.output}: {s['operation']} on {s['dataset']}, {s['partitions_done']}/{s['partitions']} partitions "
          f"done ({s['rows']} rows){', complete' if s['complete'] else ''}")
    if found is None:
        return 0
    for kind, bad in (("input", found["inputs"]), ("output", found["outputs"])):
        for i, problems in sorted(bad.items()):
            print(f"  damaged {kind} of partition {i}: {'; '.join(problems)}")
    if found["inputs"] or found["outputs"]:
        print(f"  {len(set(found['inputs']) | set(found['outputs']))} damaged partition(s): rerun the same "
              "`crantseg run ... --resume` to recompute them")
        return 1
    print(f"  verified: every chunk of {s['partitions']} partitions reads back with a matching checksum")
    return 0


def _one_line(e: BaseException) -> str:
    text = str(e).strip().replace("\n", " ")
    return text if isinstance(e, CrantsegError) else f"{type(e).__name__}: {text}"
