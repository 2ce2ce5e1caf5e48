"""The public surface: a sorted __all__, and crantpy's signatures as a drop-in."""
import inspect

import crantseg_dask
import crantseg_dask.graph

P = inspect.Parameter
KW = P.KEYWORD_ONLY
# crantpy.utils.cave.segmentation (and helpers): name -> [(parameter, default, keyword-only)]
CRANTPY = {
    "find_common_time": [("root_ids", P.empty, 0), ("progress", True, 0), ("dataset", None, 1)],
    "get_lineage_graph": [("x", P.empty, 0), ("progress", True, 0), ("dataset", None, 1)],
    "get_segmentation_cutout": [("bbox", P.empty, 0), ("root_ids", True, 0), ("mip", 0, 0),
                                ("coordinates", "nm", 0), ("dataset", None, 1)],
    "get_voxels": [("x", P.empty, 0), ("mip", 0, 0), ("bounds", None, 0), ("sv_map", False, 0), ("thin", False, 0),
                   ("use_l2_chunks", True, 0), ("threads", 1, 0), ("progress", True, 0), ("dataset", None, 1)],
    "is_latest_roots": [("x", P.empty, 0), ("timestamp", None, 0), ("dataset", None, 0), ("progress", True, 0),
                        ("batch_size", 100_000, 0), ("validate_ids", True, 0), ("use_http_session", True, 0)],
    "is_valid_root": [("x", P.empty, 0), ("dataset", None, 0), ("raise_exc", False, 0)],
    "is_valid_supervoxel": [("x", P.empty, 0), ("dataset", None, 0), ("raise_exc", False, 0)],
    "locs_to_segments": [("locs", P.empty, 0), ("timestamp", None, 0), ("coordinates", "nm", 0),
                         ("progress", True, 0), ("dataset", None, 1)],
    "locs_to_supervoxels": [("locs", P.empty, 0), ("mip", 0, 0), ("coordinates", "nm", 0), ("progress", True, 0),
                            ("dataset", None, 1)],
    "neuron_to_segments": [("x", P.empty, 0), ("short", False, 0), ("coordinates", "nm", 0), ("dataset", None, 1)],
    "roots_to_supervoxels": [("neurons", P.empty, 0), ("clear_cache", False, 0), ("progress", True, 0),
                             ("dataset", None, 1)],
    "snap_to_id": [("locs", P.empty, 0), ("id", P.empty, 0), ("snap_zero", False, 0), ("search_radius", 160, 0),
                   ("coordinates", "nm", 0), ("verbose", True, 0), ("dataset", None, 1)],
    "supervoxels_to_roots": [("ids", P.empty, 0), ("timestamp", "mat", 0), ("clear_cache", False, 0),
                             ("batch_size", 10000, 0), ("stop_layer", 8, 0), ("retry", True, 0), ("progress", True, 0),
                             ("dataset", None, 1)],
    "update_ids": [("x", P.empty, 0), ("supervoxels", None, 0), ("timestamp", None, 0), ("stop_layer", 2, 0),
                   ("progress", True, 0), ("dataset", None, 0), ("use_annotations", True, 0),
                   ("clear_cache", False, 0)],
}


def test_all_is_sorted_and_complete():
    assert crantseg_dask.__all__ == sorted(crantseg_dask.__all__)
    assert set(CRANTPY) <= set(crantseg_dask.__all__)
    assert set(crantseg_dask.__all__) - set(CRANTPY) == {"cave_dataset", "refresh"}
    assert crantseg_dask.graph.__all__ == sorted(crantseg_dask.graph.__all__)
    for name in crantseg_dask.graph.__all__:
        assert callable(getattr(crantseg_dask.graph, name))


def test_signatures_are_crantpys():
    for name, expected in CRANTPY.items():
        sig = inspect.signature(getattr(crantseg_dask, name))
        params = list(sig.parameters.values())
        positional = [p for p in params if p.kind != KW]
        keyword = {p.name: p for p in params if p.kind == KW}
        want_pos = [e for e in expected if not e[2]]
        assert [p.name for p in positional[: len(want_pos)]] == [e[0] for e in want_pos], name
        for p, (pname, default, _) in zip(positional, want_pos):
            assert p.default == default, f"{name}({pname}=...) default {p.default!r} != {default!r}"
        for pname, default, kw_only in expected:
            if kw_only:
                assert pname in keyword and keyword[pname].default == default, f"{name}: keyword {pname}"
        # anything we add beyond crantpy's arguments is optional
        extra = positional[len(want_pos):] + [p for p in keyword.values() if p.name not in {e[0] for e in expected}]
        assert all(p.default is not P.empty for p in extra), f"{name}: extra required arguments {extra}"
