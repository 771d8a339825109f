"""Weight updates during generation: rollout.inflight_policy finish vs abort vs continue.

One engine per policy generates groups non-stop (a fixed number in flight, each finished group
replaced at once) while a thread loads a new version every `--every` seconds (two random models,
alternately). Reported per policy: useful tokens/s (tokens of the responses delivered within the
window; tokens an abort threw away are not counted), and weight-update latency (from the update
request to the new weights serving: what `Engine.update_weights` returns), with ratios vs finish.

Run: .venv/bin/python -m bench.inflight [--seconds 30 --every 3 --groups 8 --n 4 --max-tokens 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from learner.models.tiny import build_tiny_model  # noqa: E402
from protocol.config.rollout import RolloutConfig  # noqa: E402
from protocol.schema import Response  # noqa: E402
from rollout_service.engine import Engine, Sampling  # noqa: E402

POLICIES = ("finish", "abort", "continue")
MODEL = dict(hidden=256, layers=4, experts=8, expert_ffn=512)
"""~10M parameters: steps slow enough on CPU that responses are mid-way at most updates."""


@dataclass
class Result:
    tokens: int = 0
    responses: int = 0
    continued: int = 0  # responses with tokens of more than one version
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0


def run(policy: str, models: list[Path], args: argparse.Namespace) -> Result:
    weights = [sorted(load_file(str(m / "model.safetensors")).items()) for m in models]
    cfg = RolloutConfig(dtype="float32", max_model_len=1024, inflight_policy=policy,  # type: ignore[arg-type]
                        n=args.n, max_tokens=args.max_tokens, seed=0)
    result, lock = Result(), threading.Lock()
    with Engine(str(models[0]), cfg) as engine:
        prompt = engine.encode("Count from one to a thousand, one number per line:")
        engine.generate(prompt, 1, Sampling(max_tokens=4))  # warm-up
        slots, stop = threading.Semaphore(args.groups), threading.Event()
        start = time.monotonic()
        end = start + args.seconds

        def done(responses: list[Response]) -> None:
            if time.monotonic() <= end:
                with lock:
                    result.tokens += sum(len(r.token_ids) for r in responses)
                    result.responses += len(responses)
                    result.continued += sum(len(r.token_versions) > 1 for r in responses)
            slots.release()

        def feed() -> None:
            while not stop.is_set():
                if slots.acquire(timeout=0.1):
                    engine.submit(prompt).add_done_callback(lambda f: done(f.result()))

        def update() -> None:
            version = 0
            while not stop.wait(args.every):
                version += 1
                seconds = engine.update_weights(lambda v=version: iter(weights[v % 2]), version)
                result.latencies.append(seconds)

        threads = [threading.Thread(target=f, daemon=True) for f in (feed, update)]
        for t in threads:
            t.start()
        time.sleep(max(end - time.monotonic(), 0))
        stop.set()
        for t in threads:
            t.join()
        result.seconds = args.seconds
        for _ in range(args.groups):  # let the last groups finish before the engine closes
            slots.acquire(timeout=300)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="Window measured per policy.")
    ap.add_argument("--every", type=float, default=3.0, help="Seconds between weight updates.")
    ap.add_argument("--groups", type=int, default=8, help="Groups generating at once.")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ringrl-bench-") as tmp:
        models = [build_tiny_model(Path(tmp) / f"v{s}", "qwen3_moe", seed=s, **MODEL) for s in (0, 1)]  # type: ignore[arg-type]
        results = {p: run(p, models, args) for p in POLICIES}
    base = results["finish"]
    base_tps = base.tokens / base.seconds
    base_lat = statistics.mean(base.latencies) if base.latencies else float("nan")
    t = Table(title=f"Weight update every {args.every:g} s while generating: qwen3_moe ~10M fp32, CPU, "
                    f"{args.groups} groups x n={args.n} in flight, max_tokens={args.max_tokens}, "
                    f"{args.seconds:g} s per policy")
    for c in ("policy", "tokens/s", "vs finish", "updates", "update latency mean s", "max s",
              "vs finish", "responses", "continued"):
        t.add_column(c, justify="left" if c == "policy" else "right")
    for p, r in results.items():
        tps = r.tokens / r.seconds
        lat = statistics.mean(r.latencies) if r.latencies else float("nan")
        t.add_row(p, f"{tps:.0f}", f"{tps / base_tps:.2f}x", str(len(r.latencies)), f"{lat:.3f}",
                  f"{max(r.latencies, default=float('nan')):.3f}", f"{lat / base_lat:.2f}x",
                  str(r.responses), str(r.continued))
    Console(width=200).print(t)


if __name__ == "__main__":
    main()
