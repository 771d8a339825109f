"""Weight transports through their interface: a version arrives identical by broadcast and by HTTP
pull, and a payload that does not match its manifest is refused by both."""

from __future__ import annotations

import multiprocessing as mp
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from protocol.transport import (
    Manifest,
    WeightError,
    WeightReceiver,
    WeightSender,
    WeightVersion,
    checksum_tensors,
    make_manifest,
    plan_buckets,
)
from protocol.transport.broadcast import (
    BroadcastReceiver,
    BroadcastSender,
    create_group,
)
from protocol.transport.http_pull import HttpReceiver, SafetensorsStore
from tests.conftest import free_port


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layers.0.w": torch.randn(64, 32, generator=g),
        "layers.0.experts": torch.randn(8, 16, 16, generator=g).to(torch.bfloat16),
        "embed": torch.randn(300, 64, generator=g),
        "scale": torch.tensor(3.5),
        "count": torch.arange(5, dtype=torch.int64),
    }


def _tampered(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(named)
    out["embed"] = named["embed"].clone()
    out["embed"][0, 0] += 1e-3
    return out


def test_buckets_respect_bound_and_cover_every_tensor() -> None:
    m = make_manifest(_tensors(0), version=1, bucket_bytes=10_000)
    buckets = plan_buckets(m)
    assert sorted(i for b in buckets for i in b) == list(range(len(m.tensors)))
    for b in buckets:
        assert len(b) == 1 or sum(m.tensors[i].nbytes for i in b) <= 10_000
    assert len(buckets) < len(m.tensors)  # small tensors share buckets


def test_record_round_trips_through_redis_fields() -> None:
    unknown = WeightVersion(version=3)  # a broadcast not yet received: no checksum, no URL
    assert WeightVersion.from_redis(unknown.to_redis()) == unknown
    full = make_manifest(_tensors(0), version=4).record("http://learner/v1/weights/4")
    raw = {k.encode(): v.encode() for k, v in full.to_redis().items()}
    assert WeightVersion.from_redis(raw) == full


# ---- one version through each transport, by the interface alone ---------------------------------

def _serve_store(directory: Path) -> tuple[SafetensorsStore, ThreadingHTTPServer]:
    """The store behind a minimal HTTP server (the learner's own server lives in learner/)."""

    class Files(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = store.path(int(self.path.rsplit("/", 1)[1])).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    store = SafetensorsStore(directory, f"http://127.0.0.1:{httpd.server_address[1]}/v1/weights", keep=2)
    return store, httpd


def _transfer(kind: str, payload: dict[str, torch.Tensor], manifest: Manifest, tmp_path: Path,
              buffer: bool) -> list[tuple[str, torch.Tensor]]:
    """Send `payload` as `manifest`'s version by `kind`; what the receiver hands out (consumed)."""
    if kind == "http":
        store, httpd = _serve_store(tmp_path / "store")
        sender: WeightSender = store
        receiver: WeightReceiver = HttpReceiver(timeout_s=30)
        try:
            record = manifest.record(sender.send(payload, manifest))
            got = receiver.receive(record, buffer)
            assert (got.version, got.checksum) == (manifest.version, manifest.checksum)
            return list(got.tensors)
        finally:
            httpd.shutdown()
    port = free_port()
    errors: list[BaseException] = []

    def learner() -> None:  # rank 0: hosts the store, sends one version
        try:
            BroadcastSender(create_group("127.0.0.1", port, 0, 2, timeout_s=60)).send(payload, manifest)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    t = threading.Thread(target=learner)
    t.start()
    rx = BroadcastReceiver()
    rx.join("127.0.0.1", port, 1, 2, timeout_s=60)
    try:
        got = rx.receive(WeightVersion(version=manifest.version), buffer)
        assert (got.version, got.checksum) == (manifest.version, manifest.checksum)
        return [(n, x.clone()) for n, x in got.tensors]
    finally:
        t.join(60)
        assert not errors and not t.is_alive()


@pytest.mark.parametrize("buffer", [True, False], ids=["buffered", "streamed"])
def test_both_transports_deliver_the_same_version(tmp_path: Path, buffer: bool) -> None:
    named = _tensors(1)
    manifest = make_manifest(named, version=7, bucket_bytes=4096)
    by_broadcast = _transfer("broadcast", named, manifest, tmp_path, buffer)
    by_http = _transfer("http", named, manifest, tmp_path, buffer)
    assert [n for n, _ in by_broadcast] == [n for n, _ in by_http] == sorted(named)
    assert checksum_tensors(by_broadcast) == checksum_tensors(by_http) == manifest.checksum
    for (name, a), (_, b) in zip(by_broadcast, by_http):
        assert a.dtype == b.dtype == named[name].dtype and torch.equal(a, b)


@pytest.mark.parametrize("kind", ["broadcast", "http"])
@pytest.mark.parametrize("buffer", [True, False], ids=["buffered", "streamed"])
def test_corrupted_payload_is_refused(tmp_path: Path, kind: str, buffer: bool) -> None:
    named = _tensors(2)
    manifest = make_manifest(named, version=1, bucket_bytes=4096)
    with pytest.raises(WeightError, match="checksum"):
        _transfer(kind, _tampered(named), manifest, tmp_path, buffer)


def test_http_receiver_names_the_field_not_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    record = WeightVersion(version=1, url=f"http://127.0.0.1:{free_port()}/v1/weights/1")
    with pytest.raises(WeightError, match="^url: the weights could not be fetched"):
        HttpReceiver(timeout_s=5).receive(record)
    assert "Connection refused" in caplog.text  # the operator still learns why
    with pytest.raises(WeightError, match="^url: .* no pull URL"):
        HttpReceiver().receive(WeightVersion(version=1))


def test_http_receiver_pulls_only_from_allowed_hosts() -> None:
    """Another host is refused before any connection, with one answer whatever is there, so a
    caller cannot probe the network through the engine; a redirect is not followed."""
    listening = ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    threading.Thread(target=listening.serve_forever, daemon=True).start()
    rx = HttpReceiver(timeout_s=5, allowed_hosts={"127.0.0.1"})
    answers = set()
    for url in (f"http://localhost:{listening.server_address[1]}/x", f"http://localhost:{free_port()}/x",
                "http://169.254.169.254/latest/meta-data", "http://2130706433/x"):
        with pytest.raises(WeightError) as err:
            rx.receive(WeightVersion(version=1, url=url))
        answers.add(str(err.value))
    assert answers == {"url: weights are pulled only from the learner's hosts (rollout.weight_hosts)"}
    for url in ("file:///etc/passwd", "http://[::1/x", "gopher://127.0.0.1/"):
        with pytest.raises(WeightError, match="^url: (not a valid URL|must be an http)"):
            rx.receive(WeightVersion(version=1, url=url))
    with pytest.raises(WeightError, match=r"HTTP 302"):  # to an allowed host, yet not followed
        rx.receive(WeightVersion(version=1, url=f"http://127.0.0.1:{listening.server_address[1]}/x"))
    assert _Redirect.followed == 0
    listening.shutdown()


class _Redirect(BaseHTTPRequestHandler):
    followed = 0

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/target":
            type(self).followed += 1
        self.send_response(302)
        self.send_header("Location", "/target")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_store_keeps_the_newest_versions(tmp_path: Path) -> None:
    store = SafetensorsStore(tmp_path, "http://x/v1/weights", keep=2)
    for v in (1, 2, 3):
        assert store.send(_tensors(v), make_manifest(_tensors(v), v)) == f"http://x/v1/weights/{v}"
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["v00000002.safetensors",
                                                                      "v00000003.safetensors"]
    assert store.latest is not None and store.latest.version == 3


# ---- broadcast across processes ----------------------------------------------------------------

def _receiver_proc(port: int, rank: int, world: int, q: mp.Queue) -> None:
    rx = BroadcastReceiver()
    rx.join("127.0.0.1", port, rank, world, timeout_s=60)
    got = rx.receive(WeightVersion(version=7))
    q.put({n: t.float().sum().item() for n, t in got.tensors})


def test_broadcast_to_two_receiver_processes_bit_exact() -> None:
    ctx = mp.get_context("spawn")
    named = _tensors(1)
    manifest = make_manifest(named, version=7, bucket_bytes=4096)
    port, q = free_port(), ctx.Queue()
    procs = [ctx.Process(target=_receiver_proc, args=(port, r, 3, q)) for r in (1, 2)]
    for p in procs:
        p.start()
    BroadcastSender(create_group("127.0.0.1", port, 0, 3, timeout_s=60)).send(named, manifest)
    sums = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    want = {n: t.float().sum().item() for n, t in named.items()}
    assert sums == [want, want]


def test_joining_a_group_nobody_hosts_is_refused_not_hung() -> None:
    """The rendezvous has its own short timeout (the request that asked for it gets an answer);
    collectives keep the long one."""
    with pytest.raises(WeightError, match=r"^broadcast: no weight group at 127\.0\.0\.1:\d+ within 2s"):
        BroadcastReceiver().join("127.0.0.1", free_port(), 1, 2, timeout_s=600, connect_timeout_s=2)
