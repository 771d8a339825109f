"""Services mode under faults, across hosts: `python -m bench.reliability` writes docs/reliability.md.

The compose stack (deploy/compose/docker-compose.yaml: its commands, environments and run.yaml)
runs natively with bench/stack.py, each part on its own host address in its own network namespace:
Redis (AOF, fsync always), the `init-secrets` and `init-model` one-shots, one learner, two rollout servers, two reward
services and the driver. While the driver runs two short stages, faults are injected at learner
steps: SIGKILL of a reward service, of the learner, of a rollout server; a Redis restart; one
rollout host's link cut; the learner stalled (SIGSTOP); the driver stopped and restarted. At the
end every group is accounted for by id:

The parts require the generated secrets as in compose (API token, one Redis login each); this
scenario reads Redis as the driver's user and calls the APIs with the operator's token.

- written: every id the rollout writers put on the rollouts stream (redis.audit's set);
- read by the learner with a fate (groups.jsonl: buffered, filtered, stale; replays are
  `duplicate`), or still in the rollouts/scored streams;
- each written id has exactly one fate or stream place (none lost, none counted twice), and no
  response span is trained twice (steps.jsonl).

tests/deploy/test_services_multihost.py runs the same scenario (shorter stall) and asserts on it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml

from bench.stack import REPO, Stack, cleanup_stale
from protocol.codec import decode_group
from protocol.queue import FIELD
from protocol.streams import RunKeys
from recipe.plots import read_metrics

COMPOSE_RUN = REPO / "deploy" / "compose" / "run.yaml"
ROLLOUTS = ["rollout-0", "rollout-1"]
REWARDS = ["reward-0", "reward-1"]
HOSTS = ["init-secrets", "redis", "init-model", "learner", *ROLLOUTS, *REWARDS, "driver"]
MAX_BACKLOG = 48


def run_yaml(out: Path, math_steps: int, code_steps: int, sft_steps: int) -> Path:
    """The compose run.yaml with a short run: the same file every part reads, only smaller."""
    cfg = yaml.safe_load(COMPOSE_RUN.read_text()) or {}
    small = {
        "tasks": {"train_size": 1500, "held_out_size": 20},
        "sft": {"batch_size": 16, "max_steps": sft_steps, "max_minutes": 0, "save_every_steps": sft_steps,
                "save_every_minutes": 0},
        "redis": {"max_backlog": MAX_BACKLOG, "audit": True, "claim_idle_ms": 5000},
        "learner": {"checkpoint_every": 2, "max_staleness": 4, "load_balance_coef": 0.001},
        "rollout": {"max_model_len": 256, "cpu_threads_bind": "0", "max_inflight_groups": 16,
                    "drain_s": 20},
        "stages": [
            {"name": "math", "sources": ["chain_sum", "leg_counting"], "steps": math_steps, "token_budget": 768,
             "max_new_tokens": 64, "n": 8, "lr": 1.0e-3, "warmup_steps": 0},
            {"name": "code", "sources": ["legs_fn"], "steps": code_steps, "token_budget": 768,
             "max_new_tokens": 64, "n": 8, "lr": 1.0e-3, "warmup_steps": 0},
        ],
        "eval_size": 10, "eval_samples": 1, "eval_every": 4, "eval_curve_items": 6, "eval_curve_samples": 2,
    }
    for section, values in small.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict):
            cfg[section] = {**cfg[section], **values}
        else:
            cfg[section] = values
    path = out / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@dataclass
class Fault:
    name: str
    at_version: int
    injected_s: float = 0.0  # since the driver started
    recovered_s: float | None = None  # seconds from injection until the run made progress again
    note: str = ""
    stall_writes: tuple[int, int] | None = None  # groups written in the first/second half of a stall


@dataclass
class Samples:
    """What a monitor thread saw once a second."""
    t: list[float] = field(default_factory=list)
    version: list[int] = field(default_factory=list)
    backlog: list[int] = field(default_factory=list)  # rollouts + scored - held by the learner
    rollouts: list[int] = field(default_factory=list)
    scored: list[int] = field(default_factory=list)  # less what the learner holds
    memory: list[int] = field(default_factory=list)  # Redis' resident set (a part's login may not INFO)
    engine_versions: dict[str, list[tuple[float, int]]] = field(default_factory=dict)


class Scenario:
    def __init__(self, run_dir: Path, stall_s: float, cut_s: float, math_steps: int = 12, code_steps: int = 8,
                 sft_steps: int = 600, log: Callable[[str], None] = print, model: Path | None = None,
                 seed: int = 0) -> None:
        """`model`: a starting model to put on the volume first (init-model then finds it and does
        nothing, as on a second `up`); None: init-model builds it (SFT, minutes)."""
        self.run_dir, self.stall_s, self.cut_s, self.say, self.model = run_dir, stall_s, cut_s, log, model
        self.seed = seed
        self.total = math_steps + code_steps
        # A previous run's volumes would make this one resume it (a finished learner, its audit).
        shutil.rmtree(run_dir / "stack", ignore_errors=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.config = run_yaml(run_dir, math_steps, code_steps, sft_steps)
        self.run_name = yaml.safe_load(self.config.read_text())["run"]["name"]
        self.keys = RunKeys(self.run_name)
        self.samples = Samples()
        self.faults: list[Fault] = []
        self.t0 = 0.0
        self._stop = threading.Event()
        self.stack: Stack | None = None
        self.r: redis.Redis | None = None
        self.headers: dict[str, str] = {}

    # ---- plumbing -----------------------------------------------------------------------
    def _secret(self, folder: str, name: str) -> str:
        assert self.stack is not None
        return (self.stack.volume("ringrl-secrets") / folder / name).read_text().strip()

    def _redis(self) -> redis.Redis:
        """One client for the run (it reconnects by itself after the Redis restart), logged in as
        the driver: it only reads the run's keys, which that user may."""
        if self.r is None:
            assert self.stack is not None
            self.r = redis.Redis(host=self.stack.address("redis"), port=6379, socket_timeout=3,
                                 socket_connect_timeout=3, username="driver",
                                 password=self._secret("driver", "redis-password"))
        return self.r

    def _redis_rss(self) -> int | None:
        assert self.stack is not None
        pid = self.stack.pid("redis")  # the namespace wrappers exec, so this is redis-server itself
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # not running (restarting)
            return None
        return next((int(ln.split()[1]) * 1024 for ln in status.splitlines() if ln.startswith("VmRSS:")), None)

    def version(self) -> int:
        try:
            v = self._redis().hget(self.keys.learner_state, "version")
            return int(v) if v is not None else -1
        except redis.RedisError:
            return -1

    def _http(self, host: str, port: int, path: str) -> dict[str, Any] | None:
        assert self.stack is not None
        try:
            r = httpx.get(self.stack.url(host, port, path), timeout=3, trust_env=False, headers=self.headers)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def _monitor(self) -> None:
        s = self.samples
        while not self._stop.wait(1.0):
            try:
                r = self._redis()
                pipe = r.pipeline(transaction=False)
                pipe.hget(self.keys.learner_state, "version")
                pipe.xlen(self.keys.rollouts)
                pipe.xlen(self.keys.scored)
                v, a, b = pipe.execute()
                held = r.xpending(self.keys.scored, "learner")["pending"] if b else 0
            except (redis.RedisError, OSError):
                continue
            s.t.append(time.monotonic() - self.t0)
            s.version.append(int(v or -1))
            s.backlog.append(int(a) + int(b) - int(held))
            s.rollouts.append(int(a))
            s.scored.append(int(b) - int(held))
            if (rss := self._redis_rss()) is not None:
                s.memory.append(rss)
            for host in ROLLOUTS:
                w = self._http(host, 8000, "/v1/weights")
                if w is not None:
                    s.engine_versions.setdefault(host, []).append((s.t[-1], int(w["version"])))

    def _wait_version_above(self, v: int, timeout: float) -> float | None:
        """Seconds until the learner trains past `v` (or has trained the whole plan)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            now = self.version()
            if now > v or now >= self.total:
                return time.monotonic() - start
            time.sleep(0.5)
        return None

    def _wait_healthy(self, host: str, port: int, timeout: float = 300.0, path: str = "/readyz") -> float:
        assert self.stack is not None
        start = time.monotonic()
        self.stack.wait_http(host, port, path=path, timeout=timeout, headers=self.headers)
        return time.monotonic() - start

    # ---- faults -------------------------------------------------------------------------
    def _inject(self, fault: Fault) -> None:
        st = self.stack
        assert st is not None
        fault.injected_s = time.monotonic() - self.t0
        v = self.version()
        self.say(f"[{fault.injected_s:6.1f}s] fault at learner version {v}: {fault.name}")
        if fault.name == "SIGKILL reward-1":
            st.kill("reward-1")
            st.start("reward-1")
            fault.recovered_s = self._wait_healthy("reward-1", 8001)
        elif fault.name == "restart Redis":
            st.kill("redis")
            time.sleep(3)
            st.start("redis")
            fault.recovered_s = self._wait_version_above(max(v, self.version()), 600)
        elif fault.name.startswith("cut rollout-1 link"):
            st.cut_link("rollout-1")
            time.sleep(self.cut_s)
            st.restore_link("rollout-1")
            fault.recovered_s = self._wait_healthy("rollout-1", 8000)
        elif fault.name == "SIGKILL learner":
            st.kill("learner")
            st.start("learner")
            fault.recovered_s = self._wait_version_above(self.version(), 600)
        elif fault.name.startswith("stall learner"):
            written = self._redis().scard
            n0 = written(self.keys.audit_written)
            st.pause("learner")
            time.sleep(self.stall_s / 2)
            n1 = written(self.keys.audit_written)
            time.sleep(self.stall_s / 2)
            n2 = written(self.keys.audit_written)
            fault.note = (f"groups written: {n1 - n0} in the stall's first half, {n2 - n1} in its second "
                          f"(producers blocked); backlog {self.samples.backlog[-1] if self.samples.backlog else 0}")
            fault.stall_writes = (n1 - n0, n2 - n1)
            st.resume("learner")
            fault.recovered_s = self._wait_version_above(self.version(), 600)
        elif fault.name == "SIGKILL rollout-0":
            st.kill("rollout-0")
            st.start("rollout-0")
            fault.recovered_s = self._wait_healthy("rollout-0", 8000)
        elif fault.name == "SIGTERM driver, restart":
            code = st.stop("driver", timeout=60)
            fault.note = f"driver exited {code}"
            self._start_driver()
            fault.recovered_s = self._wait_healthy("driver", 8003, path="/healthz")
        self.say(f"[{time.monotonic() - self.t0:6.1f}s] recovered from {fault.name} "
                 f"in {fault.recovered_s if fault.recovered_s is not None else 'never'}s")

    def _wait_converged(self, timeout_s: float) -> float | None:
        """Seconds until every rollout server runs the learner's final version (None: not in time)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            final = self.version()
            runs = [self._http(h, 8000, "/v1/weights") for h in ROLLOUTS]
            if all(w is not None and w["version"] == final for w in runs):
                time.sleep(1.5)  # the monitor samples each second: let it see the converged state
                return time.monotonic() - start
            time.sleep(1.0)
        return None

    def _start_driver(self) -> None:
        assert self.stack is not None
        urls = "[" + ", ".join(f"http://{h}:8000" for h in ROLLOUTS) + "]"
        reward_urls = "http://reward-0:8001"
        self.stack.start("driver", env_override={"RINGRL_DRIVER__ROLLOUT_URLS": urls,
                                                 "RINGRL_DRIVER__REWARD_URL": reward_urls})

    # ---- the run ------------------------------------------------------------------------
    def run(self, faults: bool = True, timeout_s: float = 2400.0) -> dict[str, Any]:
        cleanup_stale()
        env = {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1"}
        with Stack(self.run_dir / "stack", hosts=HOSTS, run_yaml=self.config, extra_env=env,
                   redis_appendfsync="always") as st:
            self.stack = st
            st.start("init-secrets")
            if (code := st.wait("init-secrets", timeout=120)) != 0:
                raise RuntimeError(f"init-secrets exited {code}:\n{st.log('init-secrets')[-3000:]}")
            self.headers = {"Authorization": f"Bearer {self._secret('operator', 'api-token')}"}
            st.start("redis")
            st.wait_healthy("redis", timeout=60)
            t = time.monotonic()
            if self.model is not None:
                shutil.copytree(self.model, st.run_dir / "volumes" / "ringrl-data" / "models" / "start")
            st.start("init-model")
            code = st.wait("init-model", timeout=1500)
            if code != 0:
                raise RuntimeError(f"init-model exited {code}:\n{st.log('init-model')[-3000:]}")
            self.say(f"init-model: {time.monotonic() - t:.0f}s")
            for host in ["learner", *REWARDS, *ROLLOUTS]:
                st.start(host)
            self._wait_healthy("learner", 8002)
            for host in REWARDS:
                self._wait_healthy(host, 8001)
            for host in ROLLOUTS:
                self._wait_healthy(host, 8000)
            self.t0 = time.monotonic()
            self._start_driver()
            monitor = threading.Thread(target=self._monitor, daemon=True)
            monitor.start()
            # Random learner steps, spread so each fault lands in its own eighth of the run.
            rng = random.Random(self.seed)
            at = [max(1, round(self.total * (k + rng.random()) / 8)) for k in range(7)]
            names = ["SIGKILL reward-1", "restart Redis", f"cut rollout-1 link {self.cut_s:.0f}s",
                     "SIGKILL learner", f"stall learner {self.stall_s:.0f}s (SIGSTOP)", "SIGKILL rollout-0",
                     "SIGTERM driver, restart"]
            plan = [Fault(n, v) for n, v in zip(names, at)] if faults else []
            # Each fault runs (and waits for its recovery) on its own thread, so a slow recovery
            # (a vLLM engine's restart) does not push the next fault past the end of the run;
            # faults may overlap, as they would.
            injecting: list[threading.Thread] = []
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if plan and self.version() >= plan[0].at_version:
                    fault = plan.pop(0)
                    self.faults.append(fault)
                    injecting.append(threading.Thread(target=self._inject, args=(fault,), daemon=True))
                    injecting[-1].start()
                busy = any(t.is_alive() for t in injecting)
                health = None if plan or busy else self._http("driver", 8003, "/healthz")
                if health is not None and health.get("done"):
                    break
                time.sleep(1.0)
            else:
                raise TimeoutError(f"run not done in {timeout_s:.0f}s; learner at {self.version()}")
            converged = self._wait_converged(timeout_s=300)
            self._stop.set()
            monitor.join(5)
            report = self._report()
            report["converged_s"] = converged
            for host in ["driver", *ROLLOUTS, *REWARDS, "learner"]:
                report["exit_codes"][host] = st.stop(host, timeout=90)
            return report

    def _report(self) -> dict[str, Any]:
        st = self.stack
        assert st is not None
        r = self._redis()
        written = {x.decode() for x in r.smembers(self.keys.audit_written)}
        in_streams: Counter[str] = Counter()
        for stream in (self.keys.rollouts, self.keys.scored):
            for _, fields in r.xrange(stream):
                in_streams[decode_group(fields[FIELD]).group_id] += 1
        volume = st.run_dir / "volumes" / "ringrl-data"
        ckpt = next(volume.rglob("groups.jsonl")).parent
        fates: dict[str, list[str]] = {}
        for ln in (ckpt / "groups.jsonl").read_text().splitlines():
            row = json.loads(ln)
            if "group_id" in row:
                fates.setdefault(row["group_id"], []).append(row["fate"])
        spans: Counter[tuple[str, int, int]] = Counter()
        trained_groups: set[str] = set()
        for ln in (ckpt / "steps.jsonl").read_text().splitlines():
            for gid, idx, start, end in json.loads(ln)["pieces"]:
                trained_groups.add(gid)
                for tok in range(start, end):
                    spans[(gid, idx, tok)] += 1
        once = [f for f in fates.values() if len([x for x in f if x != "duplicate"]) == 1]
        places = Counter({g: len([x for x in f if x != "duplicate"]) for g, f in fates.items()}) + in_streams
        summary_path = next((st.run_dir / "volumes").rglob("summary.json"), None)
        state = {k.decode(): v.decode() for k, v in r.hgetall(self.keys.learner_state).items()}
        versions = {h: [v for _, v in vs] for h, vs in self.samples.engine_versions.items()}
        return {
            "written": len(written),
            "accounted_once": sum(1 for g in written if places[g] == 1),
            "lost": sorted(g for g in written if places[g] == 0)[:20],
            "counted_twice": sorted(g for g in written if places[g] > 1)[:20],
            "not_written_but_read": sorted(set(fates) - written)[:20],
            "fates": dict(Counter(x for f in fates.values() for x in f)),
            "read_once": len(once),
            "in_streams_at_end": sum(in_streams.values()),
            "trained_groups": len(trained_groups),
            "tokens_trained_twice": sum(1 for c in spans.values() if c > 1),
            "learner": state,
            "summary": json.loads(summary_path.read_text()) if summary_path else None,
            "curve": [row for row in read_metrics(summary_path.parent / "metrics.jsonl") if "accuracy_curve" in row]
            if summary_path else [],
            "curve_plots": sorted(p.name for p in (summary_path.parent / "plots").glob("accuracy_curve*.png"))
            if summary_path else [],
            "max_backlog_seen": max(self.samples.backlog, default=0),
            "max_rollouts_seen": max(self.samples.rollouts, default=0),
            "max_scored_seen": max(self.samples.scored, default=0),
            "max_backlog": MAX_BACKLOG,
            "redis_memory_max_mb": max(self.samples.memory, default=0) / 2 ** 20,
            "engine_versions": versions,
            "samples": {"t": self.samples.t, "version": self.samples.version, "rollouts": self.samples.rollouts,
                        "scored": self.samples.scored},
            "final_version": self.version(),
            "total_steps": self.total,
            "faults": [vars(f) for f in self.faults],
            "exit_codes": {},
            "wall_s": time.monotonic() - self.t0,
            "seed": self.seed,
        }


def write_markdown(report: dict[str, Any], path: Path, command: str) -> None:
    rows = "\n".join(f"| {f['name']} | {f['at_version']} | {f['injected_s']:.0f} | {_seconds(f['recovered_s'])} | "
                     f"{f['note']} |"
                     for f in report["faults"])
    summary = report["summary"] or []
    def before(s: dict[str, Any]) -> str:  # None: the driver was restarted after the stage's start
        return "—" if s["before"] is None else f"{s['before']['accuracy']:.3f}"

    stages = "\n".join(f"| {s['stage']} | {s['steps']} | {before(s)} → {s['after']['accuracy']:.3f} "
                       f"| {s['minutes']:.1f} |" for s in summary)
    curve = "\n".join(f"| {c['stage']} | {c['step']} | {c['accuracy_curve']:.3f} | "
                      f"{c.get('accuracy_curve_sampled', float('nan')):.3f} |" for c in report["curve"])
    text = f"""# Reliability of services mode

Generated by `{command}` (bench/reliability.py) on {time.strftime('%Y-%m-%d')}: the compose stack of
`deploy/compose/` run natively across hosts (one network namespace and address per part: Redis with
AOF, `init-secrets`, `init-model`, learner, 2 rollout servers, 2 reward services, driver, each part
with only its own secrets: the API token and its Redis ACL login; bench/stack.py), two short
stages ({report['total_steps']} learner steps), with these faults injected at learner steps drawn
with seed {report['seed']} (`--seed`).

| fault | at step | injected at (s) | recovered after (s) | note |
|---|---|---|---|---|
{rows}

"Recovered" is: for a killed service, until its `/readyz` answers 200 again; for Redis, the learner
and the stall, until the learner trains its next step.

## Accounting by group id

| | |
|---|---|
| groups written to the rollouts stream | {report['written']} |
| accounted for exactly once (a fate at the learner, or still in a stream) | {report['accounted_once']} |
| lost | {len(report['lost'])} |
| counted twice | {len(report['counted_twice'])} |
| fates at the learner | {report['fates']} |
| still in the streams at the end | {report['in_streams_at_end']} |
| response tokens trained twice | {report['tokens_trained_twice']} |
| largest stream lengths seen: rollouts, scored (less what the learner holds); bound {report['max_backlog']} each | {report['max_rollouts_seen']}, {report['max_scored_seen']} |
| largest sum of the two (new prompts wait while it is at {report['max_backlog']} or more) | {report['max_backlog_seen']} |
| largest Redis memory (RSS) | {report['redis_memory_max_mb']:.1f} MB |
| learner's final version (steps planned {report['total_steps']}) | {report['final_version']} |
| every rollout server on that version within (s, after the driver finished) | {_seconds(report['converged_s'])} |
| exit codes on SIGTERM at the end | {report['exit_codes']} |

A `duplicate` fate is a stream entry read again after a crash whose group the resumed checkpoint
already held: dropped by id, never trained twice.

## Stages (held-out through the services)

| stage | steps | greedy before → after | minutes |
|---|---|---|---|
{stages}

These are a few steps on a tiny model: they show the run finishing, not learning.

In-stage curve (`eval_every`): the driver's points on the stage's fixed curve subset, each at the
weight version the rollout server ran (a point no server gave within a minute would be missing).

| stage | step | greedy | sampled pass@1 |
|---|---|---|---|
{curve}

## Weight versions seen by each rollout server (sampled each second)

{chr(10).join(f'- {h}: {_runs(v)}' for h, v in report['engine_versions'].items())}

A killed rollout server starts at version 0 and catches up with the newest; a learner killed
between checkpoints resumes from its last checkpoint, and the engines follow it back by version
and checksum.
"""
    path.write_text(text)


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def _runs(values: list[int]) -> str:
    out: list[str] = []
    for v in values:
        if not out or out[-1] != str(v):
            out.append(str(v))
    return " → ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/reliability"))
    ap.add_argument("--stall-s", type=float, default=60.0)
    ap.add_argument("--cut-s", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0, help="Chooses the learner steps the faults land on.")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "reliability.md")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("error: network namespaces need root")
    report = Scenario(args.out, args.stall_s, args.cut_s, seed=args.seed).run()
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    write_markdown(report, args.doc, "python -m bench.reliability")
    print(json.dumps({k: report[k] for k in ("written", "accounted_once", "lost", "counted_twice",
                                              "tokens_trained_twice", "final_version")}, indent=2))
    signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    main()
