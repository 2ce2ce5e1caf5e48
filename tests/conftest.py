import os

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("TZ", "UTC")

pytest_plugins = ["crantseg_dask.testing.fixtures"]
