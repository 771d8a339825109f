"""`ringrl serve driver`: the run's stages against running services (services mode).

The driver owns the prompts and the plan; the services own everything else. Per stage it writes the
plan (stage, last step, budget, lr) that the learner follows, feeds the stage's prompts to every
rollout server that answers (POST /v1/rollouts, keeping at most `driver.max_queued_prompts` queued
on each: the rollout's own gate bounds backlog and staleness), resubmits prompts a stopping rollout
server handed back, logs every learner step from the run's steps stream, and measures held-out
accuracy before and after the stage through the services (greedy and sampled completions from a
rollout server that runs the stage's final version, scored by the reward API), and with `eval_every`
the in-stage curve on a fixed subset of those items, as `ringrl train` does. It writes the same
metrics.jsonl, TensorBoard, plots and summary.json as `ringrl train`.

Restartable: the stages already finished (learner version at or past their last step) are skipped,
metrics.jsonl is appended to, and returned prompts are read through a consumer group.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml
from rich.console import Console

from protocol.auth import load_tokens
from protocol.config.train import StageConfig, TrainConfig
from protocol.queue import queue_client
from protocol.streams import Plan, RunKeys
from protocol.supervise import Supervisor
from recipe.held_out import curve_items, curve_row, held_out_items
from recipe.plots import plot_metrics
from recipe.prompts import prompt_stream, stage_items
from recipe.run_log import RunLog
from recipe.tasks import TaskItem

log = logging.getLogger("ringrl.driver")
DRIVER_GROUP = "driver"


def score_item(item: TaskItem, text: str) -> dict[str, Any]:
    ref = item.reference
    body: dict[str, Any] = {"task": item.task.value, "response": text}
    if ref.kind == "math":
        body["answer"] = ref.answer  # type: ignore[union-attr]
    else:
        body["tests"] = ref.model_dump(exclude={"kind"})
    return body


class ServiceDriver:
    def __init__(self, cfg: TrainConfig, console: Console, supervisor: Supervisor) -> None:
        if not cfg.redis.url:
            raise ValueError("redis.url: the driver reads the learner's progress from the run's Redis")
        self.cfg, self.console, self.supervisor = cfg, console, supervisor
        self.dc = cfg.driver
        self.keys = RunKeys(cfg.run.name)
        self.client = queue_client(cfg.redis)
        self.http = httpx.Client(timeout=self.dc.http_timeout_s, trust_env=False,
                                 headers=load_tokens(cfg.auth).headers())
        self.out = Path(cfg.run.output_dir) / cfg.run.name
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True),
                                                             sort_keys=False))
        self.log = RunLog(self.out, console, append=True)
        self.stage: StageConfig | None = None
        self._prompts: Any = None
        self._prompts_lock = threading.Lock()
        self.status: dict[str, Any] = {"stage": None, "done": False, "fed": 0, "resubmitted": 0}
        self._steps_cursor = b"0-0"
        self._logged = {int(r["step"]) for r in self.log.rows if "loss" in r}  # a restarted driver
        try:
            self.client.xgroup_create(self.keys.returned, DRIVER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ---- services -----------------------------------------------------------------------
    def wait_ready(self, timeout_s: float = 600.0) -> None:
        """Until the reward API, one rollout server and the learner's state answer."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and not self.supervisor.stop.is_set():
            ok_reward = self._get(f"{self.dc.reward_url}/readyz") is not None
            ok_rollout = any(self._get(f"{u}/readyz") is not None for u in self.dc.rollout_urls)
            ok_learner = self.client.exists(self.keys.learner_state)
            if ok_reward and ok_rollout and ok_learner:
                return
            log.info("waiting for services: reward %s, rollout %s, learner %s", ok_reward, ok_rollout,
                     bool(ok_learner))
            self.supervisor.stop.wait(2.0)
        raise TimeoutError("services not ready in time (reward /readyz, a rollout /readyz, learner state)")

    def _get(self, url: str) -> dict[str, Any] | None:
        try:
            r = self.http.get(url, timeout=5.0)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def learner_version(self) -> int:
        v = self.client.hget(self.keys.learner_state, "version")
        return int(v) if v is not None else 0

    # ---- feeding ------------------------------------------------------------------------
    def _next_prompts(self, k: int) -> list[dict[str, Any]]:
        with self._prompts_lock:
            if self._prompts is None or self.stage is None:
                return []
            stage = self.stage
            out = [next(self._prompts) for _ in range(k)]
        for p in out:
            p.update(n=stage.n, sampling={"max_tokens": stage.max_new_tokens})
        return out

    def _post(self, url: str, prompts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Submit; returns the prompts the server did not take (to be offered again)."""
        try:
            r = self.http.post(f"{url}/v1/rollouts", json={"prompts": prompts})
        except httpx.HTTPError:
            return prompts
        if r.status_code == 202:
            return []
        if r.status_code in (429, 503):  # full or stopping: the first `taken` were accepted
            detail = str(r.json().get("detail", ""))
            taken = detail.split(": ", 1)[-1].split(" of ")[0]
            return prompts[int(taken):] if taken.isdigit() else prompts
        log.error("rollout %s refused prompts: %s %s", url, r.status_code, r.text[:300])
        return []  # a 4xx names a prompt the stage cannot use; offering it again cannot help

    def feed(self, url: str) -> None:
        """One rollout server's feeder (a supervised loop): keep it supplied while a stage runs."""
        leftover: list[dict[str, Any]] = []
        while not self.supervisor.stop.is_set():
            health = self._get(f"{url}/healthz") if self.stage is not None else None
            if health is None:
                self.supervisor.stop.wait(self.dc.poll_s)
                continue
            stats = health.get("rollouts", {})
            if stats.get("pending", 0) >= self.dc.max_queued_prompts:
                self.supervisor.stop.wait(self.dc.poll_s)
                continue
            batch = leftover or self._returned(self.dc.prompts_per_request) or \
                self._next_prompts(self.dc.prompts_per_request)
            if not batch:
                self.supervisor.stop.wait(self.dc.poll_s)
                continue
            leftover = self._post(url, batch)
            if leftover:
                self.supervisor.stop.wait(self.dc.poll_s)
            else:
                self.status["fed"] += len(batch)

    def _returned(self, k: int) -> list[dict[str, Any]]:
        """Prompts a stopping rollout server handed back, for this stage (acked once read: a
        resubmission that fails is offered again by the feeder itself)."""
        resp = self.client.xreadgroup(DRIVER_GROUP, "driver", {self.keys.returned: ">"}, count=k)
        out = []
        for _, rows in resp or []:
            for eid, fields in rows:
                prompt = json.loads(fields[b"prompt"])
                if self.stage is not None and prompt.get("stage") == self.stage.name:
                    out.append(prompt)
                self.client.xack(self.keys.returned, DRIVER_GROUP, eid)
                self.client.xdel(self.keys.returned, eid)
        self.status["resubmitted"] += len(out)
        return out

    # ---- measuring ----------------------------------------------------------------------
    def _rollout_at(self, version: int, timeout_s: float = 600.0) -> tuple[str, int]:
        """A rollout server that runs `version` or later (they follow the learner's weights), and the
        version it runs."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for url in self.dc.rollout_urls:
                w = self._get(f"{url}/v1/weights")
                if w is not None and w.get("version", -1) >= version:
                    return url, int(w["version"])
            self.supervisor.stop.wait(1.0)
        raise TimeoutError(f"no rollout server reached weight version {version}")

    def _mean_reward(self, url: str, stage: StageConfig, items: list[TaskItem], temperature: float,
                     n: int) -> float:
        """Mean reward of `n` responses per item (the run's seed), generated by the rollout server
        at `url` and scored by the reward API."""
        rewards: list[float] = []
        for i in range(0, len(items), 32):
            chunk = items[i:i + 32]
            r = self.http.post(f"{url}/v1/completions", json={
                "model": self.cfg.rollout.served_model_name, "prompt": [it.prompt for it in chunk], "n": n,
                "max_tokens": stage.max_new_tokens, "temperature": temperature, "seed": self.cfg.run.seed})
            r.raise_for_status()
            texts = [c["text"] for c in r.json()["choices"]]
            scored = self.http.post(f"{self.dc.reward_url}/v1/score", json={
                "items": [score_item(chunk[j // n], t) for j, t in enumerate(texts)]})
            scored.raise_for_status()
            rewards += [x["reward"] for x in scored.json()["results"]]
        return sum(rewards) / max(len(rewards), 1)

    def held_out(self, stage: StageConfig, version: int) -> dict[str, float]:
        """Greedy and sampled pass@1 on the stage's held-out items, generated by a rollout server at
        `version`."""
        url, _ = self._rollout_at(version)
        items = held_out_items(self.cfg, stage)
        return {"accuracy": self._mean_reward(url, stage, items, 0.0, 1),
                "accuracy_sampled": self._mean_reward(url, stage, items, 1.0, self.cfg.eval_samples)}

    def curve_point(self, stage: StageConfig, items: list[TaskItem], step: int, first: int) -> None:
        """One point of the in-stage curve: the curve items through a rollout server at `step` or
        later, logged at the version it ran. A point that cannot be measured in a minute (servers
        failing over) is skipped with a warning: the curve is a view of the run, not part of it."""
        try:
            url, version = self._rollout_at(step, timeout_s=60.0)
            greedy = self._mean_reward(url, stage, items, 0.0, 1)
            samples = self.cfg.eval_curve_samples
            sampled = self._mean_reward(url, stage, items, 1.0, samples) if samples else None
        except (httpx.HTTPError, TimeoutError, ValueError, KeyError) as exc:
            log.warning("stage %s: curve point at step %d skipped (%s: %s)", stage.name, step,
                        type(exc).__name__, exc)
            return
        self.log.log(curve_row(stage.name, version, version - first, version, greedy, sampled))

    # ---- the run ------------------------------------------------------------------------
    def _log_steps(self, stage: StageConfig, first_step: int) -> int:
        """Learner steps since the last call, as metrics rows; returns the newest version seen."""
        newest = -1
        for _, rows in self.client.xread({self.keys.steps: self._steps_cursor}, count=1000) or []:
            for eid, fields in rows:
                self._steps_cursor = eid
                row = json.loads(fields[b"m"])
                v = int(row["version"])
                newest = max(newest, v)
                if row.get("stage") == stage.name and v > first_step and v not in self._logged:
                    self._logged.add(v)
                    self.log.log({**row, "step": v, "stage": stage.name, "stage_step": v - first_step,
                                  "wall_s": time.monotonic()})
        return newest

    def _finish_stage(self, stage: StageConfig, before: dict[str, float] | None, last_step: int, t0: float,
                      summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Measure the stage's end, add it to summary.json (before: None when a restarted driver
        found the stage already trained)."""
        after = self.held_out(stage, last_step)
        self.log.log({"step": last_step, "stage": stage.name, **after})
        state = {k.decode(): v.decode() for k, v in self.client.hgetall(self.keys.learner_state).items()}
        summaries = [x for x in summaries if x["stage"] != stage.name]
        summaries.append({**self.status, "stage": stage.name, "steps": stage.steps, "before": before,
                          "after": after, "minutes": (time.monotonic() - t0) / 60, "learner": state})
        (self.out / "summary.json").write_text(json.dumps(summaries, indent=2))
        return summaries

    def run(self) -> list[dict[str, Any]]:
        self.wait_ready()
        for url in self.dc.rollout_urls:
            self.supervisor.start(f"feed {url}", lambda u=url: self.feed(u))
        done_before = self.out / "summary.json"  # a restarted driver keeps the stages it measured
        summaries: list[dict[str, Any]] = json.loads(done_before.read_text()) if done_before.is_file() else []
        last_step = 0
        version = self.learner_version()
        for stage in self.cfg.stages:
            first, last_step = last_step, last_step + stage.steps
            t0 = time.monotonic()
            if version >= last_step:
                if any(x["stage"] == stage.name for x in summaries):
                    log.info("stage %s: already trained and measured", stage.name)
                    continue
                # Trained while no driver ran (it was restarted): log its steps, measure where it ended.
                log.info("stage %s: trained (learner at version %d); measuring it", stage.name, version)
                self._log_steps(stage, first)
                summaries = self._finish_stage(stage, None, last_step, t0, summaries)
                continue
            before: dict[str, float] | None = self.held_out(stage, version)
            self.log.log({"step": version, "stage": stage.name, **before})
            curve, every, measured = curve_items(self.cfg, stage), self.cfg.eval_every, version
            if curve and version == first:  # a restarted driver does not measure a start it did not see
                self.curve_point(stage, curve, first, first)
            items, replay = stage_items(self.cfg, stage)
            with self._prompts_lock:
                self._prompts = prompt_stream(items, stage, self.cfg.run.seed + first, replay)
                self.stage = stage
            self.client.hset(self.keys.plan, mapping=Plan(stage.name, last_step, stage.token_budget,
                                                          stage.lr).to_redis())
            self.status["stage"] = stage.name
            self.console.rule(f"stage {stage.name}: steps {first + 1}..{last_step}, {len(items)} prompts")
            while version < last_step:
                if self.supervisor.stop.wait(self.dc.poll_s):
                    return summaries
                if self.dc.stage_timeout_s and time.monotonic() - t0 > self.dc.stage_timeout_s:
                    raise TimeoutError(f"stage {stage.name}: not finished after {self.dc.stage_timeout_s:.0f}s")
                version = max(version, self._log_steps(stage, first), self.learner_version())
                if curve and version < last_step and (version - first) // every > (measured - first) // every:
                    self.curve_point(stage, curve, version, first)  # every `every` steps, or past several
                    measured = version
            with self._prompts_lock:
                self.stage = None  # feeders stop; what is in flight is counted stale by the next stage
            self._log_steps(stage, first)
            if curve:
                self.curve_point(stage, curve, last_step, first)
            summaries = self._finish_stage(stage, before, last_step, t0, summaries)
        plot_metrics(self.log.rows, self.out / "plots")
        self.status["done"] = True
        self.console.print(f"driver: all stages done; {self.out / 'summary.json'}, plots in {self.out / 'plots'}")
        return summaries
