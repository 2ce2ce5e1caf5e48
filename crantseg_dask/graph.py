"""The lazy API: the same operations as graph builders over Dask collections.

``crantseg_dask.graph.locs_to_segments(dask_array_of_locations)`` returns a Dask array; nothing is
read until it is computed (locally or on a cluster), so it composes with the rest of a Dask job.
Each builder resolves its dataset and timestamp once, when it is called.
"""
from .ops.cutouts import get_segmentation_cutout_graph as get_segmentation_cutout
from .ops.locations import locs_to_segments_graph as locs_to_segments
from .ops.locations import locs_to_supervoxels_graph as locs_to_supervoxels
from .ops.mapping import roots_to_supervoxels_graph as roots_to_supervoxels
from .ops.mapping import supervoxels_to_roots_graph as supervoxels_to_roots
from .ops.snapping import snap_table_graph as snap_table
from .ops.snapping import snap_to_id_graph as snap_to_id
from .ops.latest import is_latest_roots_graph as is_latest_roots
from .ops.updates import update_ids_graph as update_ids
from .ops.validity import is_valid_root_graph as is_valid_root
from .ops.validity import is_valid_supervoxel_graph as is_valid_supervoxel
from .ops.voxels import get_voxels_graph as get_voxels

__all__ = [
    "get_segmentation_cutout",
    "get_voxels",
    "is_latest_roots",
    "is_valid_root",
    "is_valid_supervoxel",
    "locs_to_segments",
    "locs_to_supervoxels",
    "roots_to_supervoxels",
    "snap_table",
    "snap_to_id",
    "supervoxels_to_roots",
    "update_ids",
]
