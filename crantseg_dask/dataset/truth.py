"""Brute-force ground truth for an embedded dataset: what tests trust.

Everything here is read straight from the stored arrays (the whole volume, through cloud-volume)
and recomputed from the recorded edit log (``history/edits.json``) by replaying it from ingest. It
never consults the derived chunked graph (``graph/``) that the sources serve, nor any source.

Definitions the operations are held to:

* the root of a supervoxel at time T is the object holding its fragment after every operation with
  ``ts <= T`` (inclusive); unknown IDs and 0 map to 0;
* a root is latest at T iff it was created at or before T and not superseded at or before T;
* an L2 node of a root is a connected piece of the root inside one graph chunk, following the
  root's agglomeration edges (contacts inside one fragment, plus the links that joined fragments);
* ``thin`` removes a root voxel when one of its 6 face neighbours (at the same mip) belongs to the
  root but to another L2 node that is not joined to its own by an agglomeration edge.
"""
from __future__ import annotations

from datetime import datetime, timezone
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from .._ids import IDLayout
from .layout import load_json, read_params

__all__ = ["Truth"]


def _ms(ts) -> int:
    """datetime / unix seconds -> integer milliseconds."""
    if isinstance(ts, datetime):
        return int(round(ts.timestamp() * 1000))
    return int(round(float(ts) * 1000))


