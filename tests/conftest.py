import os
import tempfile

# Before anything imports cloud-volume (it creates ~/.cloudvolume at import) or caveclient: keep
# the tests' files, token caches and leaves caches out of the real home directory.
os.environ["HOME"] = tempfile.mkdtemp(prefix="crantseg-test-home-")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("TZ", "UTC")

pytest_plugins = ["crantseg_dask.testing.fixtures"]
