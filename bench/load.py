"""The reward service under load: a real `ringrl serve reward` process on loopback, driven by a
second process of concurrent clients sending mixed math and code items, some of them hostile.

Each client sends one item per request and waits for the answer before sending the next (a closed
loop: the offered load adapts to the service, as a trainer's does). Reported per kind of item:
requests, answers by class, errors (a 5xx, a connection error or a client timeout), mis-scored
answers (a reward other than the one the item deserves), p50/p99 latency; and overall throughput,
/healthz latency under the load (probes must not queue behind scoring) and the peak memory of the
server's process tree (RSS summed, and PSS, which counts pages shared by forked workers once).

    .venv/bin/python -m bench.load [--clients 200] [--seconds 60] [--wall-s 2] [--cpu-s 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import yaml
from rich.console import Console
from rich.table import Table

TOKEN = "bench-load-token"  # the server runs with auth on, as deployed; loopback only
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
MAX_RESPONSE_CHARS = 1_000_000  # reward.max_response_chars (the default), set explicitly


@dataclass(frozen=True)
class Kind:
    """One kind of request: how often, how to build its body, and what it deserves."""

    weight: float
    build: Callable[[random.Random], bytes]
    expect: str  # "1" / "0": a 200 with that reward; "4xx": a refusal
    hostile: bool = False


def _body(*items: dict[str, object]) -> bytes:
    return json.dumps({"items": list(items)}).encode()


def _math(rng: random.Random, right: bool) -> bytes:
    a, b = rng.randrange(1000), rng.randrange(1000)
    said = a + b if right else a + b + 1
    return _body({"task": "math", "response": f"{a} plus {b}: the sum is \\boxed{{{said}}}.",
                  "answer": str(a + b)})


def _code(rng: random.Random, right: bool) -> bytes:
    a, b = rng.randrange(1000), rng.randrange(1000)
    op = "+" if right else "-"
    return _body({"task": "code", "response": f"```python\na, b = map(int, input().split())\nprint(a {op} b)\n```",
                  "tests": {"io_tests": [{"stdin": f"{a} {b}\n", "stdout": str(a + b)}]}})


def _call(rng: random.Random, right: bool) -> bytes:
    k = rng.randrange(2, 9)
    factor = k if right else k + 1
    return _body({"task": "code", "response": f"```python\ndef scale(x):\n    return x * {factor}\n```",
                  "tests": {"test_code": f"def check(f):\n    assert f(3) == {3 * k}\n", "entry_point": "scale"}})


def _program(source: str) -> Callable[[random.Random], bytes]:
    body = _body({"task": "code", "response": f"```python\n{source}\n```",
                  "tests": {"io_tests": [{"stdin": "1\n", "stdout": "1"}]}})
    return lambda _: body


def _fixed(body: bytes) -> Callable[[random.Random], bytes]:
    return lambda _: body


# Hostile bodies are built once: the client's CPU belongs to the load, not to string building.
_HUGE = _body({"task": "math", "response": "x " * ((MAX_RESPONSE_CHARS - 40) // 2) + "\\boxed{42}", "answer": "42"})
_OVER = _body({"task": "math", "response": "x" * (MAX_RESPONSE_CHARS + 1), "answer": "1"})
_BRACES = _body({"task": "math", "response": "\\boxed{" * 60_000 + "{" * 60_000, "answer": "1"})
_SURROGATE_RESPONSE = b'{"items": [{"task": "math", "response": "\\ud800 \\\\boxed{1}", "answer": "1"}]}'
_SURROGATE_STDIN = (b'{"items": [{"task": "code", "response": "```python\\nprint(1)\\n```", '
                    b'"tests": {"io_tests": [{"stdin": "\\udfff", "stdout": "1"}]}}]}')
_NESTED_JSON = b"[" * 20_000 + b"]" * 20_000

KINDS = {
    "math": Kind(0.25, lambda r: _math(r, True), "1"),
    "math wrong": Kind(0.20, lambda r: _math(r, False), "0"),
    "code io": Kind(0.18, lambda r: _code(r, True), "1"),
    "code io wrong": Kind(0.12, lambda r: _code(r, False), "0"),
    "code call": Kind(0.07, lambda r: _call(r, True), "1"),
    "code call wrong": Kind(0.03, lambda r: _call(r, False), "0"),
    "huge response (~cap)": Kind(0.02, _fixed(_HUGE), "1", True),
    "over the cap": Kind(0.005, _fixed(_OVER), "4xx", True),
    "nested braces 420 KB": Kind(0.02, _fixed(_BRACES), "0", True),
    "lone surrogate": Kind(0.03, lambda r: r.choice([_SURROGATE_RESPONSE, _SURROGATE_STDIN]), "4xx", True),
    "nested JSON": Kind(0.01, _fixed(_NESTED_JSON), "4xx", True),
    "infinite loop": Kind(0.01, _program("while True:\n    pass"), "0", True),
    "fork bomb": Kind(0.01, _program("import os\nwhile True:\n    os.fork()"), "0", True),
    "sleeper": Kind(0.005, _program("import time\ntime.sleep(600)"), "0", True),
    "memory bomb": Kind(0.005, _program("x = bytearray(1 << 34)"), "0", True),
    "output flood": Kind(0.005, _program("while True:\n    print('x' * 65536)"), "0", True),
}


# ---- the client process ------------------------------------------------------------------------

async def _client(http: aiohttp.ClientSession, url: str, end: float, rng: random.Random,
                  out: list[list[object]]) -> None:
    names = list(KINDS)
    weights = [KINDS[n].weight for n in names]
    while time.monotonic() < end:
        name = rng.choices(names, weights)[0]
        body = KINDS[name].build(rng)
        start = time.perf_counter()
        try:
            async with http.post(f"{url}/v1/score", data=body, headers=HEADERS) as r:
                status = r.status
                reply = await r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            out.append([name, -1, time.perf_counter() - start, None, type(exc).__name__])
            continue
        reward = json.loads(reply)["results"][0]["reward"] if status == 200 else None
        out.append([name, status, time.perf_counter() - start, reward, None])


async def _load(url: str, clients: int, seconds: float, seed: int) -> dict[str, object]:
    # aiohttp (installed with ray[default]) rather than httpx: with 200 connections httpx's client
    # used more CPU than the server, and its own delays were being measured as the server's.
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        end = time.monotonic() + seconds
        requests: list[list[object]] = []
        start = time.perf_counter()
        await asyncio.gather(*(_client(http, url, end, random.Random(seed * 100_003 + i), requests)
                               for i in range(clients)))
        return {"requests": requests, "elapsed": time.perf_counter() - start}


def client_main(url: str, clients: int, seconds: float, seed: int, out: Path) -> None:
    out.write_text(json.dumps(asyncio.run(_load(url, clients, seconds, seed))))


# ---- the server and the report -----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(root: int) -> list[int]:
    """`root` and every descendant, from /proc (bwrap sandboxes and math workers included)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _memory_kb(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) summed over `pids`, in KiB."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue  # gone since it was listed
    return rss, pss


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds used by `pids` and by their children already reaped."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _start_server(workdir: Path, wall_s: float, cpu_s: int) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = _free_port()
    config = {"reward": {"host": "127.0.0.1", "port": port, "workers": 0, "code_concurrency": 2,
                         "max_response_chars": MAX_RESPONSE_CHARS,
                         "sandbox": {"wall_s": wall_s, "cpu_s": cpu_s}}}
    path = workdir / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    log = workdir / "reward.log"
    env = {**os.environ, "RINGRL_API_TOKEN": TOKEN}
    ringrl = Path(sys.executable).parent / "ringrl"
    with log.open("wb") as f:
        proc = subprocess.Popen([str(ringrl), "serve", "reward", str(path), "--workers", "0"], env=env,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"reward server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return proc, url, log
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"no /healthz 200 within 180 s:\n{log.read_text()[-3000:]}")


