"""Brute-force ground truth for an embedded dataset: what tests trust.

Everything here is read straight from the stored volume (every mip, through cloud-volume), the
recorded edit log (``history/edits.json``, replayed from ingest), the supervoxel list with each
supervoxel's fragment and anchor position (``history/``), and the ID bit layout (``_ids.py``,
tested against PyChunkedGraph's published example). It never consults the derived chunked graph
(``graph/``), the recorded contacts, a source, or any engine helper. The chunk hierarchy, the L2
graph and ``thin`` live in :mod:`crantseg_dask.dataset.truth_graph`.

Definitions the operations are held to:

* the root of a supervoxel at time T is the object holding its fragment after every operation with
  ``ts <= T`` (inclusive); unknown IDs, 0 and times before ingest map to 0;
* a root is latest at T iff it was created at or before T and not superseded at or before T;
* ``latest_roots(root, T)``: for T at or after the root's creation, the roots alive at T that
  descend from it in the lineage (itself if alive); for T before its creation, the roots alive at
  T that it descends from (its ancestors alive at T; empty before ingest). Computed by sweeping the
  edit log in time order (forwards) or in reverse (backwards), not by walking a graph;
* ``update(root, T)``: a root alive at T is its own answer (confidence 1); otherwise the root at T
  that holds the most of the old root's supervoxels (ties: the smallest ID), confidence = the
  share of the old root's supervoxels it holds; no supervoxel in any root at T (before ingest) or
  an unknown root gives (old root, 0.0).
"""
from __future__ import annotations

from datetime import datetime, timezone
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from .._ids import IDLayout
from .layout import load_json, read_params
from .truth_graph import GraphTruth

__all__ = ["Truth"]


def _ms(ts) -> int:
    """datetime / unix seconds -> integer milliseconds."""
    if isinstance(ts, datetime):
        return int(round(ts.timestamp() * 1000))
    return int(round(float(ts) * 1000))


