"""Issue 18: the embedded world is dense, like a real watershed, and cannot silently become sparse.

Figures are computed by brute force over the whole tiny volume (and checked against
``dataset.stats``, which the benchmarks print)."""
from collections import Counter

import numpy as np
import pytest

from crantseg_dask.dataset.generate import make_dataset
from crantseg_dask.dataset.layout import PRESETS, load_json
from crantseg_dask.dataset.stats import block_bits, dataset_stats
from crantseg_dask.dataset.tissue import tissue_box


@pytest.fixture(scope="module")
def tissue(tiny_path, truth):
    meta = load_json(tiny_path / "dataset.json")
    off, size = truth.bounds(0)
    return tissue_box(truth.params, np.asarray(meta["tissue"]["phases"]), list(zip(off, off + size)))


def test_tissue_is_labelled_and_outside_is_zero(truth, tissue):
    vol = truth.volume(0)
    assert 0.6 < tissue.mean() < 0.95, "a tissue outline inside the volume"
    assert (vol[tissue] != 0).mean() == 1.0, "every tissue voxel belongs to a supervoxel"
    outside = vol[~tissue]
    assert (outside == 0).mean() > 0.97, "outside the tissue is 0 (but for neurons reaching out)"


def test_chunks_cut_through_many_supervoxels(truth):
    vol = truth.volume(0)
    g = np.array(truth.params.graph_chunk)
    per_chunk = []
    for x in range(0, vol.shape[0], g[0]):
        for y in range(0, vol.shape[1], g[1]):
            for z in range(0, vol.shape[2], g[2]):
                u = np.unique(vol[x:x + g[0], y:y + g[1], z:z + g[2]])
                per_chunk.append(int((u != 0).sum()))
    assert np.median(per_chunk) >= 40, np.median(per_chunk)
    # the same figure from the supervoxel IDs (what dataset_stats reports)
    _, by_id = np.unique(truth.layout.chunk_id(truth.supervoxels), return_counts=True)
    assert sorted(by_id.tolist()) == sorted(c for c in per_chunk if c)


def test_supervoxel_sizes_span_orders_of_magnitude(truth):
    _, counts = np.unique(truth.volume(0), return_counts=True)
    sizes = counts[1:]
    assert np.median(sizes) >= 100 and sizes.max() >= 10_000 and (sizes >= 1000).mean() > 0.1


def test_blocks_need_several_bits(tiny_path):
    s = dataset_stats(tiny_path, sample=1000)
    assert s["mean_bits_per_block"] >= 1.5, s
    assert s["labelled_share_of_tissue"] == 1.0 and s["labels_per_graph_chunk_median"] >= 40
    # block_bits reads the compressed_segmentation block headers: a two-label block needs 1 bit
    import compressed_segmentation as cseg

    a = np.zeros((8, 8, 8), np.uint64)
    a[:4] = 7
    assert block_bits(cseg.compress(a, order="F"), a.shape).tolist() == [1]
    assert block_bits(cseg.compress(np.arange(512, dtype=np.uint64).reshape(8, 8, 8), order="F"),
                      (8, 8, 8)).tolist() == [16]


def test_most_roots_are_small_fragments_and_a_few_are_large(truth):
    size = Counter(truth.sv_neuron.tolist())
    n_neurons = truth.params.n_neurons
    others = [c for k, c in size.items() if k >= n_neurons]
    assert len(others) > 5 * n_neurons, "many unproofread objects besides the neurons"
    assert np.median(others) <= 20 and max(others) >= 500, "mostly small, a few large (glia-like)"


def test_merges_of_fragments_into_neurons_are_the_most_common_edit(tiny_path, truth):
    n_nf = load_json(tiny_path / "dataset.json")["counts"]["neuron_fragments"]
    n_neurons = truth.params.n_neurons
    frag_neuron = dict(zip(truth.sv_fragment.tolist(), truth.sv_neuron.tolist()))
    kinds = Counter()
    for op in truth.operations:
        if op["kind"] == "split":
            kinds["split"] += 1
            continue
        lone = [min(truth.objects[r][0]) for r in op["old_roots"]
                if len(truth.objects[r][0]) == 1 and min(truth.objects[r][0]) >= n_nf]
        rest = {frag_neuron[f] for r in op["old_roots"] for f in truth.objects[r][0]}
        if lone and frag_neuron[lone[0]] < n_neurons and any(
                frag_neuron[f] == frag_neuron[lone[0]] and f < n_nf
                for r in op["old_roots"] for f in truth.objects[r][0]):
            kinds["absorb"] += 1  # a lone tissue fragment joins an object holding its neuron
        elif len(rest) == 1:
            kinds["merge of one true object"] += 1
        else:
            kinds["other merge"] += 1
    assert kinds.most_common(1)[0][0] == "absorb", kinds


def test_the_sparse_world_stays_available(tmp_path):
    path = make_dataset(PRESETS["tiny"].with_(dense=False, size=(128, 128, 32)), tmp_path / "sparse")
    s = dataset_stats(path)
    assert s["labelled_share"] < 0.3 and s["labelled_share_of_tissue"] is None
