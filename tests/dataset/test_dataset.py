"""Invariants of the generated dataset, checked by brute force over the stored volume and log."""
import filecmp
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from crantseg_dask.dataset.generate import downsample_mode, make_dataset
from crantseg_dask.dataset.layout import PRESETS, DatasetParams, read_params
from crantseg_dask.errors import DatasetError
from crantseg_dask.testing.conformance import check_times


def test_volume_labels_are_exactly_the_supervoxels(truth):
    labels = np.unique(truth.volume(0))
    assert labels[0] == 0, "there is background"
    np.testing.assert_array_equal(labels[1:], truth.supervoxels)
    assert (truth.volume(0) == 0).any(), "outside the tissue the volume is 0 (density: test_density.py)"


def test_each_supervoxel_lies_in_one_graph_chunk_that_its_id_encodes(truth):
    vol = truth.volume(0)
    off, _ = truth.bounds(0)
    vox = np.argwhere(vol > 0)
    ids = vol[tuple(vox.T)]
    chunk = vox // np.array(truth.params.graph_chunk)  # chunks start at the voxel offset
    assert (truth.layout.layer(ids) == 1).all()
    np.testing.assert_array_equal(truth.layout.chunk_coords(ids), chunk)
    # each supervoxel's recorded anchor is one of its own voxels
    np.testing.assert_array_equal(truth.supervoxel_at(truth.sv_anchor), truth.supervoxels)


def test_neurons_are_elongated_touch_each_other_and_span_many_chunks(truth):
    layout = truth.layout
    spans = [len({tuple(c) for c in layout.chunk_coords(truth.leaves(r))}) for r in truth.all_roots.tolist()]
    assert max(spans) >= 50
    fa = truth.sv_neuron[np.searchsorted(truth.supervoxels, truth.contacts[:, 0])]
    fb = truth.sv_neuron[np.searchsorted(truth.supervoxels, truth.contacts[:, 1])]
    assert (fa != fb).sum() > 10, "neurons touch each other in places"
    assert any(len(truth.interface_voxels(r)) for r in truth.all_roots.tolist()), "some root touches itself"


def test_mips_are_majority_downsampled(truth):
    np.testing.assert_array_equal(truth.volume(1), downsample_mode(truth.volume(0)))
    np.testing.assert_array_equal(truth.volume(2), downsample_mode(truth.volume(1)))
    assert truth.resolution(1).tolist() == [32, 32, 42] and truth.resolution(2).tolist() == [64, 64, 42]


def test_every_supervoxel_has_exactly_one_root_at_any_time_after_ingest(truth):
    for t in check_times(truth)[1:]:
        objects = truth.epoch(t)
        owners = Counter(f for frags, _ in objects.values() for f in frags)
        assert set(owners) == set(truth.sv_fragment.tolist())
        assert max(owners.values()) == 1
        assert (truth.root_of(truth.supervoxels, t) != 0).all()
    before = check_times(truth)[0]
    assert (truth.root_of(truth.supervoxels, before) == 0).all()


def test_edit_log_is_a_history_of_merges_and_splits(truth):
    ops = truth.operations
    assert len(ops) >= 30
    kinds = Counter(o["kind"] for o in ops)
    assert kinds["merge"] >= 10 and kinds["split"] >= 3
    times = [o["ts_ms"] for o in ops]
    assert all(t % 1000 == 0 for t in times), "whole seconds"
    assert all(b - a >= 1000 for a, b in zip([truth.ingest_ms] + times, times)), "strictly increasing, >= 1 s apart"
    for o in ops:
        new = [n["root"] for n in o["new_roots"]]
        if o["kind"] == "merge":
            assert len(o["old_roots"]) >= 2 and len(new) == 1 and o["added_edges"]
        else:
            assert len(o["old_roots"]) == 1 and len(new) >= 2 and o["removed_edges"]
        for r in o["old_roots"]:
            assert truth.superseded_ms[r] == o["ts_ms"]
        for r in new:
            assert truth.created_ms[r] == o["ts_ms"]
            assert set(truth.predecessors(r)) == set(o["old_roots"])
        # the fragments are conserved by every operation
        before = set().union(*(truth.objects[r][0] for r in o["old_roots"]))
        after = set().union(*(truth.objects[r][0] for r in new))
        assert before == after
    # lineages several generations deep
    depth = {o["root"]: 0 for o in truth.edits["initial_objects"]}
    for o in ops:
        d = 1 + max(depth[r] for r in o["old_roots"])
        depth.update({n["root"]: d for n in o["new_roots"]})
    assert max(depth.values()) >= 4


def test_ids_are_never_reused(truth):
    roots = [o["root"] for o in truth.edits["initial_objects"]]
    roots += [n["root"] for o in truth.operations for n in o["new_roots"]]
    assert len(roots) == len(set(roots))
    assert (truth.layout.layer(np.array(roots, np.uint64)) == 8).all()


def test_materializations_fall_between_edits(truth):
    times = [truth.ingest_ms] + [o["ts_ms"] for o in truth.operations]
    mats = truth.edits["materializations"]
    assert [m["version"] for m in mats] == list(range(1, len(mats) + 1))
    assert len(mats) >= 3
    for m in mats:
        assert m["ts_ms"] not in times
        assert times[0] < m["ts_ms"] < times[-1]
    assert mats[-1]["ts_ms"] < times[-2], "the last edits come after the last materialization"


def test_same_seed_gives_byte_identical_files(tiny_path, tmp_path):
    again = make_dataset(read_params(tiny_path), tmp_path / "again")
    files = sorted(p.relative_to(tiny_path) for p in Path(tiny_path).rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    match, mismatch, errors = filecmp.cmpfiles(tiny_path, again, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors and len(match) == len(files)


def test_another_seed_gives_another_world(tiny_path, tmp_path):
    other = make_dataset(PRESETS["tiny"].with_(seed=7, size=(128, 128, 32)), tmp_path / "other")
    assert (other / "history" / "supervoxels.npy").read_bytes() != (tiny_path / "history" / "supervoxels.npy").read_bytes()


def test_params_reject_nonsense():
    with pytest.raises(DatasetError, match="must divide"):
        DatasetParams(graph_chunk=(64, 64, 16), storage_chunk=(48, 48, 16))
    with pytest.raises(DatasetError, match="positive"):
        DatasetParams(size=(0, 10, 10))


def test_refuses_to_overwrite(tiny_path):
    with pytest.raises(FileExistsError, match="overwrite"):
        make_dataset(read_params(tiny_path), tiny_path)


def test_read_params_names_a_directory_that_is_no_dataset(tmp_path):
    with pytest.raises(DatasetError, match="make-dataset"):
        read_params(tmp_path)


SMALL = PRESETS["tiny"].with_(seed=11, size=(64, 64, 32))


def test_overwrite_never_deletes_a_directory_that_is_not_a_dataset(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a dataset directory"):
        make_dataset(SMALL, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_overwrite_keeps_the_old_dataset_until_the_new_one_is_complete(tmp_path, monkeypatch):
    from crantseg_dask.dataset import generate

    out = make_dataset(SMALL, tmp_path / "ds")
    before = (out / "dataset.json").read_text()

    def broken(*a, **k):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(generate, "simulate_edits", broken)
    with pytest.raises(RuntimeError, match="mid-build"):
        make_dataset(SMALL.with_(seed=12), out, overwrite=True)
    assert (out / "dataset.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"], "no partial build is left behind"
    monkeypatch.undo()
    make_dataset(SMALL.with_(seed=12), out, overwrite=True)
    assert read_params(out).seed == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
