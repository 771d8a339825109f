"""In-place weight updates give the log-probs a fresh engine on the same weights gives."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from protocol.transport import WeightError, WeightVersion, make_manifest
from protocol.transport.broadcast import (
    BroadcastReceiver,
    BroadcastSender,
    create_group,
)
from protocol.transport.http_pull import HttpReceiver
from rollout_service.engine import Engine
from rollout_service.weights import load_version
from tests.conftest import free_port
from tests.rollout.conftest import engine_config, publish

PROBE = [3 + (i * 37) % 400 for i in range(48)]


def hf_logprobs(model: object) -> np.ndarray:
    hf = AutoModelForCausalLM.from_pretrained(str(model), torch_dtype=torch.float32)
    with torch.no_grad():
        lp = hf(torch.tensor([PROBE])).logits[0].log_softmax(-1)
    return lp[:-1].gather(1, torch.tensor(PROBE[1:])[:, None])[:, 0].double().numpy()


def load_from_url(engine: Engine, url: str, version: int, checksum: str | None = None) -> float:
    return load_version(engine, HttpReceiver(), WeightVersion(version=version, url=url, checksum=checksum))[1]


def fresh_logprobs(model: object) -> np.ndarray:
    with Engine(str(model), engine_config()) as e:
        return e.prompt_logprobs(PROBE)


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral", "qwen3"])
def test_update_by_url_matches_fresh_engine(arch: str, model_dir, file_server) -> None:
    old, new = model_dir(arch, 0), model_dir(arch, 1)
    url = publish(file_server, new, f"{arch}-v1.safetensors")
    with Engine(str(old), engine_config()) as e:
        before = e.prompt_logprobs(PROBE)
        load_from_url(e, url, version=1)
        after = e.prompt_logprobs(PROBE)
        assert e.version == 1
        load_from_url(e, url, version=2)  # reloading the same weights changes nothing
        again = e.prompt_logprobs(PROBE)
    fresh = fresh_logprobs(new)
    hf = hf_logprobs(new)
    assert np.abs(before - fresh).max() > 1e-2  # the update did change the model
    assert np.abs(after - fresh).max() <= 1e-5
    assert np.abs(again - fresh).max() <= 1e-5
    fresh_gap = np.abs(fresh - hf).max()
    assert np.abs(after - hf).max() <= fresh_gap + 1e-5


@pytest.mark.parametrize("buffer", [False, True], ids=["streamed", "buffered"])
def test_update_by_broadcast_matches_fresh_engine(model_dir, buffer: bool) -> None:
    old, new = model_dir("qwen3_moe", 0), model_dir("qwen3_moe", 1)
    named = dict(sorted(load_file(str(new / "model.safetensors")).items()))
    manifest = make_manifest(named, version=1, bucket_bytes=1 << 20)
    port = free_port()

    def learner() -> None:  # rank 0: hosts the store, sends one version
        BroadcastSender(create_group("127.0.0.1", port, 0, 2)).send(named, manifest)

    with Engine(str(old), engine_config()) as e:
        t = threading.Thread(target=learner)
        t.start()
        receiver = BroadcastReceiver()
        receiver.join("127.0.0.1", port, 1, 2)
        version, _ = load_version(e, receiver, WeightVersion(version=1), buffer=buffer)
        assert version == 1
        t.join(60)
        after = e.prompt_logprobs(PROBE)
        assert (e.version, e.checksum) == (1, manifest.checksum)
    assert np.abs(after - fresh_logprobs(new)).max() <= 1e-5


def test_checksum_mismatch_is_refused_before_loading(engine: Engine, model_dir, file_server) -> None:
    url = publish(file_server, model_dir("qwen3_moe", 1), "bad-checksum.safetensors")
    before = engine.prompt_logprobs(PROBE)
    with pytest.raises(WeightError, match="checksum"):
        load_from_url(engine, url, version=engine.version + 1, checksum="0" * 64)
    assert np.array_equal(engine.prompt_logprobs(PROBE), before)


def test_unreachable_url_is_a_weight_error(engine: Engine) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed port: connection refused
    with pytest.raises(WeightError, match="url"):
        load_from_url(engine, f"http://127.0.0.1:{port}/nothing.safetensors", version=engine.version + 1)
