"""Locations outside the volume: which, and a warning that says so (never a silent 0).

``inside_volume`` flags the rows inside the volume's box at a mip; ``warn_outside`` warns
(``OutsideVolumeWarning``) with the count and the volume's extent in nm, and suggests the other
unit (nm / viewer voxels) when most of the outside points would be inside under it.
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["OutsideVolumeWarning", "inside_volume", "outside_message", "warn_outside"]


class OutsideVolumeWarning(UserWarning):
    """Some locations lie outside the volume; they give ID 0 (not background)."""


def inside_volume(locs_nm: np.ndarray, meta, mip: int = 0) -> np.ndarray:
    """Bool (N,): whether each nm location's voxel at ``mip`` lies in the volume."""
    lo, hi = meta.bounds(mip)
    vox = np.floor(np.asarray(locs_nm, dtype=np.float64).reshape(-1, 3) / np.asarray(meta.resolution[mip]))
    return np.all((vox >= lo) & (vox < hi), axis=1)


def _extent(meta, mip: int) -> str:
    lo, hi = meta.bounds_nm(mip)
    return ", ".join(f"{a} {lo[k]:g}..{hi[k]:g}" for k, a in enumerate("xyz")) + " nm"


def outside_message(locs_nm: np.ndarray, meta, mip: int = 0, coordinates: str = "nm", *,
                    what: str = "locations", inside: np.ndarray | None = None) -> str | None:
    """The warning text for the rows of ``locs_nm`` outside the volume (None when all are inside).
    ``inside``: ``inside_volume(locs_nm, meta, mip)`` when the caller has it already."""
    locs_nm = np.asarray(locs_nm, dtype=np.float64).reshape(-1, 3)
    if inside is None:
        inside = inside_volume(locs_nm, meta, mip)
    n_out = len(inside) - int(np.count_nonzero(inside))
    if not n_out:
        return None
    unit = "voxel" if str(coordinates).lower().startswith("vox") else "nm"
    viewer = np.asarray(meta.viewer_resolution, dtype=np.float64)
    out = locs_nm[~inside]
    other = out * viewer if unit == "nm" else out / viewer  # the same numbers in the other unit
    hint = ""
    if inside_volume(other, meta, mip).mean() > 0.5:
        name = f"voxel ({viewer[0]:g} x {viewer[1]:g} x {viewer[2]:g} nm)" if unit == "nm" else "nm"
        to = "voxel" if unit == "nm" else "nm"
        hint = f"; most of them would be inside as {name} coordinates: pass coordinates='{to}' (--coordinates {to})"
    first = int(np.argmax(~inside))
    return (f"{n_out} of {len(locs_nm)} {what} lie outside the volume (x, y, z in nm: first {what[:-1]} "
            f"{first} at {tuple(round(float(v), 3) for v in locs_nm[first])}); the volume spans "
            f"{_extent(meta, mip)}; they give ID 0, which is not background{hint}")


def warn_outside(locs_nm: np.ndarray, meta, mip: int = 0, coordinates: str = "nm") -> None:
    """Warn (``OutsideVolumeWarning``) when any location lies outside the volume."""
    msg = outside_message(locs_nm, meta, mip, coordinates)
    if msg:
        warnings.warn(msg, OutsideVolumeWarning, stacklevel=3)
