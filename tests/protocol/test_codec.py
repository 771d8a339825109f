from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings

from protocol.codec import DecodeError, SchemaVersionError, decode_group, encode_group
from protocol.schema import SCHEMA_VERSION, Group
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
    with pytest.raises(SchemaVersionError, match=r"v2.*upgrade ringrl"):
        decode_group(msgpack.packb(msg))


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
