from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings

from protocol import codec
from protocol.codec import DecodeError, SchemaVersionError, decode_group, encode_group
from protocol.schema import SCHEMA_VERSION, Group, Response
from tests.protocol.strategies import groups, make_group


def assert_same(a: Group, b: Group) -> None:
    assert a.model_dump(mode="json") == b.model_dump(mode="json")
    for ra, rb in zip(a.responses, b.responses):
        assert ra.token_ids.dtype == rb.token_ids.dtype == np.int32
        assert ra.logprobs.dtype == rb.logprobs.dtype == np.float32
        assert ra.logprobs.tobytes() == rb.logprobs.tobytes()  # bit-exact, -0.0 and inf included


@settings(max_examples=300, deadline=None)
@given(groups())
def test_round_trip_is_exact(group: Group) -> None:
    assert_same(decode_group(encode_group(group)), group)


def test_arrays_travel_packed_not_as_lists() -> None:
    g = make_group(n=16, length=1024)
    wire = encode_group(g)
    body = msgpack.unpackb(wire)["g"]
    assert isinstance(body["responses"][0]["tok"], bytes)
    assert isinstance(body["responses"][0]["lp"], bytes)
    # 16 x 1024 x (4 B token + 4 B log-prob) plus small overhead; lists would be ~2x bigger
    assert len(wire) < 16 * 1024 * 8 * 1.05
    assert len(wire) < len(json.dumps(g.model_dump(mode="json")))


def test_newer_schema_refused_clearly() -> None:
    msg = msgpack.unpackb(encode_group(make_group()))
    msg["v"] = SCHEMA_VERSION + 1
    with pytest.raises(SchemaVersionError, match=rf"v{SCHEMA_VERSION + 1}.*upgrade ringrl"):
        decode_group(msgpack.packb(msg))


def _with_routing(layers: int = 2, k: int = 2, top: int = 7) -> Group:
    g = make_group(n=2, length=5)
    rows = len(g.prompt_token_ids) + 5 - 1
    ids = np.random.default_rng(0).integers(0, top + 1, (rows, layers, k))
    return g.model_copy(update={"responses": [
        Response(**{**r.model_dump(), "routed_experts": ids}) for r in g.responses]})


def test_routing_travels_compact_and_exact() -> None:
    g = _with_routing()
    assert g.responses[0].routed_experts.dtype == np.uint8  # ids < 256: one byte each
    wire = encode_group(g)
    assert msgpack.unpackb(wire)["g"]["responses"][0]["re"][1:] == ["u1", 2, 2]
    back = decode_group(wire)
    assert_same(back, g)
    assert np.array_equal(back.responses[0].routed_experts, g.responses[0].routed_experts)
    wide = decode_group(encode_group(_with_routing(top=300))).responses[0].routed_experts
    assert wide.dtype == np.uint16 and wide.max() <= 300


def test_v1_reader_refuses_routing_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    # a v1 reader (this decoder at version 1) would drop the routing silently; it refuses instead
    wire = encode_group(_with_routing())
    monkeypatch.setattr(codec, "SCHEMA_VERSION", 1)
    with pytest.raises(SchemaVersionError,
                       match=rf"group schema v{SCHEMA_VERSION}, this reader knows up to v1: upgrade ringrl on this side"):
        decode_group(wire)


def test_v1_message_still_read() -> None:
    msg = msgpack.unpackb(encode_group(make_group()))
    msg["v"] = 1
    for r in msg["g"]["responses"]:
        del r["re"], r["tv"]
    assert decode_group(msgpack.packb(msg)).responses[0].routed_experts is None


CONTINUED = make_group(n=2, length=16)


def _continued() -> Group:
    """Responses continued across two weight updates: tokens 0-4 by v3, 5-9 by v4, the rest by v6."""
    g = CONTINUED
    return g.model_copy(update={"responses": [
        Response(**{**r.model_dump(), "token_versions": [(0, 3), (5, 4), (10, 6)]}) for r in g.responses]})


