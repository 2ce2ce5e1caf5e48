import numpy as np
import pytest

from crantseg_dask._ids import IDLayout
from crantseg_dask.errors import InvalidIDError

CRANT = IDLayout.pcg(8)


def test_crant_bit_masks_follow_the_pcg_rule():
    assert CRANT.spatial_bits == (10, 10, 5, 4, 3, 2, 1, 1)
    assert CRANT.spatial_bit_masks() == {"1": 10, "2": 10, "3": 5, "4": 4, "5": 3, "6": 2, "7": 1, "8": 1}
    assert IDLayout.from_graph_info({"n_layers": 8, "spatial_bit_masks": CRANT.spatial_bit_masks()}) == CRANT


def test_worked_example_from_the_protocol_notes():
    four = IDLayout.pcg(4)
    sv, l2, root = np.uint64(72128100221059073), np.uint64(144185694258987009), np.uint64(288230376151711749)
    assert four.layer([sv, l2, root]).tolist() == [1, 2, 4]
    np.testing.assert_array_equal(four.chunk_coords([sv, l2, root]), [[1, 2, 0], [1, 2, 0], [0, 0, 0]])
    assert four.segment([sv, l2, root]).tolist() == [1, 1, 5]
    assert int(four.encode(1, 1, 2, 0, 1)) == int(sv)
    assert int(four.encode(4, 0, 0, 0, 5)) == int(root)


def test_crant_root_prefix():
    root = CRANT.encode(8, 0, 0, 0, 378129324)
    assert str(int(root)).startswith("5764607526")
    assert int(root) == (8 << 56) + 378129324


@pytest.mark.parametrize("layer", range(1, 9))
def test_round_trip_over_every_layer_and_edge_values(layer):
    rng = np.random.default_rng(layer)
    b = CRANT.spatial_bits[layer - 1]
    seg_bits = 56 - 3 * b
    top, seg_max = (1 << b) - 1, (1 << seg_bits) - 1
    xyz = np.concatenate([[[0, 0, 0], [top, top, top], [top, 0, top]], rng.integers(0, top + 1, (50, 3))])
    seg = np.concatenate([[0, seg_max, 1], rng.integers(0, seg_max, 50, dtype=np.uint64)]).astype(np.uint64)
    ids = CRANT.encode(layer, xyz[:, 0], xyz[:, 1], xyz[:, 2], seg)
    assert ids.dtype == np.uint64
    assert (CRANT.layer(ids) == layer).all()
    np.testing.assert_array_equal(CRANT.chunk_coords(ids), xyz)
    np.testing.assert_array_equal(CRANT.segment(ids), seg)
    np.testing.assert_array_equal(CRANT.chunk_id(ids) | CRANT.segment(ids), ids)


def test_mixed_layers_decode_in_one_call_and_top_of_range_survives():
    ids = np.array([CRANT.encode(1, 1023, 1023, 1023, (1 << 26) - 1), CRANT.encode(8, 1, 1, 1, (1 << 53) - 1), 0],
                   dtype=np.uint64)
    assert CRANT.layer(ids).tolist() == [1, 8, 0]
    np.testing.assert_array_equal(CRANT.chunk_coords(ids), [[1023] * 3, [1] * 3, [0] * 3])
    assert CRANT.segment(ids).tolist() == [(1 << 26) - 1, (1 << 53) - 1, 0]
    big = IDLayout.pcg(8, spatial_bits=10)
    full = np.uint64(2**64 - 1)
    assert big.layer(full)[()] == 255  # decoding never goes through int64 / float


@pytest.mark.parametrize("kw", [
    dict(layer=1, x=1024, y=0, z=0, segment=1),
    dict(layer=8, x=2, y=0, z=0, segment=1),
    dict(layer=1, x=0, y=0, z=0, segment=1 << 26),
    dict(layer=9, x=0, y=0, z=0, segment=1),
    dict(layer=1, x=-1, y=0, z=0, segment=1),
])
def test_encode_rejects_parts_that_do_not_fit(kw):
    with pytest.raises(InvalidIDError):
        CRANT.encode(kw["layer"], kw["x"], kw["y"], kw["z"], kw["segment"])


def test_decode_rejects_negative_ids():
    with pytest.raises(InvalidIDError, match="-5"):
        CRANT.layer([-5])


def test_parent_chunk():
    assert CRANT.parent_chunk(np.array([5, 3, 1]), 2, 3).tolist() == [2, 1, 0]
    assert CRANT.parent_chunk(np.array([5, 3, 1]), 2, 5).tolist() == [0, 0, 0]
    assert CRANT.parent_chunk(np.array([5, 3, 1]), 1, 8).tolist() == [0, 0, 0]
