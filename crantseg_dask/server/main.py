"""``crantseg serve``: serve an embedded dataset over the CAVE protocol on 127.0.0.1.

    crantseg serve --dataset DIR [--port N] [--host H] [--datastack NAME] [--token-file FILE] [-v]
                   [--fail-rate P] [--latency-ms MS]
                   [--storage-latency-ms MS] [--stall-rate P] [--stall-seconds S] [--seed N]
                   [--file-storage]

The precomputed layer is served too (``/storage/segmentation``, the graphene info's ``data_dir``),
with Range reads and the same token and fault mode; ``--file-storage`` hands out ``file://`` instead.

Prints the address, datastack and token, then serves until interrupted. Point the package at it
with ``cave_dataset(address, datastack, token=token)``, or caveclient with
``CAVEclient(datastack, server_address=address, auth_token=token)``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crantseg serve",
                                description="Serve an embedded dataset over the CAVE protocol (127.0.0.1 by default).")
    p.add_argument("--dataset", required=True, help="dataset directory written by `crantseg make-dataset`, "
                                                    "or a preset name (tiny, demo)")
    p.add_argument("--port", type=int, default=0, help="port (0: pick a free one; default 0)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--datastack", default=None, help="datastack name (default: the dataset's)")
    p.add_argument("--token-file", default=None,
                   help="read the token clients must send (32 hex chars) from this file; default: the "
                   "CRANTSEG_SERVER_TOKEN environment variable, else a new random token")
    p.add_argument("--token", default=None,
                   help="the token on the command line (visible to other users in `ps`: prefer --token-file)")
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of requests answered 503 or 429")
    p.add_argument("--latency-ms", "--latency", dest="latency_ms", type=float, default=0.0,
                   help="delay added to every request, ms")
    p.add_argument("--storage-latency-ms", type=float, default=None,
                   help="delay added to the precomputed layer's reads (/storage/) instead, ms "
                        "(default: --latency-ms)")
    p.add_argument("--stall-rate", type=float, default=0.0, help="share of requests held --stall-seconds")
    p.add_argument("--stall-seconds", type=float, default=60.0, help="how long a stalled request is held")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault RNG")
    p.add_argument("--pcg-errors", action="store_true",
                   help="answer unknown IDs as PyChunkedGraph does (500 with its error body), not 404")
    p.add_argument("--file-storage", action="store_true",
                   help="hand out the layer's file:// path as data_dir instead of serving it over HTTP")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request (never the token)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from ..dataset.layout import PRESETS, is_dataset_dir
    from ..errors import CrantsegError
    from .app import address_of, bind, serve_forever
    from .state import Faults, ServedDataset

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", force=True)
    # -v: one access-log line per request (status, method, path, ms; never the query or the token)
    logging.getLogger("crantseg.server").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    dataset = args.dataset
    token = args.token
    try:
        if args.token_file:
            try:
                with open(args.token_file) as f:
                    token = f.read().strip()
            except OSError as e:
                raise OSError(f"--token-file {args.token_file}: {e.strerror or e}") from None
        elif token is None and os.environ.get("CRANTSEG_SERVER_TOKEN"):
            token = os.environ["CRANTSEG_SERVER_TOKEN"].strip()
        elif token is not None:
            print("crantseg serve: warning: --token is visible to other users of this machine (ps); "
                  "use --token-file or CRANTSEG_SERVER_TOKEN", file=sys.stderr)
        if not is_dataset_dir(dataset) and dataset in PRESETS:
            from ..sources.resolve import local_dataset_path

            dataset = local_dataset_path(dataset)
        elif not is_dataset_dir(dataset) and not os.path.exists(dataset):
            from ..errors import DatasetError

            raise DatasetError(f"--dataset {dataset!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor an "
                               "existing directory (one written by `crantseg make-dataset`)")
        faults = Faults(fail_rate=args.fail_rate, latency_ms=args.latency_ms,
                        storage_latency_ms=args.storage_latency_ms, stall_rate=args.stall_rate,
                        stall_s=args.stall_seconds, seed=args.seed)
        state = ServedDataset(dataset, datastack=args.datastack, token=token, faults=faults,
                              pcg_errors=args.pcg_errors, storage="file" if args.file_storage else "http")
        sockets = bind(args.host, args.port)
    except (CrantsegError, OSError) as e:
        print(f"crantseg serve: {e}", file=sys.stderr)
        return 2
    address = address_of(sockets)
    print(f"crantseg serve: dataset {state.path}")
    print(f"  address:   {address}")
    print(f"  datastack: {state.datastack}")
    print(f"  token:     {state.token}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"  warning:   bound to {args.host}: other machines can reach this server (with the token)")
    if faults.active:
        print(f"  faults:    fail_rate={faults.fail_rate} latency_ms={faults.latency_ms} "
              f"storage_latency_ms={faults.storage_latency_ms} "
              f"stall_rate={faults.stall_rate} stall_seconds={faults.stall_s} seed={faults.seed}")
    print(f'  use it:    cave_dataset("{address}", "{state.datastack}", token="{state.token}")')
    print("Press Ctrl+C to stop.", flush=True)
    try:
        serve_forever(state, sockets)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
