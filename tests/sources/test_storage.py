"""Remote-style storage (issue 11): the layer over HTTP, sharded layers, faults, GET counts,
corrupt shards, the disk cache. Expected values come from ``truth`` (the unsharded tiny
dataset read by brute force), so a sharded read is also checked against the unsharded data."""
from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import requests

from crantseg_dask.dataset.generate import make_dataset
from crantseg_dask.dataset.layout import PRESETS
from crantseg_dask.errors import SourceError
from crantseg_dask.server.app import serve_in_thread
from crantseg_dask.server.state import Faults
from crantseg_dask.server.storage import STORAGE_PREFIX
from crantseg_dask.sources import _fetch
from crantseg_dask.sources._chunks import ChunkReader
from crantseg_dask.sources._shards import index_cache
from crantseg_dask.sources.base import SourceSpec
from crantseg_dask.sources.cave import CaveSource
from crantseg_dask.sources.local import LocalSource
from crantseg_dask.testing.conformance import SourceConformance, check_times
from crantseg_dask.testing.server import TEST_FAULTS, fast_spec


#: The fault-injected classes below fault the layer's reads only (chunks, shard indexes, info):
#: their graph checks ask the same clean CAVE routes as TestShardedOverHttp and TestCaveSource do,
#: so the default run keeps the checks that read the layer and ``-m slow`` runs the rest.
READS_THE_LAYER = ("test_meta", "test_supervoxels_at", "test_cutout")
#: The conformance checks that sweep every root, layer or box over the graph routes (the
#: costly ones over HTTP).
SWEEPS = frozenset({"test_leaves_of_every_root", "test_latest_roots", "test_node_chunks_follow_the_pcg_rule",
                    "test_l2_graph", "test_l2_ids_group_supervoxels_like_truth", "test_layer_nodes_like_truth",
                    "test_leaves_within_bounds_are_chunk_granular", "test_leaves_within_bounds_match_brute_force"})
GRAPH_ONLY = frozenset(n for n in dir(SourceConformance) if n.startswith("test_") and n not in READS_THE_LAYER)


