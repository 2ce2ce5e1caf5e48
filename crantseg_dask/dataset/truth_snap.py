"""Brute-force snapping oracle: what ``snap_to_id`` / ``snap_table`` / the ``snap`` job must return.

Written from the documented contract (``crantseg_dask.ops.snapping.snap_to_id`` and
``snap_table``), not from the engine: for every row it scans EVERY mip-0 voxel whose centre can
lie in the search ball (every target voxel of the volume is measured), in true anisotropic nm,
and keeps the nearest, the first in x, y, z order among ties. It reads the volume
and a target's supervoxels only through ``Truth`` (the stored arrays through cloud-volume and the
recorded edit log); it never calls the snap kernel, the sources, the ID decoders beyond the ID bit
layout (``Truth.layout``), or any engine helper.

The contract, per row at location ``p`` (nm) with target ``t``:

* the row's voxel is ``floor(p / resolution)`` at mip 0; outside the volume its supervoxel is 0;
* the target's supervoxels are ``{t}`` for a supervoxel (layer 1), else the leaves of ``t``
  (every root that ever existed; leaves never change, so no timestamp is involved);
* ``on_target``: the row's supervoxel is non-zero and one of the target's; kept, distance 0;
* ``background_skipped`` / ``out_of_bounds``: the row's supervoxel is 0 and ``snap_zero`` is
  False (inside / outside the volume); kept, distance NaN;
* otherwise search: a candidate is a target voxel (inside the volume) whose centre
  ``(v + 0.5) * resolution`` is within ``search_radius`` nm (``d^2 <= r^2``); with ``erode`` only
  a target voxel whose 6 face neighbours are all target voxels (outside the volume is
  background). The nearest candidate centre wins; among equally near ones the first in x, then y,
  then z order. The row becomes that voxel's minimum corner ``v * resolution`` (status
  ``snapped``, distance to the centre); with no candidate it is kept (``not_found`` inside the
  volume, ``out_of_bounds`` outside), distance NaN.
"""
from __future__ import annotations

import numpy as np

from .truth import Truth

__all__ = ["SnapTruth"]

_FACES = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))


