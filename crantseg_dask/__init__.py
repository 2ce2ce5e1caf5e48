"""crantseg_dask: crantpy's segmentation queries as chunked Dask graphs, with Zarr batch jobs.

The eager API below has crantpy's names, arguments and return types. Lazy versions that take and
return Dask collections live in ``crantseg_dask.graph``; batch jobs in ``crantseg_dask.jobs``.
"""
from importlib.metadata import PackageNotFoundError, version

from .ops.cutouts import get_segmentation_cutout
from .ops.lineage import find_common_time, get_lineage_graph
from .ops.locations import locs_to_segments, locs_to_supervoxels
from .ops.mapping import roots_to_supervoxels, supervoxels_to_roots
from .ops.neurons import neuron_to_segments
from .ops.refresh import refresh
from .ops.snapping import snap_to_id
from .ops.latest import is_latest_roots
from .ops.updates import update_ids
from .ops.validity import is_valid_root, is_valid_supervoxel
from .ops.voxels import get_voxels
from .sources.resolve import cave_dataset

try:
    __version__ = version("crantseg_dask")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "cave_dataset",
    "find_common_time",
    "get_lineage_graph",
    "get_segmentation_cutout",
    "get_voxels",
    "is_latest_roots",
    "is_valid_root",
    "is_valid_supervoxel",
    "locs_to_segments",
    "locs_to_supervoxels",
    "neuron_to_segments",
    "refresh",
    "roots_to_supervoxels",
    "snap_to_id",
    "supervoxels_to_roots",
    "update_ids",
]
