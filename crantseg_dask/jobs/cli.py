"""``crantseg run`` and ``crantseg status``."""
from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys

from ..errors import CrantsegError
from ..persist import status, verify
from .operations import OPERATIONS, Param
from .runner import run_job

__all__ = ["run_main", "status_main", "add_cluster_arguments", "add_operation_arguments", "operation_arguments"]


def _integer(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is not allowed: expected an integer >= {low}")
        return value
    return parse


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: expected a number > 0")
    return value


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scheduler", help="tcp://HOST:PORT of a running scheduler, or a scheduler file (.json); "
                   "refused within --connect-timeout seconds when it does not answer")
    g.add_argument("--cluster", help="a cluster spec YAML (see cluster/)")
    p.add_argument("--workers", type=_integer(1), default=2, help="workers of the default LocalCluster (default 2)")
    p.add_argument("--connect-timeout", type=_positive, help="seconds to wait for --scheduler (default 10)")
    p.add_argument("--performance-report", help="write a Dask performance report (HTML) here")


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    """``--dataset`` or a CAVE deployment: ``--server`` + ``--datastack`` (+ ``--token-file``)."""
    p.add_argument("--dataset", help="latest | sandbox | local | tiny | demo | a dataset directory")
    p.add_argument("--server", help="any CAVE deployment's global server, e.g. https://global.daf-apis.com "
                   "(with --datastack; the token comes from caveclient's usual secret file, or --token-file)")
    p.add_argument("--datastack", help="the datastack on --server")
    p.add_argument("--token-file", help="a file holding the CAVE token (never pass a token itself on the "
                   "command line); default: caveclient's secret in ~/.cloudvolume/secrets")


def dataset_argument(p: argparse.ArgumentParser, a: argparse.Namespace):
    """The ``dataset=`` for ``run_job``: a name or path, or ``cave_dataset(server, datastack)``."""
    if a.server is None and a.datastack is None:
        if a.token_file:
            p.error("--token-file needs --server and --datastack")
        return a.dataset
    if a.dataset is not None:
        p.error("give either --dataset or --server with --datastack, not both")
    if not a.server or not a.datastack:
        p.error("--server and --datastack go together: give both")
    if not re.match(r"https?://[^/\s]+", a.server):
        p.error(f"--server {a.server!r}: expected http(s)://HOST[:PORT]")
    from ..sources.resolve import cave_dataset

    options = {}
    if a.token_file:
        try:
            token = open(a.token_file).read().strip()
        except OSError as e:
            p.error(f"--token-file {a.token_file}: {e.strerror or e}")
        if token.startswith("{"):  # a caveclient secret file: {"token": ...}
            token = json.loads(token).get("token", "")
        if not token:
            p.error(f"--token-file {a.token_file} holds no token")
        options["token"] = token
    return cave_dataset(a.server, a.datastack, **options)


def resume_command(argv: list[str]) -> str:
    """The exact command that finishes the job ``argv`` started."""
    args = [x for x in argv if x != "--force"]
    return "crantseg run " + shlex.join(args + ([] if "--resume" in args else ["--resume"]))


def add_operation_arguments(p: argparse.ArgumentParser) -> dict[str, tuple[Param, list[str]]]:
    """One option per parameter name declared by the operations (``OPERATIONS``), its type and
    help text from the declaration. Returns name -> (the declaration, the operations taking it)."""
    options: dict[str, tuple[Param, list[str]]] = {}
    for op in OPERATIONS.values():
        for prm in op.params:
            first = options.setdefault(prm.name, (prm, []))
            if (first[0].type, first[0].choices) != (prm.type, prm.choices):
                raise TypeError(f"parameter {prm.name!r} of {op.name} is declared with another type than "
                                f"for {first[1][0]}")
            first[1].append(op.name)
    g = p.add_argument_group("operation options (each applies only to the operations it names)")
    for name, (prm, ops) in options.items():
        decl = [q for op in ops for q in OPERATIONS[op].params if q.name == name]
        if len({(q.help, repr(q.default)) for q in decl}) == 1:
            text = f"{', '.join(ops)}: {_described(prm)}"
        else:
            text = "; ".join(f"{op}: {_described(q)}" for op, q in zip(ops, decl))
        if prm.type is bool:
            g.add_argument(prm.option, action="store_true", default=None, help=text)
        else:
            g.add_argument(prm.option, type=prm.type, default=None, choices=prm.choices or None,
                           metavar=name.upper(), help=text)
    return options