def _probe(url: str, stop: threading.Event, out: list[tuple[int, float]]) -> None:
    """GET /healthz twice a second from its own connection, as an orchestrator's probe would."""
    with httpx.Client(timeout=60) as http:
        while not stop.wait(0.5):
            start = time.perf_counter()
            try:
                status = http.get(f"{url}/healthz").status_code
            except httpx.HTTPError:
                status = -1
            out.append((status, time.perf_counter() - start))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def report(result: dict, peak: tuple[int, int], clients: int, seconds: float, console: Console) -> dict:
    rows: dict[str, dict] = {}
    for name, status, latency, reward, _ in result["requests"]:
        row = rows.setdefault(name, {"n": 0, "ok": 0, "refused": 0, "errors": 0, "misscored": 0, "lat": []})
        row["n"] += 1
        row["lat"].append(latency)
        expect = KINDS[name].expect
        if status == 200:
            row["ok"] += 1
            row["misscored"] += expect == "4xx" or float(expect) != reward
        elif 400 <= status < 500:
            row["refused"] += 1
            row["misscored"] += expect != "4xx"
        else:
            row["errors"] += 1
    table = Table(title=f"reward service, {clients} clients, {seconds:g} s, closed loop (one item per request)")
    for col in ("kind", "requests", "200", "4xx", "errors", "mis-scored", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for name in KINDS:
        if name in rows:
            r = rows[name]
            table.add_row(name, str(r["n"]), str(r["ok"]), str(r["refused"]), str(r["errors"]),
                          str(r["misscored"]), f"{1000 * _pct(r['lat'], 0.5):.0f}", f"{1000 * _pct(r['lat'], 0.99):.0f}")
    every = [lat for r in rows.values() for lat in r["lat"]]
    total = {k: sum(r[k] for r in rows.values()) for k in ("n", "ok", "refused", "errors", "misscored")}
    table.add_row("all", str(total["n"]), str(total["ok"]), str(total["refused"]), str(total["errors"]),
                  str(total["misscored"]), f"{1000 * _pct(every, 0.5):.0f}", f"{1000 * _pct(every, 0.99):.0f}",
                  style="bold")
    console.print(table)
    probes = [lat for status, lat in result["probes"] if status == 200]
    hostile = sum(r["n"] for name, r in rows.items() if KINDS[name].hostile)
    summary = {
        "requests": total["n"], "hostile": hostile, "errors": total["errors"], "refused": total["refused"],
        "misscored": total["misscored"], "throughput_rps": total["n"] / result["elapsed"],
        "p50_ms": 1000 * _pct(every, 0.5), "p99_ms": 1000 * _pct(every, 0.99),
        "healthz_ok": len(probes), "healthz_failed": len(result["probes"]) - len(probes),
        "healthz_p50_ms": 1000 * _pct(probes, 0.5), "healthz_p99_ms": 1000 * _pct(probes, 0.99),
        "peak_rss_mib": peak[0] / 1024, "peak_pss_mib": peak[1] / 1024,
        "error_kinds": sorted({e for *_, e in result["requests"] if e}),
    }
    console.print(f"{hostile} of {total['n']} requests hostile; "
                  f"throughput {summary['throughput_rps']:.1f} requests/s; errors {summary['errors']} "
                  f"(5xx, connection errors, timeouts); refused as expected or not: {summary['refused']}; "
                  f"mis-scored {summary['misscored']}")
    console.print(f"/healthz under load: {summary['healthz_ok']} ok, {summary['healthz_failed']} failed, "
                  f"p50 {summary['healthz_p50_ms']:.0f} ms, p99 {summary['healthz_p99_ms']:.0f} ms")
    console.print(f"server process tree peak memory: RSS (summed) {summary['peak_rss_mib']:.0f} MiB, "
                  f"PSS {summary['peak_pss_mib']:.0f} MiB")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--wall-s", type=float, default=2.0, help="reward.sandbox.wall_s of the server")
    parser.add_argument("--cpu-s", type=int, default=1, help="reward.sandbox.cpu_s of the server")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # URL: run as the load process
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args.client, args.clients, args.seconds, args.seed, args.out)
        return
    console = Console(width=130)
    with tempfile.TemporaryDirectory(prefix="ringrl-load-") as tmp:
        workdir = Path(tmp)
        server, url, log = _start_server(workdir, args.wall_s, args.cpu_s)
        peak = (0, 0)
        try:
            out = workdir / "load.json"
            load = subprocess.Popen([sys.executable, "-m", "bench.load", "--client", url, "--clients",
                                     str(args.clients), "--seconds", str(args.seconds), "--seed",
                                     str(args.seed), "--out", str(out)])
            probes: list[tuple[int, float]] = []
            stop = threading.Event()
            prober = threading.Thread(target=_probe, args=(url, stop, probes), daemon=True)
            prober.start()
            while load.poll() is None:
                rss, pss = _memory_kb(_tree(server.pid))
                peak = (max(peak[0], rss), max(peak[1], pss))
                time.sleep(0.25)
            stop.set()
            prober.join(60)
            if load.returncode != 0:
                raise SystemExit(f"load process exited {load.returncode}")
            alive = server.poll() is None
            cpu = {"server": _cpu_s(_tree(server.pid)), "load": resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
                   + resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime}
            result = json.loads(out.read_text())
            result["probes"] = probes
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        if not alive:
            console.print(f"[red]the server died during the load[/red]\n{log.read_text()[-3000:]}")
        summary = report(result, peak, args.clients, args.seconds, console)
        summary["cpu_s"] = cpu
        console.print(f"CPU seconds over the run: server tree {cpu['server']:.0f}, load process {cpu['load']:.0f} "
                      f"(of {os.cpu_count()} cores x {result['elapsed']:.0f} s)")
        summary["server_alive"] = alive
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
        if not alive or summary["errors"]:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
