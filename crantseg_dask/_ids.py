"""The graphene (PyChunkedGraph) node-ID layout, vectorised over uint64 arrays.

A node ID is 64 bits, most significant first::

    | layer (8 bits) | x (b) | y (b) | z (b) | segment id (64 - 8 - 3b) |

``b`` depends on the layer and comes from the graph info's ``spatial_bit_masks``. Every operation
here stays in ``uint64``: never through ``int64`` or Python floats, so IDs at the top of the range
survive. See ``shared/reference/cave-protocol.md`` section 4.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .errors import InvalidIDError

__all__ = ["IDLayout"]

_U64 = np.uint64


def _u64(x) -> np.ndarray:
    """``x`` as a uint64 array, refusing negatives and non-integers instead of wrapping them."""
    a = np.asarray(x)
    if a.dtype == np.uint64:
        return a
    if a.dtype.kind == "i":
        if a.size and a.min() < 0:
            raise InvalidIDError(f"node IDs must be non-negative, got {a.min()}")
        return a.astype(np.uint64)
    if a.dtype.kind == "u" or a.dtype == bool:
        return a.astype(np.uint64)
    if a.dtype == object:  # Python ints beyond int64
        return np.array([int(v) for v in a.ravel()], dtype=np.uint64).reshape(a.shape)
    raise InvalidIDError(f"node IDs must be integers, got dtype {a.dtype}")


@dataclass(frozen=True)
class IDLayout:
    """Bit layout of a chunked graph's node IDs.

    Parameters
    ----------
    n_layers : int
        Number of layers; the root layer (8 for CRANT).
    spatial_bits : tuple of int
        Bits per axis for layers 1..n_layers (index 0 is layer 1).
    layer_bits : int
        Bits for the layer id (8, cloud-volume's default).
    """

    n_layers: int
    spatial_bits: tuple[int, ...]
    layer_bits: int = 8

    def __post_init__(self) -> None:
        if len(self.spatial_bits) != self.n_layers:
            raise ValueError(
                f"spatial_bits needs one entry per layer 1..{self.n_layers}, got {len(self.spatial_bits)}"
            )
        for layer, b in enumerate(self.spatial_bits, start=1):
            if not 1 <= b or 3 * b >= 64 - self.layer_bits:
                raise ValueError(f"layer {layer}: {b} bits per axis leave no room for segment ids")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def pcg(cls, n_layers: int = 8, spatial_bits: int = 10) -> "IDLayout":
        """The layout PyChunkedGraph computes: b(L) = max(1, n_layers - L) for L > 2,
        and max(spatial_bits, n_layers - 2) for layers 1 and 2."""
        low = max(spatial_bits, n_layers - 2)
        bits = tuple(low if layer <= 2 else max(1, n_layers - layer) for layer in range(1, n_layers + 1))
        return cls(n_layers=n_layers, spatial_bits=bits)

    @classmethod
    def from_graph_info(cls, graph: Mapping) -> "IDLayout":
        """From the ``graph`` section of a graphene info (``spatial_bit_masks`` has string keys)."""
        n_layers = int(graph["n_layers"])
        masks = {int(k): int(v) for k, v in graph["spatial_bit_masks"].items()}
        return cls(
            n_layers=n_layers,
            spatial_bits=tuple(masks[layer] for layer in range(1, n_layers + 1)),
            layer_bits=int(graph.get("n_bits_for_layer_id", 8)),
        )

    def spatial_bit_masks(self) -> dict[str, int]:
        """The info's ``spatial_bit_masks`` object."""
        return {str(layer): b for layer, b in enumerate(self.spatial_bits, start=1)}

    # -- helpers ------------------------------------------------------------------------------
    @property
    def _layer_shift(self) -> np.uint64:
        return _U64(64 - self.layer_bits)

    def _bits_of(self, layers: np.ndarray) -> np.ndarray:
        """Bits per axis for each layer in ``layers`` (uint64); layers outside 1..n give 0."""
        table = np.zeros(256, dtype=np.uint64)
        table[1 : self.n_layers + 1] = self.spatial_bits
        return table[layers.astype(np.intp)]

    # -- decode -------------------------------------------------------------------------------
    def layer(self, ids) -> np.ndarray:
        """Layer of each ID (uint8; 0 for ID 0)."""
        return (_u64(ids) >> self._layer_shift).astype(np.uint8)

    def chunk_coords(self, ids) -> np.ndarray:
        """Chunk x, y, z of each ID at its own layer, as an (..., 3) int64 array.

        IDs whose layer is 0 or above ``n_layers`` decode to (0, 0, 0)."""
        ids = _u64(ids)
        b = self._bits_of(self.layer(ids))
        top = _U64(64 - self.layer_bits)
        mask = (_U64(1) << b) - _U64(1)
        out = np.empty(ids.shape + (3,), dtype=np.int64)
        for axis in range(3):
            shift = np.where(b > 0, top - b * _U64(axis + 1), _U64(0))
            out[..., axis] = ((ids >> shift) & mask).astype(np.int64)
        return out

    def segment(self, ids) -> np.ndarray:
        """Segment id (the bits below the chunk coordinates), uint64."""
        ids = _u64(ids)
        b = self._bits_of(self.layer(ids))
        seg_bits = _U64(64 - self.layer_bits) - _U64(3) * b
        return ids & ((_U64(1) << seg_bits) - _U64(1))

    def chunk_id(self, ids) -> np.ndarray:
        """The node ID with its segment bits zeroed: the ID of its chunk."""
        ids = _u64(ids)
        return ids - self.segment(ids)

    # -- encode -------------------------------------------------------------------------------
    def encode(self, layer, x, y, z, segment) -> np.ndarray:
        """Node IDs from their parts (broadcast). Raises InvalidIDError when a part does not fit."""
        layer, x, y, z, segment = np.broadcast_arrays(
            np.asarray(layer), np.asarray(x), np.asarray(y), np.asarray(z), _u64(segment)
        )
        if layer.size and (layer.min() < 1 or layer.max() > self.n_layers):
            raise InvalidIDError(f"layer must be in 1..{self.n_layers}, got {layer.min()}..{layer.max()}")
        for name, c in (("x", x), ("y", y), ("z", z)):
            if c.size and c.min() < 0:
                raise InvalidIDError(f"chunk {name} must be >= 0, got {c.min()}")
        layer_u = layer.astype(np.uint64)
        b = self._bits_of(layer_u)
        limit = _U64(1) << b
        for name, c in (("x", x), ("y", y), ("z", z)):
            if np.any(c.astype(np.uint64) >= limit):
                raise InvalidIDError(f"chunk {name} does not fit in the layer's bits per axis ({self.spatial_bits})")
        seg_bits = _U64(64 - self.layer_bits) - _U64(3) * b
        if np.any(segment >= (_U64(1) << seg_bits)):
            raise InvalidIDError("segment id does not fit in the layer's segment bits")
        top = _U64(64 - self.layer_bits)
        out = (layer_u << top) | segment
        for axis, c in enumerate((x, y, z)):
            out = out | (c.astype(np.uint64) << (top - b * _U64(axis + 1)))
        return out

    def parent_chunk(self, coords, from_layer: int, to_layer: int, fan_out: int = 2) -> np.ndarray:
        """Chunk coordinate at ``to_layer`` containing chunk ``coords`` of ``from_layer``.

        Layers 1 and 2 share one grid; the root layer is the single chunk (0, 0, 0)."""
        if to_layer >= self.n_layers:
            return np.zeros_like(np.asarray(coords))
        lo, hi = max(from_layer, 2), max(to_layer, 2)
        return np.asarray(coords) // (fan_out ** (hi - lo))
