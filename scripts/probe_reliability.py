"""Rerunnable reliability probe (issue 17): try the issue's case families against this checkout and
print a table of cases tried / held per family.

    python scripts/probe_reliability.py [--workdir DIR]

"Held" means the expected safe outcome: a clear refusal (one line naming the value, file or
partition), a correct answer, or nothing lost. Every case that did not hold is listed with its
outcome. Uses the tiny embedded dataset (generated into the work directory) and a 1-worker TLS
LocalCluster; takes a few minutes on a loaded machine.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import requests

RESULTS: dict[str, list[tuple[str, bool, str]]] = defaultdict(list)


def case(family: str, name: str, fn) -> None:
    try:
        ok, note = fn()
    except Exception as e:  # noqa: BLE001 - a probe records, never stops
        ok, note = False, f"{type(e).__name__}: {str(e)[:120]}"
    RESULTS[family].append((name, bool(ok), note))


def refused(fn, *types, contains: str = "") -> tuple[bool, str]:
    """Held when ``fn`` raises one of ``types`` with a one-line message containing ``contains``."""
    try:
        fn()
    except types as e:
        msg = str(e)
        return (contains in msg and "\n" not in msg.strip()), msg[:100]
    return False, "accepted"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None)
    work = Path(ap.parse_args().workdir or tempfile.mkdtemp(prefix="crantseg-probe-"))
    work.mkdir(parents=True, exist_ok=True)
    from crantseg_dask.dataset.generate import make_dataset
    from crantseg_dask.dataset.layout import PRESETS
    from crantseg_dask.dataset.truth import Truth

    tiny = work / "tiny"
    if not tiny.exists():
        make_dataset(PRESETS["tiny"], tiny)
    truth = Truth(tiny)
    for probe in (probe_ids, probe_time, probe_paths_and_inputs, probe_server, probe_jobs):
        try:  # a family that cannot even start (e.g. an older checkout) is reported, not fatal
            probe(truth, tiny, work)
        except Exception as e:  # noqa: BLE001
            RESULTS[probe.__name__.replace("probe_", "") + " (could not run)"].append(
                ("start", False, f"{type(e).__name__}: {str(e)[:120]}"))
    report()
    return 0 if all(ok for rows in RESULTS.values() for _, ok, _ in rows) else 1


# -- IDs --------------------------------------------------------------------------------------------
def probe_ids(truth, tiny, work) -> None:
    from crantseg_dask import is_latest_roots, supervoxels_to_roots, update_ids
    from crantseg_dask._validate import as_ids
    from crantseg_dask.errors import InvalidIDError
    from crantseg_dask.sources import SourceSpec

    spec = SourceSpec(kind="local", name="tiny", path=str(tiny))
    sv, root = int(truth.supervoxels[0]), int(truth.root_of(truth.supervoxels[:1], truth.materialization())[0])
    floats = {"Series[float]": pd.Series([float(root)]), "list[float]": [float(sv)], "ndarray[f8]": np.array([1.0]),
              "object floats": np.array([1.0, 2], dtype=object), "float + NaN": pd.Series([float(sv), None]),
              "np.float32": [np.float32(5)], "1.5": [1.5], "Series int with None": pd.Series([root, None])}
    for name, x in floats.items():
        case("float IDs refused (no opt-in)", name, lambda x=x: refused(
            lambda: as_ids(x, nan="zero"), InvalidIDError, contains="allow-float-ids"))
    os.environ["CRANTSEG_ALLOW_FLOAT_IDS"] = "1"
    try:
        case("float IDs refused (no opt-in)", "opt-in, 2**53", lambda: refused(
            lambda: as_ids([float(2**53)]), InvalidIDError, contains="2**53"))
        case("float IDs refused (no opt-in)", "opt-in, root as float", lambda: refused(
            lambda: as_ids([float(root)]), InvalidIDError, contains="2**53"))
        case("float IDs refused (no opt-in)", "opt-in, 7.0 accepted", lambda: (as_ids([7.0]).tolist() == [7], ""))
    finally:
        del os.environ["CRANTSEG_ALLOW_FLOAT_IDS"]
    for bad in (2**64 - 1, 1, 0xFF << 56, 2**63, 9 << 56):
        case("impossible layer bits", f"supervoxels_to_roots {bad}", lambda bad=bad: refused(
            lambda: supervoxels_to_roots([bad], dataset=spec, progress=False), InvalidIDError, contains=str(bad)))
        case("impossible layer bits", f"update_ids {bad}", lambda bad=bad: refused(
            lambda: update_ids([bad], dataset=spec, progress=False), InvalidIDError, contains=str(bad)))
    now = datetime.now(timezone.utc)
    cur = truth.root_of(truth.supervoxels, now)
    old = truth.root_of(truth.supervoxels, truth.ingest_ms / 1000 + 1)
    R, OLD = int(cur[0]), int(old[np.flatnonzero(old != cur)[0]])
    for xs in ([R, 0, OLD], [0], [0, 0, R], [OLD, OLD, 0, R], [], [R] * 3):
        def shape(xs=xs):
            out = update_ids(xs, dataset=spec, progress=False)
            return len(out) == len(xs) and out["old_id"].tolist() == list(xs), f"{len(out)} rows"
        case("ID functions keep length/order", f"update_ids {len(xs)} ids", shape)
        def roots(xs=xs):
            got = supervoxels_to_roots(np.array(xs, np.uint64), dataset=spec, progress=False) if xs else []
            return len(got) == len(xs), f"{len(got)} rows"
        case("ID functions keep length/order", f"supervoxels_to_roots {len(xs)} ids", roots)
        case("ID functions keep length/order", f"is_latest_roots {len(xs)} ids", lambda xs=xs: (
            len(is_latest_roots(np.array(xs, np.uint64), dataset=spec, progress=False)) == len(xs), ""))


# -- time -------------------------------------------------------------------------------------------
def probe_time(truth, tiny, work) -> None:
    from crantseg_dask import supervoxels_to_roots
    from crantseg_dask.errors import InvalidTimestampError
    from crantseg_dask.sources import SourceSpec

    spec = SourceSpec(kind="local", name="tiny", path=str(tiny))
    ingest = datetime.fromtimestamp(truth.ingest_ms / 1000, tz=timezone.utc)
    sv = truth.supervoxels[:3]
    for name, t in {"1 day before ingest": ingest - timedelta(days=1), "epoch 0": 0, "year 2000": "2000-01-01",
                    "1 s in the future": datetime.now(timezone.utc) + timedelta(seconds=30),
                    "next year": datetime.now(timezone.utc) + timedelta(days=365), "unix 4e9": 4e9}.items():
        case("time range", name, lambda t=t: refused(
            lambda: supervoxels_to_roots(sv, timestamp=t, dataset=spec, progress=False), InvalidTimestampError,
            contains="valid timestamps are"))
    for name, t in {"ingest + 1 s": ingest + timedelta(seconds=1), "mat": "mat", "now": None}.items():
        def ok(t=t):
            got = supervoxels_to_roots(sv, timestamp=t, dataset=spec, progress=False)
            when = truth.materialization() if t == "mat" else (datetime.now(timezone.utc) if t is None else t)
            return bool((got == truth.root_of(sv, when)).all()), ""
        case("time range", f"valid: {name}", ok)


# -- paths and inputs -------------------------------------------------------------------------------
def probe_paths_and_inputs(truth, tiny, work) -> None:
    from crantseg_dask.errors import CrantsegError
    from crantseg_dask.jobs import run_job

    d = work / "paths"
    d.mkdir(exist_ok=True)
    (d / "keep.txt").write_text("keep")
    (d / "afile").write_text("x")
    table = d / "t.parquet"
    pd.DataFrame({"x": [1.0e4], "y": [1.0e4], "z": [1.0e3]}).to_parquet(table)
    cwd = os.getcwd()
    os.chdir(d)
    try:
        if not (d / "selflink").exists():
            os.symlink(d, d / "selflink")
        # only paths inside this sandbox: an older checkout empties what it is given
        for out in ["", " ", ".", "./", "afile", "afile/sub.zarr", "selflink", "selflink/"]:
            def one(out=out):
                before = sorted(os.listdir(d))
                held, note = refused(lambda: run_job("locs-to-segments", table, out, dataset=str(tiny), force=True,
                                                     progress=False), CrantsegError)
                return held and sorted(os.listdir(d)) == before and (d / "keep.txt").exists(), note
            case("output paths refused, nothing touched", repr(out), one)
    finally:
        os.chdir(cwd)
    bad_inputs = {"garbage.parquet": b"PAR1 not parquet", "empty.csv": b"", "zstd.parquet": b"\x28\xb5\x2f\xfd\x00",
                  "binary.csv": b"\x00\xff\xfe" * 50, "header-only.csv": b"x,y,z\n"}
    for name, content in bad_inputs.items():
        f = d / name
        f.write_bytes(content)
        case("bad input files: one line naming the file", name, lambda f=f: refused(
            lambda: run_job("locs-to-segments", f, d / "o.zarr", dataset=str(tiny), progress=False),
            CrantsegError, contains=str(f)))
    case("bad input files: one line naming the file", "missing file", lambda: refused(
        lambda: run_job("locs-to-segments", d / "nope.parquet", d / "o.zarr", dataset=str(tiny), progress=False),
        CrantsegError, contains="nope.parquet"))


# -- server -----------------------------------------------------------------------------------------
def probe_server(truth, tiny, work) -> None:
    from crantseg_dask.server import ServedDataset, serve_in_thread

    state = ServedDataset(tiny)
    state.limits = {"header_timeout": 2.0, "max_connections": 16}
    srv = serve_in_thread(state)
    h = {"Authorization": f"Bearer {srv.token}"}
    v1 = f"{srv.address}/segmentation/api/v1/table/{srv.table}"
    try:
        bodies = ['{"node_ids": [1.5, 2.5]}', '{"node_ids": [true, false]}', '{"node_ids": [Infinity]}',
                  '{"node_ids": [NaN]}', '{"node_ids": [1e400]}', '{"node_ids": [-1]}', '{"node_ids": [[1]]}',
                  '{"node_ids": ' + "[" * 100000 + "]" * 100000 + "}", '{"node_ids": "123"}', "null", "[]",
                  '{"node_ids": [18446744073709551616]}', '{"node_ids": ["0x10"]}', "\xff\xfe", '{"node_ids": [1,']
        for route in ("roots", "is_latest_roots", "root_timestamps", "leaves_many", "lineage_graph_multiple"):
            for b in bodies:
                case("server: malformed body -> 400", f"{route} {b[:24]!r}", lambda route=route, b=b: (
                    (r := requests.post(f"{v1}/{route}", data=b.encode("utf-8", "surrogateescape"), headers=h,
                                        timeout=30)).status_code == 400, r.status_code))
        root = int(truth.root_of(truth.supervoxels[:1], truth.materialization())[0])
        for bounds in ("0-" + "9" * 30 + "_0-1_0-1", "0-1_0-1", "a-b_c-d_e-f", "0-1_0-1_0-" + "9" * 300):
            case("server: malformed body -> 400", f"bounds {bounds[:20]}", lambda bounds=bounds: (
                (r := requests.get(f"{v1}/node/{root}/leaves?bounds={bounds}", headers=h, timeout=30)).status_code
                == 400, r.status_code))
        for node in (2**64 - 1, 1, 0xFF << 56, 9 << 56):
            for what in ("root", "leaves", "children", "lvl2_graph"):
                case("server: impossible IDs -> 404", f"{what} {node}", lambda node=node, what=what: (
                    (r := requests.get(f"{v1}/node/{node}/{what}", headers=h, timeout=30)).status_code in (400, 404),
                    r.status_code))
        z = zlib.compressobj(9, zlib.DEFLATED, 31)
        bomb = b"".join(z.compress(bytes(2**20)) for _ in range(300)) + z.flush()

        def gzip_bomb():
            try:
                r = requests.post(f"{v1}/roots_binary", data=bomb, headers={**h, "Content-Encoding": "gzip"}, timeout=60)
                held = r.status_code != 200
            except requests.RequestException:
                held = True
            return held and requests.get(f"{srv.address}/info/version", headers=h, timeout=10).ok, len(bomb)
        case("server: limits", "gzip bomb 300 MiB", gzip_bomb)
        case("server: limits", "small gzip body works", lambda: (requests.post(
            f"{v1}/roots_binary", data=gzip.compress(bytes(8)), headers={**h, "Content-Encoding": "gzip"},
            timeout=30).content == bytes(8), ""))
        host, port = srv.address.split("//")[1].rsplit(":", 1)

        def conns(n):
            out = []
            for _ in range(n):
                s = socket.create_connection((host, int(port)), timeout=30)
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
                out.append(s)
            return out

        def half_open(n):
            socks = conns(n)
            try:
                t0 = time.monotonic()
                ok = requests.get(f"{srv.address}/info/version", headers=h, timeout=10).ok
                return ok and time.monotonic() - t0 < 1.0, f"{time.monotonic() - t0:.2f} s"
            finally:
                for s in socks:
                    s.close()
        for n in (10, 50, 300):
            case("server: limits", f"{n} half-open connections, normal request < 1 s", lambda n=n: half_open(n))

        def header_timeout():
            (s,) = conns(1)
            s.settimeout(15)
            try:
                return s.recv(10) == b"" or True, ""
            except OSError as e:
                return isinstance(e, ConnectionResetError), type(e).__name__
            finally:
                s.close()
        case("server: limits", "header timeout closes a stalled connection", header_timeout)

        def oversized():
            s = socket.create_connection((host, int(port)), timeout=30)
            s.sendall(f"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: {10**10}\r\n\r\n".encode())
            t0 = time.monotonic()
            ok = requests.get(f"{srv.address}/info/version", headers=h, timeout=10).ok
            s.close()
            return ok and time.monotonic() - t0 < 1.0, f"{time.monotonic() - t0:.2f} s"
        case("server: limits", "10 GB Content-Length, normal request < 1 s", oversized)
    finally:
        srv.stop()


# -- jobs: lock, damage, TLS ------------------------------------------------------------------------
def probe_jobs(truth, tiny, work) -> None:
    from distributed import Client
    from distributed.security import Security

    from crantseg_dask.cluster import make_client
    from crantseg_dask.errors import CrantsegError, JobStoreError
    from crantseg_dask.jobs import run_job
    from crantseg_dask.jobs.lock import lock_path
    from crantseg_dask.persist import read_output, verify

    rng = np.random.default_rng(1)
    vox = truth.sv_anchor[rng.integers(0, len(truth.sv_anchor), 600)]
    table = work / "jobs.parquet"
    pd.DataFrame((vox + 0.5) * truth.resolution(0), columns=["x", "y", "z"]).to_parquet(table)
    want = truth.root_of(truth.supervoxel_at(vox), truth.materialization())
    kw = dict(dataset=str(tiny), timestamp="mat", partition_size=100, progress=False)
    with make_client(n_workers=1) as c:
        for name, kw_ in {"tcp": dict(address=c.scheduler.address.replace("tls", "tcp")),
                          "tls no cert": dict(address=c.scheduler.address),
                          "tls other CA": dict(address=c.scheduler.address, security=Security.temporary())}.items():
            def intrude(kw_=kw_):
                try:
                    with Client(**kw_, timeout=5) as x:
                        x.run(os.getpid)
                    return False, "ran code"
                except Exception as e:  # noqa: BLE001
                    return True, type(e).__name__
            case("cluster: outsiders refused", name, intrude)
        base = work / "base.zarr"
        run_job("locs-to-segments", table, base, client=c, force=True, **kw)
        import shutil

        def damaged(array, how, part=2):
            out = work / f"d-{array}-{how}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(base, out)
            f = out / array / "c" / str(part)
            if how == "delete":
                f.unlink()
            elif how == "flip":
                b = bytearray(f.read_bytes())
                b[len(b) // 2] ^= 0xFF
                f.write_bytes(bytes(b))
            elif how == "truncate":
                f.write_bytes(f.read_bytes()[:3])
            elif how == "zero":
                f.write_bytes(bytes(len(f.read_bytes())))
            found = verify(out)
            held = part in found["inputs"] or part in found["outputs"] or array == "_done"
            if array != "_done":
                try:
                    read_output(out)
                    held = False
                except JobStoreError as e:
                    held = held and f"partition {part}" in str(e)
            run_job("locs-to-segments", table, out, client=c, resume=True, **kw)
            got = read_output(out)["root_id"].to_numpy()
            return held and bool((got == want).all()), ""
        for array in ("root_id", "supervoxel_id", "x", "row", "_done"):
            for how in ("delete", "flip", "truncate", "zero"):
                case("store damage: found, named, repaired", f"{array} {how}", lambda a=array, h=how: damaged(a, h))

        def meta():
            out = work / "meta.zarr"
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(base, out)
            (out / "zarr.json").write_text("{")
            return refused(lambda: read_output(out), CrantsegError, contains="zarr.json")
        case("store damage: found, named, repaired", "group zarr.json", meta)
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            for force in (False, True):
                out = work / "locked.zarr"
                Path(lock_path(str(out))).write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid,
                                                                 "what": "other job"}))
                case("concurrent writers refused", f"live holder, force={force}", lambda out=out, force=force: refused(
                    lambda: run_job("locs-to-segments", table, out, client=c, force=force, **kw), JobStoreError,
                    contains=f"pid {holder.pid}"))
            Path(lock_path(str(out))).write_text(json.dumps({"host": "elsewhere", "pid": 1, "what": "x"}))
            case("concurrent writers refused", "other host", lambda: refused(
                lambda: run_job("locs-to-segments", table, out, client=c, force=True, **kw), JobStoreError,
                contains="elsewhere"))
        finally:
            holder.kill()
            holder.wait()
        Path(lock_path(str(out))).write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "what": "x"}))

        def stale():
            run_job("locs-to-segments", table, out, client=c, force=True, **kw)
            return bool((read_output(out)["root_id"].to_numpy() == want).all()), ""
        case("concurrent writers refused", "stale lock (dead pid) taken over", stale)


def report() -> None:
    print(f"\n{'family':<44} {'tried':>5} {'held':>5}")
    total = held = 0
    for fam, rows in RESULTS.items():
        n, k = len(rows), sum(ok for _, ok, _ in rows)
        total, held = total + n, held + k
        print(f"{fam:<44} {n:>5} {k:>5}")
    print(f"{'total':<44} {total:>5} {held:>5}")
    failed = [(f, n, note) for f, rows in RESULTS.items() for n, ok, note in rows if not ok]
    for f, n, note in failed:
        print(f"  NOT HELD  {f}: {n}: {note}")


if __name__ == "__main__":
    sys.exit(main())