def _described(prm: Param) -> str:
    """A parameter's help and its default (None and False go without: the help says what unset means)."""
    return prm.help if prm.default is None or prm.default is False else f"{prm.help} (default {prm.default})"


def _operations_help() -> str:
    """What each operation reads and writes, from its declaration."""
    lines = ["operations:"]
    for name in sorted(OPERATIONS):
        op = OPERATIONS[name]
        writes = list(op.outputs) + [f"{r} (ragged)" for r in op.ragged]
        lines.append(f"  {name}: reads {op.reads}; writes {', '.join(writes)}"
                     f"{'; at --timestamp' if op.uses_timestamp else ''}")
    return "\n".join(lines)


def operation_arguments(a: argparse.Namespace, op_name: str, options: dict) -> dict:
    """The operation options given on the command line, as ``run_job`` keywords. ``ValueError``
    naming the option when it does not apply to ``op_name`` (never silently ignored)."""
    extra = {}
    for name, (prm, ops) in options.items():
        value = getattr(a, name)
        if value is None:
            continue
        if op_name not in ops:
            raise ValueError(f"{prm.option} does not apply to {op_name} (only to {', '.join(ops)})")
        extra[name] = value
    return extra


def run_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="crantseg run", description="Run an operation over a table as a resumable job.",
                                epilog=_operations_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("operation", choices=sorted(OPERATIONS))
    p.add_argument("--input", required=True, help="parquet, CSV or Zarr table")
    p.add_argument("--output", required=True, help="Zarr group to write (OUT.zarr)")
    add_dataset_arguments(p)
    p.add_argument("--timestamp", help='None (now), "mat", "mat_<N>", ISO 8601 or unix seconds (e.g. 1751005783)')
    p.add_argument("--resume", action="store_true", help="finish an interrupted job (only unfinished partitions run)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing output; with --resume, start again from scratch (discarding finished "
                   "partitions) when the job changed")
    p.add_argument("--partition-size", type=_integer(1), help="rows per task (default: crantseg.partition-size)")
    p.add_argument("--allow-float-ids", action="store_true",
                   help="accept ID columns stored as floats when every value is a whole number below 2**53 "
                   "(larger floats cannot hold a uint64 ID exactly and are always refused)")
    p.add_argument("--no-progress", action="store_true")
    add_cluster_arguments(p)
    options = add_operation_arguments(p)
    a = p.parse_args(argv)
    timestamp = a.timestamp
    if timestamp is not None and re.fullmatch(r"[+-]?[0-9]+(\.[0-9]*)?", timestamp.strip()):
        timestamp = float(timestamp)  # unix seconds, as --help says
    op = OPERATIONS[a.operation]
    try:
        extra = operation_arguments(a, a.operation, options)
    except ValueError as e:
        p.error(str(e))
    if a.timestamp is not None and not op.uses_timestamp:
        p.error(f"--timestamp does not apply to {a.operation}: it reads no root IDs at a time")
    dataset = dataset_argument(p, a)
    try:
        import dask.config

        settings = {"crantseg.allow-float-ids": bool(a.allow_float_ids)}
        if a.connect_timeout is not None:
            settings["crantseg.connect-timeout"] = a.connect_timeout
        with dask.config.set(settings):
            summary = run_job(a.operation, a.input, a.output, dataset=dataset, timestamp=timestamp,
                              scheduler=a.scheduler, cluster=a.cluster, resume=a.resume, force=a.force,
                              partition_size=a.partition_size, progress=not a.no_progress,
                              performance_report=a.performance_report, n_workers=a.workers, **extra)
    except KeyboardInterrupt:
        print(f"crantseg run: interrupted; {_progress(a.output)}: {resume_command(argv)}", file=sys.stderr,
              flush=True)
        return 130
    except CrantsegError as e:
        text = _one_line(e)
        if "nan='zero'" in text:  # the Python API's advice, in this command's terms
            text = (text.replace("pass nan='zero'", "add --nan zero") if "nan" in op.defaults
                    else text.replace(", or pass nan='zero' to map missing IDs to 0", " (every row needs an ID)"))
        print(f"crantseg run: {text}", file=sys.stderr)
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


def _progress(output: str) -> str:
    """"3 of 10 partitions done" for the job at ``output`` (or that nothing was written)."""
    try:
        s = status(output)
    except Exception:  # noqa: BLE001 - no job there yet
        return "no partition was written; run it again with"
    return f"{s['partitions_done']} of {s['partitions']} partitions done; finish the job with"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().replace("\n", " ")
    return text if isinstance(e, CrantsegError) else f"{type(e).__name__}: {text}"
