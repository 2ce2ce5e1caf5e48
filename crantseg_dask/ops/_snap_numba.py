"""The compiled snap search (numba): one row at a time, straight from compressed_segmentation words.

For each row ``search`` takes the search box of each pass radius (the ball's voxel box plus the
1-voxel erosion margin, clipped to the volume), decodes the labels of the box from the encoded
words of the storage chunks it touches (block header -> bit width, table offset, values offset;
every read bounds-checked against its chunk's end; after its header's checks, a block, then a
block line, with no voxel centre in the ball or next to one is skipped unread (tested with each
axis's smallest squared offset, so a corrupt voxel index out of the ball's reach goes unreported),
and so is a block of at most ``_SKIP_BITS`` bits whose table holds none of the target's leaves),
marks the voxels whose supervoxel is one of the row's own target's sorted leaves (remembered per
block table entry, or per last label for blocks wider than 8 bits) in a box mask padded with
background, lists those within the radius with their squared distance (summed from per-axis
tables of squared offsets, x + y first, then z), and visits only that list for the nearest voxel
centre (anisotropic Euclidean distance; the first in x, y, z order among ties), eroded (all 6
face neighbours target voxels; outside the volume is background) or not, and with ``fallback``
the nearest uneroded voxel when erosion leaves none. A row settled in a smaller pass radius is
settled exactly (every voxel as near lies inside that ball); only the others read the next box.

Everything per row runs in compiled code at a few ns per box voxel, against ~100-200 ns for the
numpy pipeline it replaces on compressed_segmentation (``_snap_gather``); other encodings keep
that pipeline (``_snap_kernel._target_voxels``). numba is imported on first use (not by
``import crantseg_dask``) and compiled with ``cache=True`` where the cache directory is writable,
without the cache otherwise.
"""
from __future__ import annotations

import threading

import numpy as np

from .._numba import jit as _jit
from ..sources import _cseg, _partial

__all__ = ["search", "search_words", "warm_up", "ERRORS"]

#: problem per error code the compiled search reports (``err[1]``), for ``_cseg.CsegError``
ERRORS = {1: "a block header has a bad bit width or a table outside the chunk (truncated or corrupt)",
          2: "a block's values lie outside the chunk (truncated or corrupt)",
          3: "a voxel's table index lies outside the chunk (truncated or corrupt)"}

#: blocks of at most this many bits (2**bits table entries read) are first tested as a whole: none
#: of the target's leaves in the table, no voxel of the block is read (most blocks of a sparse world)
_SKIP_BITS = 4
_compiled = None
_compile_lock = threading.Lock()


def _kernel():
    """The compiled ``_search_rows`` (compiled, or loaded from the cache, on first use; the helper
    it calls, ``_in_leaves``, is compiled first and replaces the Python function)."""
    global _compiled, _in_leaves
    with _compile_lock:
        if _compiled is None:
            _in_leaves = _jit(_in_leaves)
            _compiled = _jit(_search_rows)
        return _compiled


def _in_leaves(leaves, l0, l1, lab):  # pragma: no cover - compiled by numba
    """1 if ``lab`` is one of the sorted ``leaves[l0:l1]`` (binary search), else 0 (uint8)."""
    lo_i, hi_i = l0, l1
    while lo_i < hi_i:
        mid = (lo_i + hi_i) >> 1
        if leaves[mid] < lab:
            lo_i = mid + 1
        else:
            hi_i = mid
    return np.uint8(1) if lo_i < l1 and leaves[lo_i] == lab else np.uint8(0)


