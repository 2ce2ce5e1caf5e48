"""One writer per job output: a lock file beside the output, held for the whole run.

``OUT.zarr`` is locked by ``OUT.zarr.lock`` (a sibling, so creating or replacing the group never
touches it), created atomically (``O_CREAT | O_EXCL``) and holding the owner's host, pid, the
pid's start time and what it runs. A second writer (``--force`` included) is refused with a
message naming the running job. A lock whose owner is gone (same host, pid not running or reused
by another process) is stale and taken over; a lock from another host is never taken over: the
message says which file to delete once that job is known to be dead.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid

from ..errors import InvalidInputError, JobStoreError

__all__ = ["output_lock", "lock_path", "check_output_path"]


def check_output_path(output) -> str:
    """``output`` as a string, refusing empty paths, files and other non-directories at once
    (before anything is created: an empty path would otherwise mean the current directory)."""
    text = "" if output is None else str(output)
    if not text.strip():
        raise InvalidInputError(f"--output {text!r} is empty: give the path of a Zarr group to write, "
                                "e.g. --output out.zarr")
    if text.strip() != text:
        raise InvalidInputError(f"--output {text!r} starts or ends with spaces; give the path without them")
    real = os.path.realpath(text)
    if real in (os.path.realpath(os.getcwd()), os.path.realpath(os.path.expanduser("~")), os.path.sep):
        raise InvalidInputError(f"--output {text!r} is the current, home or root directory; give the path of "
                                "a Zarr group to write, e.g. --output out.zarr")
    if os.path.lexists(text) and not os.path.isdir(text):
        raise InvalidInputError(f"--output {text!r} exists and is not a directory; a job's output is a Zarr "
                                "group (a directory): choose another path")
    parent = os.path.dirname(os.path.abspath(text))
    probe = parent
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if probe and not os.path.isdir(probe):
        raise InvalidInputError(f"--output {text!r}: {probe} is not a directory")
    return text


def lock_path(output: str) -> str:
    return os.path.abspath(output).rstrip(os.sep) + ".lock"


def _start_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - no such process, or no psutil
        return None


def _alive(owner: dict) -> bool:
    """Whether the lock's owner (on this host) still runs."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    started = _start_time(pid)
    return started is None or owner.get("pid_start") is None or abs(started - owner["pid_start"]) < 1.0


def _describe(owner: dict, path: str) -> str:
    return (f"job {owner.get('what', '?')!r} (pid {owner.get('pid')} on {owner.get('host')}, started "
            f"{owner.get('started', '?')}) holds {path}")


@contextlib.contextmanager
def output_lock(output: str, what: str):
    """Hold ``OUT.lock`` for the block; refuse (``JobStoreError``) while another live job holds it."""
    path = lock_path(output)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _start_time(os.getpid()),
          "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "what": what, "id": uuid.uuid4().hex}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    owner = json.load(f)
            except (OSError, ValueError):
                owner = {}
            if not owner and time.time() - _mtime(path) < 5:
                time.sleep(0.2)  # being written right now
                continue
            if owner.get("host") not in (None, me["host"]):
                raise JobStoreError(f"{output} is locked: {_describe(owner, path)}; if that job is no longer "
                                    f"running, delete {path}") from None
            if owner and _alive(owner):
                raise JobStoreError(f"{output} is in use: {_describe(owner, path)}; wait for it to finish or "
                                    "stop it first (a second writer would mix two jobs' results)") from None
            stale = f"{path}.stale-{me['id']}"
            try:
                os.rename(path, stale)  # atomic: of two processes taking over, one wins
                os.unlink(stale)
            except FileNotFoundError:
                pass
            continue
        except OSError as e:
            raise JobStoreError(f"{path}: cannot create the job's lock file: {e.strerror or e}") from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise JobStoreError(f"{path}: cannot write the job's lock file: {e.strerror or e}") from None
        break
    else:
        raise JobStoreError(f"{output}: could not take the lock {path}; another job is starting on it")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                if json.load(f).get("id") == me["id"]:
                    os.unlink(path)


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0
