"""Errors raised by crantseg_dask.

The tree (every leaf also subclasses the builtin callers already catch)::

    CrantsegError
    ├── InvalidInputError(ValueError)          bad argument: names the parameter, value, row and fix
    │   ├── InvalidLocationError               NaN/inf coordinates, wrong shape, missing x/y/z
    │   ├── InvalidIDError                     negative, non-integer or wrong-layer IDs
    │   ├── InvalidTimestampError              unknown timestamp strings, unknown mat versions
    │   ├── InvalidNeuronError(AssertionError) not a node table or navis neuron (crantpy asserts)
    │   └── OutOfBoundsError                   boxes or bounds outside the volume
    ├── UnknownIDError(KeyError)               an ID the dataset has never known
    ├── DatasetError(ValueError)               unknown dataset name or a directory that is no dataset
    ├── SourceError(OSError)                   a read or request failed after its retries
    │   └── AuthError                          the server refused the token
    ├── JobStoreError(OSError)                 a job's store cannot be read or written, is damaged
    │                                          or is locked by another running job
    └── ClusterError(OSError)                  a Dask scheduler that cannot be reached in time

Errors carry no side effects: they only describe.
"""
from __future__ import annotations

__all__ = [
    "CrantsegError",
    "DatasetError",
    "InvalidIDError",
    "InvalidInputError",
    "InvalidLocationError",
    "InvalidNeuronError",
    "InvalidTimestampError",
    "OutOfBoundsError",
    "SourceError",
    "AuthError",
    "JobStoreError",
    "ClusterError",
    "UnknownIDError",
]


class CrantsegError(Exception):
    """Base class of every error crantseg_dask raises on purpose."""


class InvalidInputError(CrantsegError, ValueError):
    """An argument that cannot be used; the message names it and says how to fix it."""


class InvalidLocationError(InvalidInputError):
    """Locations that are not finite, not (N, 3), or lack x/y/z columns."""


class InvalidIDError(InvalidInputError):
    """IDs that are negative, not integers, or not of the expected layer."""


class InvalidTimestampError(InvalidInputError):
    """A timestamp that cannot be resolved (unknown string, unknown version)."""


class InvalidNeuronError(InvalidInputError, AssertionError):
    """``x`` is not a node table or navis neuron (an AssertionError too, as crantpy raises)."""


class OutOfBoundsError(InvalidInputError):
    """A box or bounds outside the volume's coverage."""


class UnknownIDError(CrantsegError, KeyError):
    """An ID the dataset does not know."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the sentence
        return str(self.args[0]) if self.args else ""


class DatasetError(CrantsegError, ValueError):
    """An unknown dataset name, or a directory that holds no crantseg dataset."""


class SourceError(CrantsegError, OSError):
    """A read or a request that failed after its retries. Never silently turned into ID 0."""


class AuthError(SourceError):
    """The server refused our credentials (HTTP 401/403)."""


class JobStoreError(CrantsegError, OSError):
    """A job's Zarr store that cannot be written or read (permissions, a full disk, damaged or
    missing chunks, another job holding its lock). The message names the file and partition."""


class ClusterError(CrantsegError, OSError):
    """A Dask scheduler or cluster cannot be reached or started."""
