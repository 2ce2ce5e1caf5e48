import pytest

from crantseg_dask.sources import open_source
from crantseg_dask.testing.conformance import SourceConformance


class TestLocalSource(SourceConformance):
    @pytest.fixture
    def source(self, local_spec):
        return open_source(local_spec)
