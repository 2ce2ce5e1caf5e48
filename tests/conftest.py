import os
import shutil
import tempfile
from pathlib import Path

import pytest

# The session's temporary directory: everything this run (and its subprocesses, notebook kernels,
# Dask workers, Chromium) creates through ``tempfile`` goes under it, and it is removed at the end.
# pytest's own ``tmp_path`` directories stay in the system temp dir (PYTEST_DEBUG_TEMPROOT), with
# pytest's usual retention of the last three runs.
SYSTEM_TMP = Path(tempfile.gettempdir())
os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", str(SYSTEM_TMP))
SYSTEM_BEFORE = {p.name for p in SYSTEM_TMP.glob("crantseg-*")}
SESSION_TMP = Path(tempfile.mkdtemp(prefix="crantseg-test-tmp-"))
os.environ["TMPDIR"] = tempfile.tempdir = str(SESSION_TMP)

# Before anything imports cloud-volume (it creates ~/.cloudvolume at import) or caveclient: keep
# the tests' files, token caches and leaves caches out of the real home directory.
os.environ["HOME"] = str(SESSION_TMP / "home")
os.makedirs(os.environ["HOME"])
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("TZ", "UTC")

pytest_plugins = ["crantseg_dask.testing.fixtures"]

#: Names of temporary entries a test must not leave behind (``tempfile.mkdtemp()`` without a
#: prefix makes ``tmp*``); tests use pytest's ``tmp_path`` instead.
LITTER = ("crantseg-*", "tmp*")


@pytest.hookimpl(trylast=True)  # after the session's fixtures are torn down
def pytest_sessionfinish(session, exitstatus):
    """Fail the run if a test left ``crantseg-*`` / ``tmp*`` entries in the temporary directory
    (the session's: every ``tempfile`` user of this run writes there), then remove it."""
    left = sorted(p.name for pattern in LITTER for p in SESSION_TMP.glob(pattern))
    shutil.rmtree(SESSION_TMP, ignore_errors=True)
    report = session.config.pluginmanager.get_plugin("terminalreporter")
    if left:
        if report is not None:
            report.write_line(f"ERROR: the tests left {len(left)} entries in the temporary directory: {left}",
                              red=True, bold=True)
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    # a path that bypasses TMPDIR (a hard-coded /tmp); other runs on the same machine make
    # entries there too, so this one is reported, not failed
    new = sorted({p.name for p in SYSTEM_TMP.glob("crantseg-*")} - SYSTEM_BEFORE
                 - {p.name for p in SYSTEM_TMP.glob("crantseg-test-tmp-*")})
    if new and report is not None:
        report.write_line(f"warning: new crantseg-* entries in {SYSTEM_TMP} during the run "
                          f"(this run's or another process's): {new}", yellow=True)


def pytest_collection_modifyitems(config, items):
    """Mark ``slow`` the tests a class lists in ``slow_tests`` (by name, or with its parameters):
    the conformance suite's exhaustive checks in classes that re-run it over fault-injected
    storage (the default run keeps a subset there that touches every faulted route)."""
    for item in items:
        names = getattr(item.cls, "slow_tests", ())
        if names and (item.originalname in names or item.name in names):
            item.add_marker(pytest.mark.slow)
