"""Batch jobs: an operation over a table, run as partitions on a Dask cluster, persisted to Zarr."""
from .runner import run_job

__all__ = ["run_job"]