class Truth:
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
        self.contacts = np.load(h / "contacts.npy")
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
        objects = self.epoch(ts) or {}
        frag_root = {f: r for r, (frags, _) in objects.items() for f in frags}
        out = np.zeros(svids.shape, dtype=np.uint64)
        for k, s in np.ndenumerate(svids):
            i = np.searchsorted(self.supervoxels, s)
            if s and i < len(self.supervoxels) and self.supervoxels[i] == s:
                out[k] = frag_root.get(int(self.sv_fragment[i]), 0)
        return out

    def leaves(self, root) -> np.ndarray:
        """Sorted supervoxels of ``root`` (timeless: a root's leaves never change)."""
        frags, _ = self.objects[int(root)]
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
        """Roots alive at ``ts`` (default: after every edit) descending from ``root`` (itself if alive)."""
        t = _ms(ts) if ts is not None else self.epochs[-1][0]
        out, todo, seen = set(), [int(root)], set()
        while todo:
            r = todo.pop()
            if r in seen:
                continue
            seen.add(r)
            if self.is_latest(r, t / 1000):
                out.add(r)
            elif self.created_ms[r] <= t:
                todo += self.successors(r)
        return out

    def materialization(self, version=None) -> datetime:
        mats = {m["version"]: m["ts_ms"] for m in self.edits["materializations"]}
        v = max(mats) if version is None else int(version)
        return datetime.fromtimestamp(mats[v] / 1000, tz=timezone.utc)

    def operation_times(self) -> list[datetime]:
        return [datetime.fromtimestamp(o["ts_ms"] / 1000, tz=timezone.utc) for o in self.operations]

    # -- L2 structure -------------------------------------------------------------------------
    @lru_cache(maxsize=None)
    def l2_groups(self, root) -> list[np.ndarray]:
        """The L2 nodes of ``root`` as sorted supervoxel arrays (sorted by first member)."""
        comp, svs = self._l2_components(int(root))
        return [np.sort(svs[comp == c]) for c in np.unique(comp)] if len(svs) else []

    @lru_cache(maxsize=None)
    def _l2_components(self, root: int):
        frags, links = self.objects[root]
        svs = self.leaves(root)
        edges = self._agglomeration_edges(root)
        chunk = self.layout.chunk_coords(svs)
        idx = {int(s): i for i, s in enumerate(svs)}
        parent = list(range(len(svs)))

        def find(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for a, b in edges:
            i, j = idx[a], idx[b]
            if (chunk[i] == chunk[j]).all():
                pi, pj = find(i), find(j)
                if pi != pj:
                    parent[max(pi, pj)] = min(pi, pj)
        comp = np.array([find(i) for i in range(len(svs))], dtype=np.int64)
        return comp, svs

    def _agglomeration_edges(self, root: int) -> list[tuple[int, int]]:
        frags, links = self.objects[root]
        fa = self.sv_fragment[np.searchsorted(self.supervoxels, self.contacts[:, 0])]
        fb = self.sv_fragment[np.searchsorted(self.supervoxels, self.contacts[:, 1])]
        inside = (fa == fb) & np.isin(fa, list(frags))
        edges = [tuple(map(int, e)) for e in self.contacts[inside]]
        return edges + [tuple(map(int, e)) for e in links]

    def l2_edges(self, root) -> set[tuple[int, int]]:
        """Pairs (i, j), i < j, of indices into ``l2_groups(root)`` joined by an agglomeration edge."""
        comp, svs = self._l2_components(int(root))
        labels = {c: k for k, c in enumerate(np.unique(comp))}
        idx = {int(s): labels[c] for s, c in zip(svs.tolist(), comp)}
        out = set()
        for a, b in self._agglomeration_edges(int(root)):
            i, j = idx[a], idx[b]
            if i != j:
                out.add((min(i, j), max(i, j)))
        return out

    def l2_index(self, root) -> dict[int, int]:
        """Supervoxel -> index of its L2 group in ``l2_groups(root)``."""
        return {int(s): k for k, g in enumerate(self.l2_groups(int(root))) for s in g.tolist()}

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

    def voxels_of(self, root, mip: int = 0, bounds_vox=None) -> np.ndarray:
        """Absolute voxel coordinates (N, 3), lexicographically sorted, of ``root`` at ``mip``,
        optionally inside the half-open voxel box ``bounds_vox`` = [[lo], [hi]]."""
        vol = self.volume(mip)
        off, _ = self.bounds(mip)
        hit = np.argwhere(np.isin(vol, self.leaves(root))) + off
        if bounds_vox is not None:
            lo, hi = np.asarray(bounds_vox)
            hit = hit[np.all((hit >= lo) & (hit < hi), axis=1)]
        return hit[np.lexsort(hit.T[::-1])]

    def interface_voxels(self, root, mip: int = 0) -> np.ndarray:
        """Voxels (N, 3, sorted) of ``root`` that ``thin`` removes (see the module docstring)."""
        vol = self.volume(mip)
        off, _ = self.bounds(mip)
        l2 = self.l2_index(root)
        joined = self.l2_edges(root)
        keys = np.array(sorted(l2), dtype=np.uint64)
        vals = np.array([l2[int(k)] for k in keys], dtype=np.int64)
        pos = np.clip(np.searchsorted(keys, vol), 0, len(keys) - 1)
        group = np.where(keys[pos] == vol, vals[pos], -1)
        removed = np.zeros(vol.shape, dtype=bool)
        for axis in range(3):
            a = np.moveaxis(group, axis, 0)
            r = np.moveaxis(removed, axis, 0)
            u, v = a[:-1], a[1:]
            cand = (u >= 0) & (v >= 0) & (u != v)
            if not cand.any():
                continue
            bad = np.zeros_like(cand)
            pairs = np.stack([np.minimum(u[cand], v[cand]), np.maximum(u[cand], v[cand])], axis=1)
            bad[cand] = [tuple(p) not in joined for p in pairs.tolist()]
            r[:-1] |= bad
            r[1:] |= bad
        hit = np.argwhere(removed) + off
        return hit[np.lexsort(hit.T[::-1])]

    def largest_roots(self, n: int, ts=None) -> list[int]:
        """The ``n`` roots alive at ``ts`` (default: now) with the most mip-0 voxels, smallest first."""
        svs, counts = np.unique(self.volume(0), return_counts=True)
        roots = self.root_of(svs, ts if ts is not None else datetime.now(timezone.utc))
        size: dict[int, int] = {}
        for r, c in zip(roots.tolist(), counts.tolist()):
            if r:
                size[r] = size.get(r, 0) + c
        return sorted(size, key=size.get)[-n:]

    def self_touching_roots(self, mip: int = 0) -> list[int]:
        """Roots with at least one interface voxel at ``mip`` (candidates for ``thin`` tests)."""
        return [r for r in self.all_roots.tolist() if len(self.interface_voxels(r, mip))]
