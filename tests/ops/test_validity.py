"""is_valid_root / is_valid_supervoxel: checklist 1-4 (expected values from the ID layout in truth)."""
import dask.array as da
import numpy as np
import pytest

from crantseg_dask.ops.validity import (
    is_valid_root,
    is_valid_root_graph,
    is_valid_supervoxel,
    is_valid_supervoxel_graph,
    layer_is_kernel,
)


@pytest.fixture
def ids(truth):
    """Roots, supervoxels, an L2 ID, zero; plus the expected answers from the truth's layout."""
    roots = truth.all_roots[:3]
    svs = truth.supervoxels[:3]
    l2 = truth.layout.encode(2, 0, 0, 0, 5)
    x = np.concatenate([roots, svs, l2[None], np.array([0], np.uint64)])
    return x, np.r_[[True] * 3, [False] * 5], np.r_[[False] * 3, [True] * 3, False, False]


def test_layers_c1_c2_c3(ids, spec, truth):
    x, root_ok, sv_ok = ids
    assert (truth.layout.layer(truth.all_roots) == truth.layout.n_layers).all()
    r = is_valid_root(x, dataset=spec)
    s = is_valid_supervoxel(list(x), dataset=spec)
    assert r.dtype == bool and s.dtype == bool and len(r) == len(x)
    np.testing.assert_array_equal(r, root_ok)
    np.testing.assert_array_equal(s, sv_ok)
    # scalars -> Python bool; numeric strings are one ID
    assert is_valid_root(int(x[0]), dataset=spec) is True
    assert is_valid_root(str(x[0]), dataset=spec) is True
    assert is_valid_supervoxel(np.uint64(x[3]), dataset=spec) is True
    for bad in (0, int(x[6]), "abc", -5):
        assert is_valid_root(bad, dataset=spec) is False
    assert is_valid_supervoxel(0, dataset=spec) is False
    assert is_valid_supervoxel(int(x[6]), dataset=spec) is False  # L2 is neither


def test_raise_exc_c4(ids, local_spec):
    x, _, _ = ids
    with pytest.raises(ValueError, match="is not a valid root ID"):
        is_valid_root(int(x[4]), dataset=local_spec, raise_exc=True)
    with pytest.raises(ValueError, match="is not a valid supervoxel ID"):
        is_valid_supervoxel(int(x[0]), dataset=local_spec, raise_exc=True)
    with pytest.raises(ValueError, match=r"^Invalid root IDs found: .*" + str(int(x[4]))):
        is_valid_root(x, dataset=local_spec, raise_exc=True)
    with pytest.raises(ValueError, match=r"^Invalid supervoxel IDs found:"):
        is_valid_supervoxel(x, dataset=local_spec, raise_exc=True)
    assert is_valid_root(x[:3], dataset=local_spec, raise_exc=True).all()


def test_no_per_id_source_calls(ids, local_spec, monkeypatch):
    """C1: pure CPU over the layout; no graph request."""
    from crantseg_dask.sources import open_source

    src = open_source(local_spec)
    for name in ("roots", "is_latest", "leaves", "leaves_many"):
        monkeypatch.setattr(src, name, lambda *a, **k: pytest.fail("network call"))
    big = np.tile(ids[0], 10_000)
    assert is_valid_root(big, dataset=local_spec).sum() == 30_000


def test_kernel_and_graph(ids, truth, local_spec):
    x, root_ok, sv_ok = ids
    np.testing.assert_array_equal(layer_is_kernel(x, truth.layout, truth.layout.n_layers), root_ok)
    for chunks in (1, 3, len(x)):
        d = da.from_array(x, chunks=chunks)
        np.testing.assert_array_equal(is_valid_root_graph(d, dataset=local_spec).compute(), root_ok)
        np.testing.assert_array_equal(is_valid_supervoxel_graph(d, dataset=local_spec).compute(), sv_ok)


def test_empty_and_nan(local_spec):
    assert is_valid_root([], dataset=local_spec).shape == (0,)
    assert not is_valid_root([np.nan, None], dataset=local_spec).any()
