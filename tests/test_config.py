import os

import pytest

from crantseg_dask.sources.resolve import cave_dataset, resolve_dataset, resolve_timestamp
from crantseg_dask.errors import DatasetError, InvalidTimestampError
from crantseg_dask.sources import open_source


def test_crant_names_point_at_the_real_servers():
    latest, sandbox = resolve_dataset("latest"), resolve_dataset("sandbox")
    assert (latest.kind, latest.server, latest.datastack) == ("cave", "https://proofreading.zetta.ai", "kronauer_ant")
    assert sandbox.datastack == "kronauer_ant_sandbox" and sandbox.server == latest.server


def test_any_cave_deployment_is_a_server_plus_datastack():
    spec = cave_dataset("http://127.0.0.1:9000/", "my_stack")
    assert (spec.kind, spec.server, spec.datastack) == ("cave", "http://127.0.0.1:9000", "my_stack")
    assert resolve_dataset(spec) is spec


def test_dataset_directories(tiny_path):
    for value in (tiny_path, str(tiny_path)):
        spec = resolve_dataset(value)
        assert spec.kind == "local" and spec.path == str(tiny_path)


def test_unknown_dataset_names_the_value_and_the_choices(tmp_path):
    with pytest.raises(DatasetError, match='"nonsense".*latest.*sandbox.*local'):
        resolve_dataset("nonsense")
    with pytest.raises(DatasetError, match="name or a path"):
        resolve_dataset(42)


def test_default_dataset_comes_from_the_environment(monkeypatch, tiny_path):
    monkeypatch.setenv("CRANTSEG_DATASET", str(tiny_path))
    assert resolve_dataset(None).path == str(tiny_path)
    monkeypatch.setenv("CRANTSEG_DATASET", "sandbox")
    assert resolve_dataset(None).datastack == "kronauer_ant_sandbox"


def test_presets_are_generated_on_first_use_then_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("CRANTSEG_DATA_DIR", str(tmp_path))
    first = resolve_dataset("tiny")
    assert first.kind == "local" and first.path.startswith(str(tmp_path))
    stamp = os.stat(os.path.join(first.path, "dataset.json")).st_mtime_ns
    monkeypatch.setenv("CRANTSEG_LOCAL_PRESET", "tiny")
    again = resolve_dataset("local")
    assert again.path == first.path
    assert os.stat(os.path.join(again.path, "dataset.json")).st_mtime_ns == stamp


def test_mat_timestamps_resolve_against_the_dataset(local_spec, truth):
    source = open_source(local_spec)
    assert resolve_timestamp("mat", source) == truth.materialization()
    assert resolve_timestamp("mat_latest", source) == truth.materialization()
    assert resolve_timestamp("mat_2", source) == truth.materialization(2)
    with pytest.raises(InvalidTimestampError, match="version 99 does not exist"):
        resolve_timestamp("mat_99", source)


def test_spec_repr_hides_the_token():
    spec = cave_dataset("http://127.0.0.1:9000", "stack", token="0123456789abcdef0123456789abcdef")
    assert "0123456789abcdef" not in repr(spec) and "***" in repr(spec)
    assert spec.option("token") == "0123456789abcdef0123456789abcdef"


def test_concurrent_first_uses_generate_a_preset_once(monkeypatch, tmp_path):
    import threading
    import time

    from crantseg_dask.sources.resolve import local_dataset_path
    from crantseg_dask.dataset import generate

    monkeypatch.setenv("CRANTSEG_DATA_DIR", str(tmp_path))
    builds, real = [], generate.make_dataset

    def slow_make_dataset(*a, **k):
        builds.append(1)
        time.sleep(0.3)  # a second caller arrives while the first is still building
        return real(*a, **k)

    monkeypatch.setattr(generate, "make_dataset", slow_make_dataset)
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(local_dataset_path("tiny"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(set(paths)) == 1 and len(paths) == 3