@pytest.fixture(scope="module")
def sharded_server(tiny_sharded_path, cave_home):
    server = serve_in_thread(tiny_sharded_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def faulty_sharded_server(tiny_sharded_path, cave_home):
    # faults on the layer's reads only: the CAVE routes' faults are covered by test_cave_source.py
    server = serve_in_thread(tiny_sharded_path, faults=Faults(**TEST_FAULTS, paths=STORAGE_PREFIX))
    yield server
    server.stop()


class TestShardedLocal(SourceConformance):
    @pytest.fixture
    def source(self, tiny_sharded_path):
        return LocalSource(SourceSpec(kind="local", name="tiny-sharded", path=str(tiny_sharded_path)))


class TestShardedOverHttp(SourceConformance):
    """The sharded layer read over HTTP (range reads of shards). The server answers the graph
    routes from a ``LocalSource`` over the sharded dataset (TestShardedLocal runs the whole suite
    on that) and the client is TestCaveSource's: the default run keeps every check that reads
    the layer and the quick graph ones; the sweeps over every root / layer / box run with -m slow."""

    slow_tests = SWEEPS
    @pytest.fixture(scope="class")
    def source(self, sharded_server):
        src = CaveSource(fast_spec(sharded_server))
        assert src.data_dir == f"{sharded_server.address}/storage/segmentation"
        assert all(src.meta.sharded)
        return src


class TestShardedOverHttpUnderFaults(SourceConformance):
    """fail 0.2 / stall 0.05 on every read of the layer, chunk and shard-index reads included."""

    slow_tests = GRAPH_ONLY

    @pytest.fixture(scope="class")
    def source(self, faulty_sharded_server):
        return CaveSource(fast_spec(faulty_sharded_server))

    def test_faults_hit_storage_reads(self, source, faulty_sharded_server, truth):
        index_cache.clear()
        before = faulty_sharded_server.state.faults.injected
        vox = truth.sv_anchor
        np.testing.assert_array_equal(source.supervoxels_at(vox, 0), truth.supervoxel_at(vox, 0))
        assert faulty_sharded_server.state.faults.injected - before > 5


class TestHttpUnderFaults(SourceConformance):
    """Unsharded layer over HTTP with fail 0.2 / stall 0.05 on its reads."""

    slow_tests = GRAPH_ONLY

    @pytest.fixture(scope="class")
    def source(self, faulty_layer_server):
        return CaveSource(fast_spec(faulty_layer_server))


def test_faults_limited_to_a_path_prefix(faulty_sharded_server):
    faults = faulty_sharded_server.state.faults
    assert faults.applies_to(f"{STORAGE_PREFIX}/16_16_42/0.shard")
    assert not faults.applies_to("/segmentation/api/v1/table/x/node/1/root")
    assert Faults(fail_rate=0.2).applies_to("/anything") and not Faults().applies_to("/anything")


def test_faulty_answers_equal_clean_answers(faulty_sharded_server, sharded_server, truth):
    clean, faulty = CaveSource(fast_spec(sharded_server)), CaveSource(fast_spec(faulty_sharded_server))
    off, size = truth.bounds(0)
    vox = np.random.default_rng(3).integers(off, off + size, size=(3000, 3))
    np.testing.assert_array_equal(faulty.supervoxels_at(vox, 0), clean.supervoxels_at(vox, 0))
    box = np.array([off, off + size])
    np.testing.assert_array_equal(faulty.cutout(box, 0), clean.cutout(box, 0))


# -- GET counting ------------------------------------------------------------------------------
def test_sharded_lookup_costs_about_one_get_per_chunk(sharded_server, truth, monkeypatch):
    src = CaveSource(fast_spec(sharded_server))
    state = sharded_server.state
    off, size = truth.bounds(0)
    cs = np.array(src.meta.chunk_size[0])
    grid = -(-size // cs)
    index_cache.clear()
    rng = np.random.default_rng(5)
    # warm: one point in each chunk of the lower half of the volume (fetches its indexes)
    chunks = np.array([(i, j, k) for i in range(grid[0]) for j in range(grid[1]) for k in range(grid[2])])
    warm = chunks[chunks[:, 0] < grid[0] // 2]
    vox = off + warm * cs + rng.integers(0, 8, size=warm.shape)
    n0 = state.n_storage_reads
    np.testing.assert_array_equal(src.supervoxels_at(vox, 0), truth.supervoxel_at(vox, 0))
    cold = state.n_storage_reads - n0
    n_files = len({f for f, _, _ in src._reader._locator(0).locations(warm)})
    assert len(warm) // 4 <= cold <= len(warm) + 2 * n_files  # data (coalesced) + shard + minishard indexes
    # the same chunks again, other voxels: indexes cached, about one GET per chunk (or fewer, coalesced)
    pick = warm[rng.choice(len(warm), 40, replace=False)]
    vox = np.minimum(off + pick * cs + rng.integers(0, cs, size=pick.shape), off + size - 1)
    n0 = state.n_storage_reads
    np.testing.assert_array_equal(src.supervoxels_at(vox, 0), truth.supervoxel_at(vox, 0))
    assert 1 <= state.n_storage_reads - n0 <= len(pick)
    # without coalescing: exactly one GET per chunk, no index read
    monkeypatch.setenv("CRANTSEG_STORAGE_COALESCE_GAP", "-1")
    vox = np.minimum(off + pick * cs + rng.integers(0, cs, size=pick.shape), off + size - 1)
    n0 = state.n_storage_reads
    np.testing.assert_array_equal(src.supervoxels_at(vox, 0), truth.supervoxel_at(vox, 0))
    assert state.n_storage_reads - n0 == len(pick)


def test_reads_in_flight_are_bounded(tiny_path, cave_home, truth, monkeypatch):
    monkeypatch.setenv("CRANTSEG_STORAGE_MAX_IN_FLIGHT", "3")
    monkeypatch.setattr(_fetch, "_pool", None)
    with serve_in_thread(tiny_path, faults=Faults(latency_ms=20)) as server:
        src = CaveSource(fast_spec(server))
        _fetch.reset_stats()
        off, size = truth.bounds(0)
        vox = np.random.default_rng(1).integers(off, off + size, size=(2000, 3))
        np.testing.assert_array_equal(src.supervoxels_at(vox, 0), truth.supervoxel_at(vox, 0))
        assert 2 <= _fetch.stats["peak_in_flight"] <= 3
    monkeypatch.setattr(_fetch, "_pool", None)


# -- corrupt and truncated storage ---------------------------------------------------------------
@pytest.fixture
def sharded_copy(tiny_sharded_path, tmp_path):
    shutil.copytree(tiny_sharded_path, tmp_path / "ds")
    index_cache.clear()
    yield tmp_path / "ds"
    index_cache.clear()


def _reader(path):
    src = LocalSource(SourceSpec(kind="local", name="copy", path=str(path)))
    return src, src._reader


def test_truncated_shard_is_a_clear_error(sharded_copy):
    src, reader = _reader(sharded_copy)
    f, _, _ = reader._locator(0).locations([(0, 0, 0)])[0]
    shard = sharded_copy / "segmentation" / f
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(SourceError, match=rf"shard .*{f}.*(truncated|corrupt)"):
        reader.read((0, 0, 0), 0)
    shard.write_bytes(b"\x00" * 5)
    index_cache.clear()
    with pytest.raises(SourceError, match=rf"{f}.*truncated shard index"):
        reader.read((0, 0, 0), 0)


def test_corrupt_chunk_in_shard_is_a_clear_error(sharded_copy):
    src, reader = _reader(sharded_copy)
    f, s, e = reader._locator(0).locate([(1, 1, 1)])[0]
    shard = sharded_copy / "segmentation" / f
    data = bytearray(shard.read_bytes())
    data[s:e] = b"\x1f\x8b" + bytes(range(256)) * ((e - s) // 256) + b"\x00" * ((e - s - 2) % 256)
    shard.write_bytes(bytes(data[: len(data)]))
    with pytest.raises(SourceError, match=rf"{f}"):
        reader.read((1, 1, 1), 0)


def test_corrupt_chunk_bytes_never_reach_the_decoder(sharded_copy):
    """Valid gzip around garbage compressed_segmentation: SourceError naming the shard, no crash."""
    import gzip

    src, reader = _reader(sharded_copy)
    loc = reader._locator(0)
    f, s, e = loc.locate([(2, 1, 0)])[0]
    shard = sharded_copy / "segmentation" / f
    data = bytearray(shard.read_bytes())
    bad = gzip.compress(b"\x01\x00\x00\x00" + b"\xff" * 64, mtime=0)
    assert len(bad) <= e - s
    data[s:s + len(bad)] = bad
    data[s + len(bad):e] = b"\x00" * (e - s - len(bad))  # trailing zeros: gzip ignores none of it
    shard.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=rf"(decoding chunk|gzip).*{f}"):
        reader.read((2, 1, 0), 0)


def test_missing_shard_follows_fill_missing(sharded_copy):
    src, reader = _reader(sharded_copy)
    f, _, _ = reader._locator(0).locations([(1, 0, 1)])[0]
    (sharded_copy / "segmentation" / f).unlink()
    with pytest.raises(SourceError, match="missing"):
        reader.read((1, 0, 1), 0)
    filled = ChunkReader(reader.cloudpath, src.meta, fill_missing=True, scales=src.segmentation_info["scales"])
    assert filled.read((1, 0, 1), 0).shape == tuple(src.meta.chunk_size[0])
    assert not filled.read((1, 0, 1), 0).any()


# -- the writer ------------------------------------------------------------------------------------
def test_sharded_writer_is_deterministic_and_cloudvolume_reads_it(tiny_sharded_path, tmp_path, truth):
    from cloudvolume import CloudVolume

    again = make_dataset(PRESETS["tiny"], tmp_path / "again", sharded=True)

    def digest(root):
        h = hashlib.sha256()
        for p in sorted((root / "segmentation").rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(root)).encode() + p.read_bytes())
        return h.hexdigest()

    assert digest(again) == digest(tiny_sharded_path)
    assert not list((again / "segmentation").rglob("*.gz"))  # no unsharded chunk left behind
    for mip in range(truth.params.n_mips):
        cv = CloudVolume(f"file://{again / 'segmentation'}", mip=mip, progress=False)
        assert cv.meta.scale(mip)["sharding"]["@type"] == "neuroglancer_uint64_sharded_v1"
        np.testing.assert_array_equal(np.asarray(cv[:, :, :])[..., 0], truth.volume(mip))


# -- the storage route -----------------------------------------------------------------------------
def test_storage_route_answers_like_a_bucket(sharded_server, cave_server, tiny_sharded_path, tiny_path):
    base = f"{sharded_server.address}/storage/segmentation"
    auth = {"Authorization": f"Bearer {sharded_server.token}"}
    shard = sorted((tiny_sharded_path / "segmentation" / "16_16_42").iterdir())[0]
    whole = shard.read_bytes()
    url = f"{base}/16_16_42/{shard.name}"
    assert requests.get(url).status_code == 401
    r = requests.get(url, headers={**auth, "Range": "bytes=3-10"})
    assert r.status_code == 206 and r.content == whole[3:11]
    assert r.headers["Content-Range"] == f"bytes 3-10/{len(whole)}"
    assert requests.get(url, headers={**auth, "Range": "bytes=-4"}).content == whole[-4:]
    assert requests.get(url, headers={**auth, "Range": f"bytes={len(whole)}-"}).status_code == 416
    assert requests.get(url, auth=("token", sharded_server.token)).content == whole  # cloud-files' Basic auth
    assert requests.get(url, auth=("token", "0" * 32)).status_code == 401
    missing = requests.get(f"{base}/16_16_42/nothing.shard", headers=auth)
    assert missing.status_code == 404 and set(missing.json()) == {"code", "message", "timestamp", "duration"}
    assert "nothing.shard" in missing.json()["message"]
    assert requests.get(f"{base}/../dataset.json", headers=auth).status_code in (400, 404)
    assert requests.get(f"{base}/16_16_42/a/b/c/d", headers=auth).status_code == 404  # not a key
    head = requests.head(url, headers=auth)
    assert head.status_code == 200 and head.content == b"" and head.headers["Content-Length"] == str(len(whole))
    assert requests.post(url, headers=auth, data=b"x").status_code == 405
    assert requests.get(url, cookies={"middle_auth_token": sharded_server.token}).content == whole
    assert requests.get(url, cookies={"middle_auth_token": "0" * 32}).status_code == 401
    # an unsharded chunk stored gzipped is served with Content-Encoding: gzip (requests undoes it)
    gz = next((tiny_path / "segmentation" / "16_16_42").glob("*.gz"))
    r = requests.get(f"{cave_server.address}/storage/segmentation/16_16_42/{gz.name[:-3]}",
                     headers={"Authorization": f"Bearer {cave_server.token}"})
    assert r.headers["Content-Encoding"] == "gzip"
    import gzip as _gzip

    assert r.content == _gzip.decompress(gz.read_bytes())


def test_file_storage_flag(tiny_path, cave_home, truth):
    with serve_in_thread(tiny_path, storage="file") as server:
        src = CaveSource(fast_spec(server))
        assert src.data_dir == f"file://{tiny_path / 'segmentation'}"
        vox = truth.sv_anchor[:50]
        np.testing.assert_array_equal(src.supervoxels_at(vox, 0), truth.supervoxel_at(vox, 0))


# -- the disk cache --------------------------------------------------------------------------------
def test_disk_cache_serves_repeated_reads(sharded_server, truth, tmp_path, monkeypatch):
    monkeypatch.setenv("CRANTSEG_STORAGE_DISK_CACHE", str(tmp_path / "cache"))
    src = CaveSource(fast_spec(sharded_server))
    off, size = truth.bounds(0)
    vox = np.random.default_rng(9).integers(off, off + size, size=(500, 3))
    want = truth.supervoxel_at(vox, 0)
    np.testing.assert_array_equal(src.supervoxels_at(vox, 0), want)
    assert (tmp_path / "cache").is_dir()
    n0 = sharded_server.state.n_storage_reads
    np.testing.assert_array_equal(src.supervoxels_at(vox, 0), want)
    assert sharded_server.state.n_storage_reads == n0  # every chunk came from the disk cache
    t = check_times(truth)[-1]
    assert src.roots(want[:5], t).shape == (5,)


# -- the HTTP store's connections and answers ------------------------------------------------------
def _http_store(server, token=None):
    from crantseg_dask.sources._http import RetryPolicy

    return _fetch.open_store(f"{server.address}{STORAGE_PREFIX}", policy=RetryPolicy(retries=2, backoff=0.001),
                             token=server.token if token is None else token,
                             token_host=server.address.split("//")[1])


def test_http_store_reopens_a_connection_the_server_closed(tiny_path, cave_home):
    """A kept-alive connection closed by the server while idle is reopened at once: same bytes as
    the file, no retry counted."""
    from crantseg_dask.server.state import ServedDataset

    state = ServedDataset(tiny_path)
    state.limits = {"header_timeout": 0.3}  # the server closes connections idle this long
    chunk = next((tiny_path / "segmentation" / "16_16_42").glob("*.gz"))
    import gzip as _gzip
    import time as _time

    want = _gzip.decompress(chunk.read_bytes())
    with serve_in_thread(state) as server:
        store = _http_store(server)
        key = f"16_16_42/{chunk.name[:-3]}"
        assert store.get(key) == want
        _fetch.reset_stats()
        _time.sleep(1.0)
        assert store.get(key) == want
        assert _fetch.stats["retries"] == 0 and server.state.n_storage_reads == 2


def test_http_store_errors_name_the_url(sharded_server, tiny_sharded_path):
    from crantseg_dask.errors import AuthError

    shard = sorted((tiny_sharded_path / "segmentation" / "16_16_42").iterdir())[0]
    key = f"16_16_42/{shard.name}"
    assert _http_store(sharded_server).get(key, 0, 16) == shard.read_bytes()[:16]
    assert _http_store(sharded_server).get("16_16_42/nothing.shard") is None
    with pytest.raises(AuthError, match=rf"refused the token \(HTTP 401\) at .*{shard.name}"):
        _http_store(sharded_server, token="0" * 32).get(key)
    with pytest.raises(SourceError, match=rf"HTTP 416 from .*{shard.name}"):  # not retried: not transient
        _http_store(sharded_server).get(key, 10**9, 10**9 + 1)


def test_http_reads_of_this_machine_never_go_through_a_proxy(sharded_server, tiny_sharded_path, monkeypatch):
    """A proxy in the environment (as on a cluster that reaches the registries through one) is not
    used for 127.0.0.1: here it would refuse every connection."""
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)  # the suite's conftest sets it
    monkeypatch.delenv("no_proxy", raising=False)
    shard = sorted((tiny_sharded_path / "segmentation" / "16_16_42").iterdir())[0]
    # in_flight=7: a driver of its own, so new connections (not ones made before the proxy was set)
    got = dict(_fetch.fetch(_http_store(sharded_server), [(f"16_16_42/{shard.name}", 0, 16)], in_flight=7))
    assert got == {0: shard.read_bytes()[:16]}


def test_a_tls_failure_is_reported_at_once_not_retried(sharded_server):
    """https:// to a plain-HTTP server: a TLS error does not go away, so no retry, and the URL is named."""
    from crantseg_dask.sources._http import RetryPolicy

    store = _fetch.open_store(sharded_server.address.replace("http://", "https://") + STORAGE_PREFIX,
                              policy=RetryPolicy(retries=5, backoff=0.2))
    _fetch.reset_stats()
    with pytest.raises(SourceError, match=r"GET https://127\.0\.0\.1:\d+/storage/segmentation/info failed"):
        store.get("info")
    assert _fetch.stats["retries"] == 0


def test_an_abandoned_fetch_leaves_the_reads_working(sharded_server, tiny_sharded_path):
    """A task that stops reading half-way (an error in its decoder) cancels its queued reads; the
    process's other reads go on, and nothing stays counted in flight. Each GET takes 100 ms, so
    only the reads in flight and the few started before the close can finish (a loaded machine may
    stall this thread between the first answer and the close: the bound allows about 1 s of it)."""
    import time as _time

    shards = sorted((tiny_sharded_path / "segmentation" / "16_16_42").iterdir())
    store = _http_store(sharded_server)
    reqs = [(f"16_16_42/{f.name}", 0, 16) for f in shards] * 50
    sharded_server.set_faults(storage_latency_ms=100)
    try:
        n0 = sharded_server.state.n_storage_reads
        gen = _fetch.fetch(store, reqs, in_flight=4, window=len(reqs))  # all queued at once
        i, data = next(gen)
        assert data == shards[i % len(shards)].read_bytes()[:16]
        gen.close()
        deadline = _time.monotonic() + 10
        while _fetch._in_flight and _time.monotonic() < deadline:
            _time.sleep(0.01)
        assert _fetch._in_flight == 0
        assert sharded_server.state.n_storage_reads - n0 <= 48  # not the 1,350 queued
    finally:
        sharded_server.set_faults()
    got = dict(_fetch.fetch(store, reqs[:len(shards)], in_flight=4))
    assert [got[i] for i in range(len(shards))] == [f.read_bytes()[:16] for f in shards]


@pytest.fixture
def https_layer(tmp_path, tiny_sharded_path):
    """The sharded tiny layer's files over HTTPS (a self-signed certificate for 127.0.0.1) from a
    plain ``http.server`` in a thread: (base URL, CA file)."""
    import datetime
    import http.server
    import ipaddress
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    root = str(tiny_sharded_path / "segmentation")

    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=root, **k)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}", str(tmp_path / "cert.pem")
    httpd.shutdown()
    httpd.server_close()


