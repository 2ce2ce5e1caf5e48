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