def _search_rows(words, c_start, c_end, c_origin, c_shape, c_grid, row_ptr, row_chunk, block,
                 locs, res, radii, box_lo, box_hi, leaves, leaves_ptr, row_target, mode,
                 out_vox, out_d2, out_code, out_label, err):  # pragma: no cover - compiled by numba
    """Compiled body of ``search_words`` (see there); ``mode`` 0 no erosion, 1 erode, 2 fallback.
    Returns after the first corrupt read with ``err`` = (chunk index, error code)."""
    n_rows = locs.shape[0]
    n_pass = radii.shape[0]
    bx, by, bz = block[0], block[1], block[2]
    block_voxels = bx * by * bz
    big = 0
    for k in range(n_rows):
        n = (box_hi[n_pass - 1, k, 0] - box_lo[n_pass - 1, k, 0] + 3) * \
            (box_hi[n_pass - 1, k, 1] - box_lo[n_pass - 1, k, 1] + 3) * \
            (box_hi[n_pass - 1, k, 2] - box_lo[n_pass - 1, k, 2] + 3)
        if n > big:
            big = n
    mask = np.zeros(max(big, 1), dtype=np.uint8)  # the box with a zero (background) 1-voxel pad
    found = np.zeros(max(big, 1), dtype=np.int64)  # the padded box indices of the target voxels in the ball
    found_d2 = np.zeros(max(big, 1), dtype=np.float64)  # their squared distances
    found_lab = np.zeros(max(big, 1), dtype=np.uint64)  # their supervoxels
    tab_len = 1
    for ri in range(n_pass):
        for k in range(n_rows):
            for a in range(3):
                tab_len = max(tab_len, box_hi[ri, k, a] - box_lo[ri, k, a] + 1)
    dx2 = np.zeros(tab_len, dtype=np.float64)  # per box x (y, z): squared offset of the voxel centre
    dy2 = np.zeros(tab_len, dtype=np.float64)
    dz2 = np.zeros(tab_len, dtype=np.float64)
    memo_gen = np.zeros(256, dtype=np.int64)
    memo_hit = np.zeros(256, dtype=np.uint8)
    memo_lab = np.zeros(256, dtype=np.uint64)
    gen = 0
    sh32 = np.uint64(32)
    for k in range(n_rows):
        t = row_target[k]
        l0, l1 = leaves_ptr[t], leaves_ptr[t + 1]
        have_last = False
        last_lab = np.uint64(0)
        last_hit = np.uint8(0)
        for ri in range(n_pass):
            final = ri == n_pass - 1
            x0, y0, z0 = box_lo[ri, k, 0], box_lo[ri, k, 1], box_lo[ri, k, 2]
            x1, y1, z1 = box_hi[ri, k, 0], box_hi[ri, k, 1], box_hi[ri, k, 2]
            if x1 < x0 or y1 < y0 or z1 < z0:
                continue  # a ball wholly outside the volume
            ex, ey, ez = x1 - x0 + 1, y1 - y0 + 1, z1 - z0 + 1
            pz = ez + 2
            syz = (ey + 2) * pz  # padded strides: m = (ix + 1) * syz + (iy + 1) * pz + iz + 1
            mask[:(ex + 2) * syz] = 0
            n_found = 0
            r2 = radii[ri] * radii[ri]
            p0, p1, p2 = locs[k, 0], locs[k, 1], locs[k, 2]
            for i in range(ex):
                d = (x0 + i + 0.5) * res[0] - p0
                dx2[i] = d * d
            for i in range(ey):
                d = (y0 + i + 0.5) * res[1] - p1
                dy2[i] = d * d
            for i in range(ez):
                d = (z0 + i + 0.5) * res[2] - p2
                dz2[i] = d * d
            xc, yc, zc = 0, 0, 0  # the box voxel whose centre is nearest per axis (each table's smallest)
            for i in range(1, ex):
                if dx2[i] < dx2[xc]:
                    xc = i
            for i in range(1, ey):
                if dy2[i] < dy2[yc]:
                    yc = i
            for i in range(1, ez):
                if dz2[i] < dz2[zc]:
                    zc = i
            # 1. the target voxels of the box, chunk by chunk, block by block
            for q in range(row_ptr[k], row_ptr[k + 1]):
                c = row_chunk[q]
                s, e = c_start[c], c_end[c]
                ox, oy, oz = c_origin[c, 0], c_origin[c, 1], c_origin[c, 2]
                ax, ay, az = max(x0, ox) - ox, max(y0, oy) - oy, max(z0, oz) - oz
                qx = min(x1, ox + c_shape[c, 0] - 1) - ox
                qy = min(y1, oy + c_shape[c, 1] - 1) - oy
                qz = min(z1, oz + c_shape[c, 2] - 1) - oz
                if qx < ax or qy < ay or qz < az:
                    continue
                gx, gy = c_grid[c, 0], c_grid[c, 1]
                n_blocks = gx * gy * c_grid[c, 2]
                for kz in range(az // bz, qz // bz + 1):
                    for ky in range(ay // by, qy // by + 1):
                        for kx in range(ax // bx, qx // bx + 1):
                            blk = kx + gx * (ky + gy * kz)
                            h0 = np.int64(words[s + 2 * blk])  # headers: inside the chunk (checked)
                            bits = h0 >> 24
                            table = h0 & 0xFFFFFF
                            if not (bits == 0 or bits == 1 or bits == 2 or bits == 4 or bits == 8
                                    or bits == 16 or bits == 32) or table < 2 * n_blocks or s + table + 1 >= e:
                                err[0], err[1] = c, 1
                                return
                            vbase = s + np.int64(words[s + 2 * blk + 1])
                            if bits > 0 and vbase + (((block_voxels - 1) * bits) >> 5) >= e:
                                err[0], err[1] = c, 2
                                return
                            # the block's box part grown by the 1-voxel erosion margin: no centre in
                            # the ball (the same sum as a voxel's distance, of each axis's smallest
                            # term), so no voxel of the block is in the ball or next to one: not read
                            cx, cy, cz = kx * bx, ky * by, kz * bz
                            u0 = max(max(ax, cx) + ox - x0 - 1, 0)
                            u1 = min(min(qx, cx + bx - 1) + ox - x0 + 1, ex - 1)
                            v0 = max(max(ay, cy) + oy - y0 - 1, 0)
                            v1 = min(min(qy, cy + by - 1) + oy - y0 + 1, ey - 1)
                            w0 = max(max(az, cz) + oz - z0 - 1, 0)
                            w1 = min(min(qz, cz + bz - 1) + oz - z0 + 1, ez - 1)
                            dxm = dx2[min(max(xc, u0), u1)]
                            if (dxm + dy2[min(max(yc, v0), v1)]) + dz2[min(max(zc, w0), w1)] > r2:
                                continue
                            vmask = (np.int64(1) << bits) - 1
                            gen += 1
                            if bits <= _SKIP_BITS:  # a block whose table holds none of the target's leaves is skipped
                                maybe = False
                                for idx in range(1 << bits):
                                    tpos = s + table + 2 * idx
                                    if tpos + 1 >= e:  # past the chunk: left to the voxels' checked reads
                                        maybe = True
                                        break
                                    lab = np.uint64(words[tpos]) | (np.uint64(words[tpos + 1]) << sh32)
                                    if have_last and lab == last_lab:
                                        hit = last_hit
                                    else:
                                        hit = _in_leaves(leaves, l0, l1, lab)
                                        have_last, last_lab, last_hit = True, lab, hit
                                    memo_gen[idx], memo_hit[idx], memo_lab[idx] = gen, hit, lab
                                    if hit:
                                        maybe = True
                                if not maybe:
                                    continue
                            for lz in range(max(az, cz), min(qz, cz + bz - 1) + 1):
                                for ly in range(max(ay, cy), min(qy, cy + by - 1) + 1):
                                    base_i = bx * ((ly - cy) + by * (lz - cz)) - cx
                                    iy, iz = oy + ly - y0, oz + lz - z0
                                    m_yz = (iy + 1) * pz + iz + 1
                                    dy2_l, dz2_l = dy2[iy], dz2[iz]
                                    if (dxm + dy2[min(max(yc, iy - 1), iy + 1, ey - 1)]) + \
                                            dz2[min(max(zc, iz - 1), iz + 1, ez - 1)] > r2:
                                        continue  # the same test for the line (and its 4 neighbour lines)
                                    for lx in range(max(ax, cx), min(qx, cx + bx - 1) + 1):
                                        idx = np.int64(0)
                                        if bits > 0:
                                            bitpos = (base_i + lx) * bits
                                            w = np.int64(words[vbase + (bitpos >> 5)])
                                            idx = (w >> (bitpos & 31)) & vmask
                                        if bits <= 8 and memo_gen[idx] == gen:
                                            hit = memo_hit[idx]
                                            lab = memo_lab[idx]
                                        else:
                                            tpos = s + table + 2 * idx
                                            if tpos + 1 >= e:
                                                err[0], err[1] = c, 3
                                                return
                                            lab = np.uint64(words[tpos]) | (np.uint64(words[tpos + 1]) << sh32)
                                            if have_last and lab == last_lab:
                                                hit = last_hit
                                            else:
                                                hit = _in_leaves(leaves, l0, l1, lab)
                                                have_last, last_lab, last_hit = True, lab, hit
                                            if bits <= 8:
                                                memo_gen[idx], memo_hit[idx], memo_lab[idx] = gen, hit, lab
                                        if hit:
                                            ix = ox + lx - x0
                                            m = (ix + 1) * syz + m_yz
                                            mask[m] = 1
                                            dd = (dx2[ix] + dy2_l) + dz2_l
                                            if dd <= r2:
                                                found[n_found] = m
                                                found_d2[n_found] = dd
                                                found_lab[n_found] = lab
                                                n_found += 1
            # 2. the nearest centre within the radius, x, y, z order (ties: the first)
            best_e, best_u = np.inf, np.inf
            at_e, at_u = -1, -1  # found index of the best
            m_e, m_u = -1, -1  # its padded box index
            erode = mode != 0
            want_u = mode == 0 or (mode == 2 and final)
            # only the target voxels found within the radius are visited; the padded box index m is
            # x, y, z order, so the smallest (distance, m) is the nearest, first in that order among ties
            for j in range(n_found):
                m = found[j]
                dd = found_d2[j]
                if want_u and (dd < best_u or (dd == best_u and m < m_u)):
                    best_u, at_u, m_u = dd, j, m
                if erode and (dd < best_e or (dd == best_e and m < m_e)):  # the 6 face neighbours (pad: background)
                    if (mask[m - syz] and mask[m + syz] and mask[m - pz] and mask[m + pz]
                            and mask[m - 1] and mask[m + 1]):
                        best_e, at_e, m_e = dd, j, m
            code, at, dd = -1, -1, np.inf
            if erode and at_e >= 0:
                code, at, dd = 1, at_e, best_e
            elif mode == 0 and at_u >= 0:
                code, at, dd = 1, at_u, best_u
            elif mode == 2 and final and at_u >= 0:
                code, at, dd = 5, at_u, best_u
            if code >= 0:
                m = found[at]
                out_code[k] = code
                out_d2[k] = dd
                out_vox[k, 0] = x0 + m // syz - 1
                out_vox[k, 1] = y0 + (m // pz) % (ey + 2) - 1
                out_vox[k, 2] = z0 + m % pz - 1
                out_label[k] = found_lab[at]
                break


def search_words(words, c_start, c_end, c_origin, c_shape, c_grid, row_ptr, row_chunk, block, locs, res,
                 radii, box_lo, box_hi, leaves, leaves_ptr, row_target, erode):
    """Snap K rows from the concatenated words of the chunks they touch (plain numpy in and out).

    Parameters
    ----------
    words : numpy.ndarray (W,) uint32
        The encoded chunks back to back (``_snap_gather._joined``).
    c_start, c_end : numpy.ndarray (C,) int64
        Per chunk: index in ``words`` of its channel start (its word 1) and one past its last word.
    c_origin, c_shape, c_grid : numpy.ndarray (C, 3) int64
        Per chunk: absolute first voxel, shape (clipped at the volume's edge), block grid.
    row_ptr, row_chunk : numpy.ndarray int64
        Row k's chunks are ``row_chunk[row_ptr[k]:row_ptr[k + 1]]`` (indices into the chunks; a
        missing chunk, background, is simply not listed).
    block : numpy.ndarray (3,) int64
        The compressed_segmentation block size.
    locs : numpy.ndarray (K, 3) float64
        Row locations in nm.
    res : numpy.ndarray (3,) float64
        Voxel size in nm.
    radii : numpy.ndarray (R,) float64
        Pass radii, growing; the last is the search radius.
    box_lo, box_hi : numpy.ndarray (R, K, 3) int64
        Each pass's inclusive search box per row (empty when hi < lo on some axis).
    leaves, leaves_ptr : numpy.ndarray
        Target ``t``'s sorted supervoxels are ``leaves[leaves_ptr[t]:leaves_ptr[t + 1]]``.
    row_target : numpy.ndarray (K,) int64
        Each row's target index.
    erode : bool or "fallback"

    Returns
    -------
    vox : numpy.ndarray (K, 3) int64
        The voxel snapped to (valid where ``code >= 0``).
    d2 : numpy.ndarray (K,) float64
        Squared distance from the location to its centre.
    code : numpy.ndarray (K,) int8
        1 (snapped), 5 (snapped_uneroded) or -1 (nothing within the radius).
    label : numpy.ndarray (K,) uint64
        The supervoxel at ``vox``.

    Raises
    ------
    _cseg.CsegError
        A chunk's bytes are corrupt (``chunk`` = its index).
    """
    n = len(locs)
    out_vox = np.zeros((n, 3), np.int64)
    out_d2 = np.full(n, np.inf)
    out_code = np.full(n, -1, np.int8)
    out_label = np.zeros(n, np.uint64)
    err = np.full(2, -1, np.int64)
    mode = 2 if erode == "fallback" else int(bool(erode))
    if n:
        i64 = np.int64
        _kernel()(words, c_start.astype(i64), c_end.astype(i64), c_origin.astype(i64), c_shape.astype(i64),
                  c_grid.astype(i64), row_ptr.astype(i64), row_chunk.astype(i64), np.asarray(block, i64),
                  np.ascontiguousarray(locs, np.float64), np.asarray(res, np.float64),
                  np.asarray(radii, np.float64), np.ascontiguousarray(box_lo, i64), np.ascontiguousarray(box_hi, i64),
                  np.asarray(leaves, np.uint64), leaves_ptr.astype(i64), row_target.astype(i64), mode,
                  out_vox, out_d2, out_code, out_label, err)
    if err[1] >= 0:
        raise _cseg.CsegError(int(err[0]), ERRORS[int(err[1])])
    return out_vox, out_d2, out_code, out_label


def warm_up() -> None:
    """Load (or compile) the compiled search now: one empty search of one row (a worker's one-time
    cost, ~1 s from numba's cache, so that a timed run does not pay it in its first task)."""
    i64 = np.int64
    none3 = np.zeros((0, 3), i64)
    search_words(np.zeros(1, np.uint32), np.zeros(0, i64), np.zeros(0, i64), none3, none3, none3,
                 np.zeros(2, i64), np.zeros(0, i64), np.full(3, 8, i64), np.zeros((1, 3)), np.ones(3),
                 np.ones(1), np.zeros((1, 1, 3), i64), np.zeros((1, 1, 3), i64), np.zeros(0, np.uint64),
                 np.zeros(2, i64), np.zeros(1, i64), True)


def boxes(locs_nm: np.ndarray, radius: float, res: np.ndarray, bounds) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive voxel boxes (lo, hi) (K, 3) of the balls of ``radius`` nm around ``locs_nm``, plus
    the 1-voxel erosion margin, clipped to the volume ``bounds`` (hi < lo where a ball misses it)."""
    lo = np.maximum(np.floor((locs_nm - radius) / res).astype(np.int64) - 1, bounds[0])
    hi = np.minimum(np.floor((locs_nm + radius) / res).astype(np.int64) + 1, bounds[1] - 1)
    return lo, hi


def search(source, locs_nm: np.ndarray, row_target: np.ndarray, leaves: list[np.ndarray], radii: list[float],
           erode, res: np.ndarray, bounds, encoded: dict):
    """``search_words`` for K rows of a compressed_segmentation source (``_partial._random_access_ok``):
    reads the chunks their final boxes touch (``encoded``: chunk key -> bytes, read from and
    filled; a missing chunk, None, is background). Returns (vox, d2, code, label) as
    ``search_words``; ``SourceError`` naming a corrupt chunk."""
    from ._snap_gather import _boxes, _joined

    meta = source.meta
    locs_nm = np.asarray(locs_nm, np.float64).reshape(-1, 3)
    n = len(locs_nm)
    vol_lo, cs = np.asarray(bounds[0], np.int64), np.array(meta.chunk_size[0], dtype=np.int64)
    block = np.array(_partial._block(meta, 0), dtype=np.int64)
    lo, hi = zip(*(boxes(locs_nm, r, res, bounds) for r in radii))
    box_lo, box_hi = np.stack(lo), np.stack(hi)
    reach = np.all(box_hi[-1] >= box_lo[-1], axis=1)
    rows = np.flatnonzero(reach)
    row_of, chunk = _boxes((box_lo[-1, rows] - vol_lo) // cs, (box_hi[-1, rows] - vol_lo) // cs)
    span = chunk.max(axis=0) + 1 if len(chunk) else np.ones(3, np.int64)
    lin = chunk[:, 0] + span[0] * (chunk[:, 1] + span[1] * chunk[:, 2])
    uniq, ci = np.unique(lin, return_inverse=True)
    chunks = np.stack([uniq % span[0], uniq // span[0] % span[1], uniq // (span[0] * span[1])], axis=1)
    keys = [tuple(int(v) for v in c) for c in chunks]
    if missing := [k for k in keys if k not in encoded]:
        encoded.update(source.read_encoded_many(missing, 0))  # fetched concurrently
    stored = np.array([encoded.get(k) is not None for k in keys], dtype=bool)
    keep = stored[ci]
    row_of, ci = rows[row_of[keep]], (np.cumsum(stored) - 1)[ci[keep]]
    chunks = chunks[stored]
    keys = [k for k, s in zip(keys, stored.tolist()) if s]
    row_ptr = np.searchsorted(row_of, np.arange(n + 1))  # row_of is sorted (rows box by box)
    shapes = _partial.chunk_shapes(meta, chunks, 0)
    if keys:
        try:
            words, start, ends, grid, _ = _joined([encoded[k] for k in keys], shapes, block)
        except _cseg.CsegError as e:
            raise _partial._source_error(source, keys[e.chunk], 0, e) from e
    else:
        words, start, ends, grid = np.zeros(1, np.uint32), *(np.zeros((0,) + s, np.int64) for s in ((), (), (3,)))
    n_leaves = np.array([len(x) for x in leaves], dtype=np.int64)
    flat = np.concatenate(leaves).astype(np.uint64, copy=False) if leaves else np.zeros(0, np.uint64)
    try:
        return search_words(words, start, ends, vol_lo + chunks * cs, shapes, grid, row_ptr, ci, block, locs_nm,
                            res, np.asarray(radii, np.float64), box_lo, box_hi, flat, np.r_[0, np.cumsum(n_leaves)],
                            np.asarray(row_target, np.int64), erode)
    except _cseg.CsegError as e:
        raise _partial._source_error(source, keys[e.chunk], 0, e) from e