def test_https_layer_reads_with_the_ca_bundle_requests_would_use(https_layer, tiny_sharded_path, monkeypatch):
    """HTTPS (as production buckets answer): certificates are checked against ``REQUESTS_CA_BUNDLE``
    (what requests and caveclient use); with the default bundle this self-signed server is refused at
    once, naming the URL, not retried. ``http.server`` ignores ``Range`` (answers 200 with the whole
    file): the reader cuts the asked bytes itself (a range from byte 0 was returned whole before)."""
    from crantseg_dask.sources._http import RetryPolicy

    base, ca = https_layer
    shard = sorted((tiny_sharded_path / "segmentation" / "16_16_42").iterdir())[0]
    key = f"16_16_42/{shard.name}"
    # in_flight 5 / 6: drivers (and so libcurl handles) of their own, made under each environment
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    store = _fetch.open_store(base, policy=RetryPolicy(retries=3, backoff=0.2))
    _fetch.reset_stats()
    with pytest.raises(SourceError, match=rf"GET {base}/{key} failed: .*certificate"):
        dict(_fetch.fetch(store, [(key, 0, 16)], in_flight=5))
    assert _fetch.stats["retries"] == 0
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)
    got = dict(_fetch.fetch(store, [(key, 0, 16), (key, None, None)], in_flight=6))
    assert got == {0: shard.read_bytes()[:16], 1: shard.read_bytes()}