class SnapTruth:
    """Snapping answers for the dataset of ``truth`` (a ``Truth``), row by row."""

    def __init__(self, truth: Truth):
        self.truth = truth
        self.res = truth.resolution(0)
        off, size = truth.bounds(0)
        self.lo, self.hi = np.asarray(off, np.int64), np.asarray(off, np.int64) + np.asarray(size, np.int64)
        self._members: dict[int, frozenset] = {}
        self._candidates: dict[tuple[int, bool], np.ndarray] = {}

    def members(self, target: int) -> frozenset:
        """Supervoxels of ``target``: itself for a layer-1 ID, else its leaves from the edit log."""
        t = int(target)
        if t not in self._members:
            layer = int(self.truth.layout.layer(np.array([t], np.uint64))[0])
            self._members[t] = frozenset([t] if layer == 1 else self.truth.leaves(t).tolist())
        return self._members[t]

    def _label(self, v) -> int:
        """Supervoxel at absolute mip-0 voxel ``v`` (0 outside the volume)."""
        v = np.asarray(v, np.int64)
        if np.any(v < self.lo) or np.any(v >= self.hi):
            return 0
        return int(self.truth.volume(0)[tuple(v - self.lo)])

    def row(self, p, target: int, snap_zero: bool = False, search_radius: float = 160.0,
            erode: bool = True) -> tuple[np.ndarray, float, str]:
        """(xyz nm, distance nm, status) of one row at ``p`` (nm) with ``target``."""
        p = np.asarray(p, np.float64)
        res, members = self.res, self.members(target)
        v = np.floor(p / res).astype(np.int64)
        inside = bool(np.all(v >= self.lo) and np.all(v < self.hi))
        sv = self._label(v) if inside else 0
        if sv != 0 and sv in members:
            return p.copy(), 0.0, "on_target"
        if sv == 0 and not snap_zero:
            return p.copy(), float("nan"), "background_skipped" if inside else "out_of_bounds"
        r = float(search_radius)
        # every (eroded) target voxel of the whole volume, lexicographic order; those with their
        # centre in the ball compete; the nearest wins, the first in x, y, z order among ties
        cand = self.candidates(target, erode)
        d = (cand + 0.5) * res - p
        d2 = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2]
        ok = d2 <= r * r
        if not ok.any():
            return p.copy(), float("nan"), "not_found" if inside else "out_of_bounds"
        best_d2 = d2[ok].min()
        best = cand[np.flatnonzero(ok & (d2 == best_d2))[0]]
        return best.astype(np.float64) * res, float(np.sqrt(best_d2)), "snapped"

    def candidates(self, target: int, erode: bool = True) -> np.ndarray:
        """Absolute mip-0 voxels (M, 3), lexicographically sorted, of ``target`` in the whole volume;
        with ``erode`` only those whose 6 face neighbours are target voxels too (outside the volume
        is background)."""
        key = (int(target), bool(erode))
        if key not in self._candidates:
            members = self.members(target)
            # Truth.mask_of: np.isin(volume, members) through a per-label lookup table
            mask = np.pad(self.truth.mask_of(np.fromiter(members, np.uint64, len(members)) if members else [], 0)
                          & (self.truth.volume(0) != 0), 1)
            core = mask[1:-1, 1:-1, 1:-1].copy()
            if erode:
                for a, b, c in _FACES:
                    core &= np.roll(mask, (-a, -b, -c), axis=(0, 1, 2))[1:-1, 1:-1, 1:-1]
            if len(self._candidates) > 64:
                self._candidates.clear()
            self._candidates[key] = np.argwhere(core) + self.lo
        return self._candidates[key]

    def table(self, locs_nm, targets, snap_zero: bool = False, search_radius: float = 160.0,
              erode: bool = True):
        """Every row: (xyz (N, 3) nm, distance (N,) nm, status (N,) str)."""
        locs = np.asarray(locs_nm, np.float64).reshape(-1, 3)
        targets = np.broadcast_to(np.asarray(targets, np.uint64), (len(locs),))
        rows = [None] * len(locs)
        for i in np.argsort(targets, kind="stable"):  # one target after another: each mask built once
            rows[i] = self.row(locs[i], int(targets[i]), snap_zero, search_radius, erode)
        xyz = np.array([r[0] for r in rows], np.float64).reshape(-1, 3)
        return xyz, np.array([r[1] for r in rows], np.float64), np.array([r[2] for r in rows], dtype=object)

    def lookup(self, xyz_nm, ts) -> tuple[np.ndarray, np.ndarray]:
        """(supervoxel, root at ``ts``) under each nm location: what a job reports at the snapped spot."""
        v = np.floor(np.asarray(xyz_nm, np.float64).reshape(-1, 3) / self.res).astype(np.int64)
        sv = np.array([self._label(x) for x in v], dtype=np.uint64)
        return sv, self.truth.root_of(sv, ts)


def other_targets(truth: Truth, locs_nm, ts, seed: int = 0, reach=(4, 4, 2)) -> tuple[np.ndarray, np.ndarray]:
    """Test inputs that make snapping snap: for each nm location, a target that is NOT the root
    under it (at ``ts``) but a root at ``ts`` of a supervoxel within ``reach`` voxels of it (picked
    at random), else the root under it (0 on background). Returns (targets, own roots)."""
    rng = np.random.default_rng(seed)
    res, vol = truth.resolution(0), truth.volume(0)
    off, size = (np.asarray(a, np.int64) for a in truth.bounds(0))
    labels = truth.label_index(0)[0]  # every label of the volume, sorted
    roots = truth.root_of(labels, ts)

    def root(sv):
        return roots[np.searchsorted(labels, sv)]

    v = np.floor(np.asarray(locs_nm, np.float64).reshape(-1, 3) / res).astype(np.int64) - off
    targets, own = np.zeros(len(v), np.uint64), np.zeros(len(v), np.uint64)
    reach = np.asarray(reach)
    for i, x in enumerate(v):
        if np.all((x >= 0) & (x < size)):
            own[i] = root(vol[tuple(x)])
        a, b = np.clip(x - reach, 0, size), np.clip(x + reach + 1, 0, size)
        near = np.unique(root(vol[a[0]:b[0], a[1]:b[1], a[2]:b[2]]))
        near = near[(near != 0) & (near != own[i])]
        targets[i] = rng.choice(near) if len(near) else own[i]
    return targets, own
