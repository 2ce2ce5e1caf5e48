"""pytest plugin: the tiny embedded dataset, its truth, and source specs for it.

``local_spec`` reads the dataset directly; ``cave_spec`` reaches it through the local CAVE server
(real caveclient and cloud-volume on 127.0.0.1, HOME in a temporary directory); ``spec`` is
parametrised over both.

Load it from a conftest with ``pytest_plugins = ["crantseg_dask.testing.fixtures"]``.
"""
from __future__ import annotations

import pytest

from ..dataset.generate import make_dataset
from ..dataset.layout import PRESETS
from ..dataset.truth import Truth
from ..sources.base import SourceSpec
from .server import cave_home, cave_server, cave_spec, faulty_layer_server  # noqa: F401  (fixtures: the local CAVE server)


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    """Directory of a freshly generated ``tiny`` dataset (about a second)."""
    return make_dataset(PRESETS["tiny"], tmp_path_factory.mktemp("datasets") / "tiny")


@pytest.fixture(scope="session")
def tiny_sharded_path(tiny_path, tmp_path_factory):
    """The ``tiny`` dataset written with every mip sharded: what ``make_dataset(..., sharded=True)``
    writes (it builds the dataset, then ``shard_layer``), here from a copy of ``tiny_path``."""
    import shutil

    from ..dataset.sharded import shard_layer

    out = tmp_path_factory.mktemp("datasets") / "tiny-sharded"
    shutil.copytree(tiny_path, out)
    shard_layer(out / "segmentation")
    return out


@pytest.fixture(scope="session")
def truth(tiny_path) -> Truth:
    """Brute-force ground truth of the tiny dataset."""
    return Truth(tiny_path)


@pytest.fixture(scope="session")
def local_spec(tiny_path) -> SourceSpec:
    """``SourceSpec`` of the tiny dataset through the ``local`` source (pass it as ``dataset=``)."""
    return SourceSpec(kind="local", name="tiny", path=str(tiny_path))


@pytest.fixture(params=["local", "cave"])
def spec(request, local_spec):
    """The tiny dataset through each source in turn: pass as ``dataset=spec``."""
    if request.param == "local":
        return local_spec
    return request.getfixturevalue("cave_spec")
