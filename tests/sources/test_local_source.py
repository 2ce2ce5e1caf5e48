import pytest

from crantseg_dask.sources import open_source
from crantseg_dask.testing.conformance import SourceConformance


class TestLocalSource(SourceConformance):
    @pytest.fixture
    def source(self, local_spec):
        return open_source(local_spec)


def test_one_live_source_per_spec_and_process(local_spec, tiny_path):
    from crantseg_dask.sources.base import SourceSpec

    assert open_source(local_spec) is open_source(SourceSpec(kind="local", name="tiny", path=str(tiny_path)))


def test_unknown_roots_are_named(local_spec):
    from crantseg_dask.errors import UnknownIDError

    source = open_source(local_spec)
    unknown = int(source.meta.layout.encode(8, 0, 0, 0, 5))
    with pytest.raises(UnknownIDError, match=str(unknown)):
        source.root_timestamps([unknown])


def test_leaves_many_walks_every_tree_at_once_like_truth(local_spec, truth):
    """The vectorised walk: every root (duplicates, a supervoxel among them) against the truth's
    leaves; stop_layer and bounds against the one-node walk (itself checked against truth)."""
    import numpy as np

    source = open_source(local_spec)
    roots = truth.all_roots
    sv = int(truth.supervoxels[3])
    nodes = np.r_[roots[::-1], roots[:3], sv].astype(np.uint64)
    many = source.leaves_many(nodes)
    assert list(many) == list(dict.fromkeys(nodes.tolist()))  # first-appearance order, once each
    for r in roots.tolist():
        np.testing.assert_array_equal(many[r], truth.leaves(r))
    np.testing.assert_array_equal(many[sv], [sv])
    box = np.array([source.meta.bounds(0)[0], source.meta.bounds(0)[0] + source.meta.bounds(0)[1] // 2])
    for layer in (1, 3):
        got = source.leaves_many(roots[:8], stop_layer=layer, bounds=box)
        for r in roots[:8].tolist():
            np.testing.assert_array_equal(got[r], source.leaves(r, stop_layer=layer, bounds=box))
    unknown = int(source.meta.layout.encode(8, 0, 0, 0, 123_456))
    from crantseg_dask.errors import UnknownIDError

    with pytest.raises(UnknownIDError, match=str(unknown)):
        source.leaves_many(np.r_[roots[:2], unknown].astype(np.uint64))
