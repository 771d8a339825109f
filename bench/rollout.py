"""Rollout service benchmarks, each beside its baseline in the same run.

1. Tokens/s through the service (HTTP in, Redis stream out) vs bare `vllm.LLM.generate` on the
   same model, prompts and sampling settings.
2. Weight-update latency and effective GB/s for ~10M and ~100M-parameter MoE models: in-place load
   from memory, the broadcast path (learner thread -> gloo -> engine) and the HTTP pull path, vs a
   plain in-memory copy of the same bytes (the physical limit here).

Run: .venv/bin/python -m bench.rollout [--prompts 16 --n 4 --max-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

import httpx  # noqa: E402
import redis  # noqa: E402
import torch  # noqa: E402
import uvicorn  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from bench.common import redis_server  # noqa: E402
from learner.models.tiny import build_tiny_model  # noqa: E402
from protocol.codec import decode_group  # noqa: E402
from protocol.config.rollout import RolloutConfig  # noqa: E402
from protocol.netaddr import free_port  # noqa: E402
from protocol.queue import FIELD  # noqa: E402
from protocol.streams import RunKeys  # noqa: E402
from protocol.transport import WeightVersion, make_manifest  # noqa: E402
from protocol.transport.broadcast import BroadcastReceiver, BroadcastSender, create_group  # noqa: E402
from protocol.transport.http_pull import HttpReceiver  # noqa: E402
from rollout_service.engine import Engine  # noqa: E402
from rollout_service.server import create_app  # noqa: E402
from rollout_service.streaming import Rollouts  # noqa: E402
from rollout_service.weights import load_version  # noqa: E402

console = Console()
PROMPTS = ["What is {a} + {b} - {c}? Answer:", "A farmer has {a} cows and {b} chickens. How many legs?",
           "Write a function f with f(0)={a}, f(1)={b}.", "def add(a, b):\n    return a + {c}"]


def prompts(k: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)].format(a=i % 9 + 1, b=(i * 7) % 9 + 1, c=(i * 5) % 9 + 1)
            for i in range(k)]


def bare_vllm(llm: object, texts: list[str], n: int, max_tokens: int) -> tuple[int, float]:
    from vllm import SamplingParams

    params = SamplingParams(n=n, max_tokens=max_tokens, temperature=1.0, logprobs=0)
    t0 = time.perf_counter()
    outs = llm.generate(texts, params, use_tqdm=False)  # type: ignore[attr-defined]
    seconds = time.perf_counter() - t0
    return sum(len(c.token_ids) for o in outs for c in o.outputs), seconds


def service(port: int, client: redis.Redis, texts: list[str]) -> tuple[int, float]:
    client.delete(RunKeys("bench").rollouts)
    body = {"prompts": [{"task": "math", "reference": {"kind": "math", "answer": "1"}, "prompt": t}
                        for t in texts]}
    stream = RunKeys("bench").rollouts
    t0 = time.perf_counter()
    resp = httpx.post(f"http://127.0.0.1:{port}/v1/rollouts", json=body, timeout=60)
    resp.raise_for_status()
    while client.xlen(stream) < len(texts):
        time.sleep(0.002)
    seconds = time.perf_counter() - t0
    tokens = sum(len(r.token_ids) for _, f in client.xrange(stream)
                 for r in decode_group(f[FIELD]).responses)
    return tokens, seconds


def bench_throughput(workdir: Path, args: argparse.Namespace, redis_url: str) -> None:
    from vllm import LLM

    model = build_tiny_model(workdir / "tput", "qwen3_moe")
    texts = prompts(args.prompts)
    llm = LLM(str(model), enforce_eager=True, distributed_executor_backend="uni", dtype="float32",
              max_model_len=512)
    cfg = RolloutConfig(dtype="float32", max_model_len=512, n=args.n, max_tokens=args.max_tokens,
                        max_inflight_groups=len(texts))
    client = redis.Redis.from_url(redis_url)
    engine = Engine(str(model), cfg)
    rollouts = Rollouts(engine, client, "bench", cfg)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, rollouts), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    bare_vllm(llm, texts[:2], args.n, 8)  # warm-up both
    service(port, client, texts[:2])
    bare: list[tuple[int, float]] = []
    svc: list[tuple[int, float]] = []
    for _ in range(args.rounds):  # alternate, so load from other processes hits both alike
        bare.append(bare_vllm(llm, texts, args.n, args.max_tokens))
        svc.append(service(port, client, texts))
    server.should_exit = True
    thread.join(10)
    rollouts.stop()
    engine.close()
    llm.llm_engine.engine_core.shutdown()  # type: ignore[attr-defined]

    t = Table(title=f"Rollout throughput: qwen3_moe tiny, {args.prompts} prompts x n={args.n} "
                    f"x <={args.max_tokens} tokens, fp32, CPU; best of {args.rounds} alternating rounds")
    for c in ("path", "tokens", "seconds", "tokens/s", "ratio vs bare"):
        t.add_column(c, justify="right" if c != "path" else "left")
    b_tok, b_s = max(bare, key=lambda r: r[0] / r[1])
    s_tok, s_s = max(svc, key=lambda r: r[0] / r[1])
    base = b_tok / b_s
    t.add_row("bare vllm.LLM.generate", str(b_tok), f"{b_s:.2f}", f"{base:,.0f}", "1.00")
    t.add_row("service: HTTP in -> Redis out", str(s_tok), f"{s_s:.2f}", f"{s_tok / s_s:,.0f}",
              f"{s_tok / s_s / base:.2f}")
    console.print(t)


def memcpy_seconds(named: dict[str, torch.Tensor], repeats: int = 5) -> float:
    dst = {k: v.clone() for k, v in named.items()}  # pages touched before timing
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for k, v in named.items():
            dst[k].copy_(v)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_updates(workdir: Path) -> None:
    sizes = {"~10M": dict(hidden=256, layers=4, experts=8, expert_ffn=512),
             "~100M": dict(hidden=512, layers=8, experts=8, expert_ffn=1024)}
    t = Table(title="Weight update (engine running, in place), qwen3_moe fp32, CPU")
    for c in ("model", "params", "MB", "path", "seconds", "GB/s", "ratio vs memcpy"):
        t.add_column(c, justify="left" if c in ("model", "path") else "right")
    for label, kw in sizes.items():
        v0 = build_tiny_model(workdir / f"w{label}-0", "qwen3_moe", seed=0, **kw)
        v1 = build_tiny_model(workdir / f"w{label}-1", "qwen3_moe", seed=1, **kw)
        named = dict(sorted(load_file(str(v1 / "model.safetensors")).items()))
        nbytes = sum(x.numel() * x.element_size() for x in named.values())
        params = sum(x.numel() for x in named.values())
        rows = [("in-memory copy (baseline)", memcpy_seconds(named))]
        cfg = RolloutConfig(dtype="float32", max_model_len=512)
        with Engine(str(v0), cfg) as engine:
            t0 = time.perf_counter()
            engine.update_weights(lambda: iter(named.items()), 1)
            rows.append(("engine load from memory", time.perf_counter() - t0))

            manifest = make_manifest(named, version=2)
            port = free_port()
            sender = threading.Thread(target=lambda: BroadcastSender(create_group("127.0.0.1", port, 0, 2))
                                      .send(named, manifest))
            receiver = BroadcastReceiver()
            t0 = time.perf_counter()
            sender.start()
            receiver.join("127.0.0.1", port, 1, 2)
            load_version(engine, receiver, WeightVersion(version=2), buffer=False)
            rows.append(("broadcast (gloo, loopback) + load", time.perf_counter() - t0))
            sender.join()

            served = workdir / "served"
            served.mkdir(exist_ok=True)
            shutil.copy(v1 / "model.safetensors", served / f"{label}.safetensors")
            http = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                     str(port := free_port()), "--directory", str(served)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                url = f"http://127.0.0.1:{port}/{label}.safetensors"
                for _ in range(200):
                    try:
                        httpx.head(url)
                        break
                    except httpx.HTTPError:
                        time.sleep(0.05)
                t0 = time.perf_counter()
                load_version(engine, HttpReceiver(), WeightVersion(version=3, url=url))
                rows.append(("HTTP pull + checksum + load", time.perf_counter() - t0))
            finally:
                http.terminate()
                http.wait(10)
        base = rows[0][1]
        for path, s in rows:
            t.add_row(label, f"{params / 1e6:.1f}M", f"{nbytes / 1e6:.0f}", path, f"{s:.3f}",
                      f"{nbytes / s / 1e9:.2f}", f"{base / s:.3f}")
    console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-updates", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ringrl-bench-") as tmp:
        workdir = Path(tmp)
        with redis_server() as url:
            bench_throughput(workdir, args, url)
            if not args.skip_updates:
                bench_updates(workdir)


if __name__ == "__main__":
    main()
