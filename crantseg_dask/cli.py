"""The ``crantseg`` command: ``demo | run | status | refresh | serve | make-dataset | help``.

Each subcommand parses its own arguments in the module that implements it; this file only
dispatches, so ``crantseg serve --help`` is answered by ``crantseg_dask.server.main``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time

__all__ = ["main"]

COMMANDS = {
    "demo": ("crantseg_dask.jobs.demo", "main", "the main job on the embedded dataset: snap a synapse table, map roots, write Zarr"),
    "run": ("crantseg_dask.jobs.cli", "run_main", "run an operation over a table as a resumable job writing Zarr"),
    "status": ("crantseg_dask.jobs.cli", "status_main", "progress of a job's Zarr output"),
    "refresh": ("crantseg_dask.ops.refresh", "main", "bring a table's root IDs up to date (only rows whose roots changed)"),
    "serve": ("crantseg_dask.server.main", "main", "serve a dataset over the CAVE protocol on 127.0.0.1"),
    "make-dataset": ("crantseg_dask.cli", "make_dataset_main", "write a deterministic CRANT-like dataset"),
}


def make_dataset_main(argv: list[str]) -> int:
    from .dataset.generate import make_dataset
    from .dataset.layout import PRESETS

    p = argparse.ArgumentParser(prog="crantseg make-dataset", description=COMMANDS["make-dataset"][2])
    p.add_argument("--out", required=True, help="directory to write (must not exist or be empty)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="named preset (default: tiny)")
    p.add_argument("--seed", type=int, help="random seed (default: the preset's)")
    p.add_argument("--size", help="volume size X,Y,Z in mip-0 voxels (16x16x42 nm)")
    p.add_argument("--neurons", type=int, help="number of neurons")
    p.add_argument("--edits", type=int, help="number of edit operations")
    p.add_argument("--sparse", action="store_true",
                   help="the old sparse world: neurons in empty space, no tissue fill (fast unit tests)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset directory (never any other directory) once the new one "
                   "is complete")
    p.add_argument("--sharded", action="store_true",
                   help="write every mip in the neuroglancer sharded format (neuroglancer_uint64_sharded_v1)")
    a = p.parse_args(argv)
    params = PRESETS[a.preset]
    changes = {}
    if a.seed is not None:
        changes["seed"] = a.seed
    if a.size:
        try:
            size = tuple(int(v) for v in a.size.split(","))
            assert len(size) == 3 and min(size) > 0
        except (ValueError, AssertionError):
            p.error(f"--size {a.size!r}: expected three positive integers X,Y,Z")
        changes["size"] = size
    if a.neurons is not None:
        changes["n_neurons"] = a.neurons
    if a.edits is not None:
        changes["n_edits"] = a.edits
    if a.sparse:
        changes["dense"] = False
    if changes:
        params = params.with_(name="custom", **changes)
    t0 = time.perf_counter()
    try:
        out = make_dataset(params, a.out, overwrite=a.overwrite, progress=True, sharded=a.sharded)
    except FileExistsError as e:
        print(f"crantseg make-dataset: {e}", file=sys.stderr)
        return 2
    print(f"dataset {params.name!r} (seed {params.seed}, {params.size[0]}x{params.size[1]}x{params.size[2]} voxels) "
          f"written to {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def _usage() -> str:
    lines = [f"  {name:<13} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return ("usage: crantseg [-v] COMMAND [ARGS]   (crantseg COMMAND --help for a command's options)\n\n"
            "commands:\n" + "\n".join(lines) + "\n  help          this list\n\noptions:\n"
            "  --version     print the version and exit\n"
            "  -v            show Dask's INFO logs (off by default)")


def setup_logging(verbose: bool = False) -> None:
    """crantseg's own messages at INFO; Dask's (scheduler, workers, nanny, comms) at WARNING
    unless ``verbose``. Set before ``distributed`` is imported here and, through the environment,
    in every worker process this run starts."""
    import dask.config

    level = "info" if verbose else "warning"
    os.environ["DASK_LOGGING__DISTRIBUTED"] = level
    dask.config.set({"logging.distributed": level})  # dask is imported already: read when distributed is
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    logging.getLogger("crantseg").setLevel(logging.INFO)
    for noisy in ("distributed", "bokeh", "tornado"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = False
    while argv and argv[0] in ("-v", "--verbose"):
        verbose, argv = True, argv[1:]
    if argv and argv[0] in COMMANDS and argv[0] != "serve" and any(a in ("-v", "--verbose") for a in argv[1:]):
        verbose, argv = True, [a for a in argv if a not in ("-v", "--verbose")]
    setup_logging(verbose)
    if argv and argv[0] in ("--version", "version"):
        from importlib.metadata import version

        print(f"crantseg {version('crantseg_dask')}")
        return 0
    if not argv or argv[0] in ("-h", "--help", "help"):
        if len(argv) > 1 and argv[0] == "help" and argv[1] in COMMANDS:
            argv = [argv[1], "--help"]
        else:
            print(_usage())
            return 0
    if argv[0] not in COMMANDS:
        print(_usage(), file=sys.stderr)
        print(f"\ncrantseg: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[argv[0]]
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