class Truth(GraphTruth):
    """Ground truth of the dataset in directory ``path``."""

    def __init__(self, path):
        self.path = Path(path)
        self.params = read_params(self.path)
        self.info = load_json(self.path / "dataset.json")
        self.layout = IDLayout.from_graph_info(self.info["graph"])
        self.edits = load_json(self.path / "history" / "edits.json")
        h = self.path / "history"
        self.supervoxels = np.load(h / "supervoxels.npy")
        self.sv_fragment = np.load(h / "sv_fragment.npy")
        self.sv_neuron = np.load(h / "sv_neuron.npy")
        self.sv_anchor = np.load(h / "sv_anchor.npy")
        self.operations = self.edits["operations"]
        self.ingest_ms = self.edits["ingest_ms"]
        self._replay()

    # -- history replay -----------------------------------------------------------------------
    def _replay(self) -> None:
        objects = {o["root"]: (frozenset(o["fragments"]), frozenset(map(tuple, o["links"])))
                   for o in self.edits["initial_objects"]}
        self.created_ms = {r: self.ingest_ms for r in objects}
        self.superseded_ms: dict[int, int] = {}
        self.objects = dict(objects)  # every root ever: (fragments, links)
        self.epochs = [(self.ingest_ms, dict(objects))]
        self.lineage = []  # (old, new, op_id)
        for op in self.operations:
            for r in op["old_roots"]:
                del objects[r]
                self.superseded_ms[r] = op["ts_ms"]
            for new in op["new_roots"]:
                objects[new["root"]] = (frozenset(new["fragments"]), frozenset(map(tuple, new["links"])))
                self.objects[new["root"]] = objects[new["root"]]
                self.created_ms[new["root"]] = op["ts_ms"]
                for r in op["old_roots"]:
                    self.lineage.append((r, new["root"], op["id"]))
            self.epochs.append((op["ts_ms"], dict(objects)))

    @cached_property
    def all_roots(self) -> np.ndarray:
        return np.array(sorted(self.objects), dtype=np.uint64)

    def epoch(self, ts):
        """Objects (root -> (fragments, links)) at time ``ts`` (datetime or unix s); None before ingest."""
        t = _ms(ts)
        times = [e[0] for e in self.epochs]
        i = np.searchsorted(times, t, side="right") - 1
        return None if i < 0 else self.epochs[i][1]

    def root_of(self, svids, ts) -> np.ndarray:
        """Root of each supervoxel at ``ts``; 0 for 0, unknown IDs, and times before ingest."""
        svids = np.asarray(svids, dtype=np.uint64)
        lut = self._fragment_roots(self._epoch_index(ts))
        pos = np.minimum(np.searchsorted(self.supervoxels, svids), len(self.supervoxels) - 1)
        known = (self.supervoxels[pos] == svids) & (svids != 0)
        return np.where(known, lut[self.sv_fragment[pos]], np.uint64(0)).astype(np.uint64)

    def _epoch_index(self, ts) -> int:
        times = [e[0] for e in self.epochs]
        return int(np.searchsorted(times, _ms(ts), side="right")) - 1

    @lru_cache(maxsize=None)
    def _fragment_roots(self, epoch: int) -> np.ndarray:
        """Fragment -> root in epoch ``epoch`` (-1: before ingest, every fragment 0)."""
        lut = np.zeros(int(self.sv_fragment.max()) + 1, dtype=np.uint64)
        for r, (frags, _) in (self.epochs[epoch][1].items() if epoch >= 0 else ()):
            lut[list(frags)] = r
        return lut

    def leaves(self, root) -> np.ndarray:
        """Sorted supervoxels of ``root`` (timeless: a root's leaves never change)."""
        return self._leaves(int(root)).copy()

    @lru_cache(maxsize=None)
    def _leaves(self, root: int) -> np.ndarray:
        frags, _ = self.objects[root]
        return np.sort(self.supervoxels[np.isin(self.sv_fragment, list(frags))])

    def roots_at(self, ts) -> set[int]:
        return set(self.epoch(ts) or {})

    def is_latest(self, root, ts) -> bool:
        r, t = int(root), _ms(ts)
        if r not in self.created_ms:
            return False
        sup = self.superseded_ms.get(r)
        return self.created_ms[r] <= t and not (sup is not None and sup <= t)

    def created(self, root) -> datetime:
        return datetime.fromtimestamp(self.created_ms[int(root)] / 1000, tz=timezone.utc)

    def superseded(self, root) -> datetime | None:
        ms = self.superseded_ms.get(int(root))
        return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)

    def successors(self, root) -> list[int]:
        return sorted(n for o, n, _ in self.lineage if o == int(root))

    def predecessors(self, root) -> list[int]:
        return sorted(o for o, n, _ in self.lineage if n == int(root))

    def latest_roots(self, root, ts=None) -> set[int]:
        """Roots alive at ``ts`` (default: after every edit) related to ``root`` in the lineage:
        its descendants when ``ts`` is at or after its creation, else its ancestors (see above)."""
        r, t = int(root), (_ms(ts) if ts is not None else self.epochs[-1][0])
        born = self.created_ms[r]
        family = {r}
        if t >= born:  # forwards: every edit after the root's birth, up to t, in time order
            for op in self.operations:
                if born < op["ts_ms"] <= t and family & set(op["old_roots"]):
                    family |= {n["root"] for n in op["new_roots"]}
        else:  # backwards: every edit after t, up to the root's birth, newest first
            for op in reversed(self.operations):
                if t < op["ts_ms"] <= born and family & {n["root"] for n in op["new_roots"]}:
                    family |= set(op["old_roots"])
        return {x for x in family if self.is_latest(x, t / 1000)}

    def update(self, root, ts) -> tuple[int, float]:
        """``update_ids``' answer for ``root`` at ``ts`` by supervoxel overlap (see above)."""
        r = int(root)
        if r not in self.objects:
            return r, 0.0
        if self.is_latest(r, ts):
            return r, 1.0
        held = self.holders(r, ts)
        if not held:
            return r, 0.0
        best = min(held, key=lambda k: (-held[k], k))
        return best, held[best] / len(self.leaves(r))

    def holders(self, root, ts) -> dict[int, int]:
        """Root at ``ts`` -> how many of ``root``'s supervoxels it holds (roots holding none left out)."""
        now = self.root_of(self.leaves(int(root)), ts)
        u, c = np.unique(now[now != 0], return_counts=True)
        return dict(zip(u.tolist(), c.tolist()))

    def materialization(self, version=None) -> datetime:
        mats = {m["version"]: m["ts_ms"] for m in self.edits["materializations"]}
        v = max(mats) if version is None else int(version)
        return datetime.fromtimestamp(mats[v] / 1000, tz=timezone.utc)

    def operation_times(self) -> list[datetime]:
        return [datetime.fromtimestamp(o["ts_ms"] / 1000, tz=timezone.utc) for o in self.operations]

    # -- the volume ---------------------------------------------------------------------------
    @lru_cache(maxsize=4)
    def volume(self, mip: int = 0) -> np.ndarray:
        """The whole supervoxel volume at ``mip`` as an (X, Y, Z) uint64 array."""
        from cloudvolume import CloudVolume

        vol = CloudVolume(f"file://{self.path / 'segmentation'}", mip=mip, progress=False)
        return np.asarray(vol[vol.bounds][..., 0])

    def bounds(self, mip: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(voxel_offset, size) at ``mip`` in voxels."""
        scale = self.segmentation_info["scales"][mip]
        return np.array(scale["voxel_offset"]), np.array(scale["size"])

    def resolution(self, mip: int = 0) -> np.ndarray:
        return np.array(self.segmentation_info["scales"][mip]["resolution"], dtype=float)

    @cached_property
    def segmentation_info(self) -> dict:
        return load_json(self.path / "segmentation" / "info")

    def supervoxel_at(self, voxels, mip: int = 0) -> np.ndarray:
        """Supervoxel at absolute voxel coordinates (N, 3) at ``mip``; 0 outside the volume."""
        v = np.asarray(voxels, dtype=np.int64).reshape(-1, 3)
        off, size = self.bounds(mip)
        local = v - off
        inside = np.all((local >= 0) & (local < size), axis=1)
        out = np.zeros(len(v), dtype=np.uint64)
        vol = self.volume(mip)
        out[inside] = vol[tuple(local[inside].T)]
        return out

    def supervoxel_at_nm(self, locs_nm, mip: int = 0) -> np.ndarray:
        """Supervoxel at nm locations: voxel = floor(nm / resolution at mip)."""
        return self.supervoxel_at(np.floor(np.asarray(locs_nm, float) / self.resolution(mip)), mip)

    @lru_cache(maxsize=4)
    def label_index(self, mip: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(the volume's distinct labels at ``mip``, sorted, 0 included; each voxel's index into them)."""
        vol = self.volume(mip)
        labels = np.union1d(np.asarray(self.supervoxels, np.uint64), np.zeros(1, np.uint64))
        index = np.searchsorted(labels, vol)
        if not np.array_equal(labels[np.minimum(index, len(labels) - 1)], vol):  # a label not in the log
            labels, index = np.unique(vol, return_inverse=True)
        return labels, index.reshape(vol.shape)

    def mask_of(self, svids, mip: int = 0) -> np.ndarray:
        """Boolean volume at ``mip``: True where the voxel's label is one of ``svids`` (the same as
        ``np.isin(volume(mip), svids)``, through a per-label lookup table)."""
        labels, index = self.label_index(mip)
        return np.isin(labels, np.asarray(svids, np.uint64))[index]

    def voxels_of(self, root, mip: int = 0, bounds_vox=None) -> np.ndarray:
        """Absolute voxel coordinates (N, 3), lexicographically sorted, of ``root`` at ``mip``,
        optionally inside the half-open voxel box ``bounds_vox`` = [[lo], [hi]]."""
        off, _ = self.bounds(mip)
        hit = np.argwhere(self.mask_of(self.leaves(root), mip)) + off
        if bounds_vox is not None:
            lo, hi = np.asarray(bounds_vox)
            hit = hit[np.all((hit >= lo) & (hit < hi), axis=1)]
        return hit[np.lexsort(hit.T[::-1])]

    @cached_property
    def contacts(self) -> np.ndarray:
        """The generator's recorded contacts (``history/contacts.npy``): for dataset checks only;
        no answer here uses them (``volume_contacts`` recomputes them from the volume)."""
        return np.load(self.path / "history" / "contacts.npy")

    @cached_property
    def _label_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, mip-0 voxel counts) of the volume."""
        return np.unique(self.volume(0), return_counts=True)

    def largest_roots(self, n: int, ts=None) -> list[int]:
        """The ``n`` roots alive at ``ts`` (default: now) with the most mip-0 voxels, smallest first."""
        svs, counts = self._label_counts
        roots = self.root_of(svs, ts if ts is not None else datetime.now(timezone.utc))
        size: dict[int, int] = {}
        for r, c in zip(roots.tolist(), counts.tolist()):
            if r:
                size[r] = size.get(r, 0) + c
        return sorted(size, key=size.get)[-n:]