def test_token_versions_travel_exactly() -> None:
    back = decode_group(encode_group(_continued()))
    assert_same(back, _continued())
    r = back.responses[0]
    assert r.token_versions == [(0, 3), (5, 4), (10, 6)]
    assert (r.policy_version, r.newest_version) == (3, 6)
    assert r.versions().tolist() == [3] * 5 + [4] * 5 + [6] * 6


def test_v2_reader_refuses_per_token_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    # a v2 reader would credit every token to policy_version; it refuses instead
    wire = encode_group(_continued())
    monkeypatch.setattr(codec, "SCHEMA_VERSION", 2)
    with pytest.raises(SchemaVersionError,
                       match=r"group schema v3, this reader knows up to v2: upgrade ringrl on this side"):
        decode_group(wire)


def test_v2_message_read_as_one_version() -> None:
    # a v2 writer could not continue a response across an update: policy_version sampled every token
    msg = msgpack.unpackb(encode_group(make_group(length=7)))
    msg["v"] = 2
    for r in msg["g"]["responses"]:
        del r["tv"]
    r = decode_group(msgpack.packb(msg)).responses[0]
    assert r.token_versions == [(0, 3)] and r.versions().tolist() == [3] * 7


@pytest.mark.parametrize("segments, reason", [
    ([[1, 3]], "must start with the segment at token 0"),
    ([[0, 3], [16, 4]], "segment start 16 is not after 0 and inside the 16 tokens"),
    ([[0, 3], [5, 4], [5, 6]], "segment start 5 is not after 5"),
    ([[0, 3], [5, 3]], "adjacent segments with the same version 3"),
    ([[0, 4], [5, 6]], "oldest version 4 is not policy_version 3"),
])
def test_bad_token_versions_refused(segments: list, reason: str) -> None:
    msg = msgpack.unpackb(encode_group(_continued()))
    msg["g"]["responses"][1]["tv"] = segments
    with pytest.raises(DecodeError, match=rf"responses\.1\.token_versions: {reason}"):
        decode_group(msgpack.packb(msg))
    with pytest.raises(ValueError, match=reason):
        Response(token_ids=list(range(16)), logprobs=[0.0] * 16, policy_version=3, token_versions=segments)


def test_token_versions_must_be_pairs() -> None:
    msg = msgpack.unpackb(encode_group(_continued()))
    msg["g"]["responses"][0]["tv"] = [[0, 3, 1]]
    with pytest.raises(DecodeError, match=r"responses\.0\.token_versions: expected \[start, version\] pairs"):
        decode_group(msgpack.packb(msg))


def test_routing_rows_must_cover_the_sequence() -> None:
    msg = msgpack.unpackb(encode_group(_with_routing()))
    raw = msg["g"]["responses"][1]["re"]
    raw[0] = raw[0][:-4]  # one position (2 layers x 2 ids) short
    with pytest.raises(DecodeError, match=r"responses\.1\.routed_experts: 35 positions, expected prompt \(32\)"):
        decode_group(msgpack.packb(msg))
    with pytest.raises(ValueError, match="routed_experts: 35 positions"):
        g = _with_routing()
        Group(**{**g.model_dump(), "responses": [
            {**r.model_dump(), "routed_experts": r.routed_experts[:-1]} for r in g.responses]})


@pytest.mark.parametrize("data, reason", [
    (b"\xc1garbage", "not MessagePack"),
    (msgpack.packb([1, 2, 3]), "not a ringrl group"),
    (msgpack.packb({"v": 1, "g": {"id": "x"}}), "malformed group"),
])
def test_garbage_gives_decode_error(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_group(data)


def test_odd_length_array_rejected() -> None:
    msg = msgpack.unpackb(encode_group(make_group()))
    msg["g"]["responses"][0]["tok"] += b"\x00"
    with pytest.raises(DecodeError, match=r"responses\[0\]\.tok"):
        decode_group(msgpack.packb(msg))


def test_invalid_field_named() -> None:
    msg = msgpack.unpackb(encode_group(make_group()))
    msg["g"]["task"] = "poetry"
    with pytest.raises(DecodeError, match="task"):
        decode_group(msgpack.packb(msg))
