"""`ringrl train`: the whole Ring-lite recipe in one run — SFT, entropy-based checkpoint choice,
then the RL stages in order, each starting from the last weights of the one before."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from protocol.config.train import StageConfig, TrainConfig
from recipe.cluster import Placement, cluster_address, start_ray
from recipe.distil import distil, prepare_model
from recipe.evaluate import Gain, Outcomes, outcomes, paired_gain
from recipe.held_out import curve_items, curve_row, held_out_items
from recipe.plots import plot_metrics
from recipe.progress import (
    PROGRESS_FILE,
    FinishedStage,
    RunProgress,
    resumed_stage_step,
)
from recipe.prompts import stage_items
from recipe.run_log import RunLog
from recipe.stage import StageResult, StageRunner
from recipe.tasks import build_tasks
from reward_service.scorer import Scorer


@dataclass(frozen=True)
class StageSummary:
    """Held-out results, item by item, of the checkpoints that tell whether a stage helped."""
    name: str
    steps: int
    sft_start: Outcomes  # the chosen SFT checkpoint on this stage's sources: what RL must beat
    before: Outcomes  # at the stage's start: after the stages before it
    after: Outcomes
    final: Outcomes  # the run's last weights: what the stages after this one left of its gain
    seconds: float
    accounting: dict[str, int]

    def gains(self) -> dict[str, Gain]:
        return {"after_greedy": paired_gain(self.sft_start, self.after),
                "after_sampled": paired_gain(self.sft_start, self.after, sampled=True),
                "final_greedy": paired_gain(self.sft_start, self.final),
                "final_sampled": paired_gain(self.sft_start, self.final, sampled=True)}

    def as_dict(self) -> dict[str, Any]:
        acc = {name: {"greedy": o.greedy_accuracy(), "sampled": o.sampled_accuracy(), "items": len(o.items)}
               for name, o in (("sft_start", self.sft_start), ("before", self.before), ("after", self.after),
                               ("final", self.final))}
        return {"stage": self.name, "steps": self.steps, "minutes": self.seconds / 60, **acc,
                "gain_vs_sft_start": {k: asdict(g) for k, g in self.gains().items()}, "accounting": self.accounting}


def choose_start(cfg: TrainConfig, checkpoints: list[str], console: Console, scorer: Scorer) -> str:
    from recipe.selection import select_checkpoint

    if len(checkpoints) == 1:
        return checkpoints[0]
    console.rule("checkpoint selection (entropy band)")
    sel = cfg.selection
    probe = build_tasks(cfg.tasks.model_copy(update={"train_size": sel.probe_size}), "train")
    held = build_tasks(cfg.tasks.model_copy(update={"held_out_size": sel.eval_size}), "held_out")
    chosen, _ = select_checkpoint(checkpoints, probe, held, sel, console, scorer)
    return chosen.path


def held_out(cfg: TrainConfig, path: str, stage: StageConfig, scorer: Scorer) -> Outcomes:
    return outcomes(path, held_out_items(cfg, stage), scorer, samples=cfg.eval_samples,
                    max_new_tokens=stage.max_new_tokens, seed=cfg.run.seed)


def run_stage(cfg: TrainConfig, stage: StageConfig, path: str, version: int, step0: int, place: Placement,
              out: Path, log: RunLog, console: Console, scorer: Scorer) -> StageResult:
    items, replay = stage_items(cfg, stage)
    # A fixed held-out subset through the stage's own engine: cheap enough to draw the stage's
    # learning curve between the full measures before and after it.
    curve = curve_items(cfg, stage)

    def measure_curve(step: int, stage_step: int) -> None:
        version, greedy, sampled = runner.curve_accuracy(curve, scorer, cfg.eval_curve_samples, cfg.run.seed)
        log.log(curve_row(stage.name, step, stage_step, version, greedy, sampled))

    mixed = f" (+{stage.replay_share:.0%} replay of {', '.join(stage.replay_sources)})" if replay else ""
    console.rule(f"RL stage {stage.name}: {len(items)} prompts{mixed}, {stage.steps} steps x "
                 f"{stage.token_budget} tokens ({'async' if cfg.asynchronous else 'sync'})")
    runner = StageRunner(cfg, stage, items, replay, path, version, place, out / "stages" / stage.name)
    try:
        with Progress(TextColumn(f"[bold]{stage.name}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            done = runner.steps_done  # resumed: the steps its learner checkpoint already holds
            task = bar.add_task(stage.name, total=stage.steps, completed=done)
            if curve and not done:
                measure_curve(step0, 0)
            last_t, last_tokens = time.monotonic(), runner.rollout_stats()["tokens_written"]
            for i in range(done, stage.steps):
                m = runner.step()
                now, gen = time.monotonic(), runner.rollout_stats()["tokens_written"]
                row: dict[str, Any] = {**m, "step": step0 + i + 1, "stage": stage.name, "stage_step": i + 1,
                                       "rollout_tok_s": (gen - last_tokens) / (now - last_t),
                                       "train_tok_s": m["tokens"] / max(m["step_time_s"], 1e-9),
                                       "wall_s": now}
                last_t, last_tokens = now, gen
                log.log(row)
                bar.advance(task)
                if curve and ((i + 1) % cfg.eval_every == 0 or i + 1 == stage.steps):
                    measure_curve(step0 + i + 1, i + 1)
    except BaseException:
        runner.emergency_checkpoint()
        raise
    return runner.finish(out / "stages" / stage.name / "final")


def summary_table(rows: list[StageSummary]) -> Table:
    t = Table(title="ringrl train: held-out accuracy per stage (greedy; sampled = mean pass@1 at T=1); "
                    "± = 95% interval of the paired per-item gain over the SFT start")
    for col in ("stage", "steps", "greedy: SFT start", "before → after", "after vs SFT", "sampled: SFT → after",
                "after vs SFT", "final weights vs SFT (greedy)", "min", "groups", "tokens", "filtered", "stale"):
        t.add_column(col, justify="right")
    for r in rows:
        a, g = r.accounting, r.gains()
        t.add_row(r.name, str(r.steps), f"{r.sft_start.greedy_accuracy():.3f}",
                  f"{r.before.greedy_accuracy():.3f} → {r.after.greedy_accuracy():.3f}", str(g["after_greedy"]),
                  f"{r.sft_start.sampled_accuracy():.3f} → {r.after.sampled_accuracy():.3f}", str(g["after_sampled"]),
                  f"{r.final.greedy_accuracy():.3f} ({g['final_greedy']})",
                  f"{r.seconds / 60:.1f}", str(a.get("generated_groups", "")), str(a.get("tokens_trained", "")),
                  str(a.get("groups_filtered", "")), str(a.get("groups_stale", "")))
    return t


def verdicts(rows: list[StageSummary]) -> list[str]:
    """One line per stage: is it above the SFT start beyond noise, right after it and at the end?"""
    def said(gain: Gain) -> str:
        return f"{'clearly above' if gain.clear else 'not clearly above'} ({gain})"

    lines = []
    for r in rows:
        g = r.gains()
        lines.append(f"{r.name} vs the SFT start on {g['after_greedy'].items} distinct held-out items: after its "
                     f"stage, sampled {said(g['after_sampled'])}, greedy {said(g['after_greedy'])}; final weights, "
                     f"sampled {said(g['final_sampled'])}, greedy {said(g['final_greedy'])}")
    return lines


def train(cfg: TrainConfig, console: Console, resume: bool = False) -> list[StageSummary]:
    """The whole recipe; with `resume`, what `progress.json` in the run's folder says is done is not
    done again, and a stage killed midway goes on from its learner's newest checkpoint."""
    import ray

    out = Path(cfg.run.output_dir) / cfg.run.name
    out.mkdir(parents=True, exist_ok=True)
    progress = RunProgress.load(out) if resume else RunProgress()
    if not resume:  # an earlier run's stage checkpoints in this folder would be resumed silently
        shutil.rmtree(out / "stages", ignore_errors=True)
        (out / PROGRESS_FILE).unlink(missing_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False))
    place = start_ray(cfg, out)
    if place.joined:
        console.print(f"joined the Ray cluster at {cluster_address(cfg)}: "
                      f"{ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs")
    log = RunLog(out, console, append=resume)
    if progress.current:  # the killed stage's steps after its newest checkpoint happen again
        log.drop_after(progress.current["name"], resumed_stage_step(out, progress.current))
    scorer: Scorer | None = None
    try:
        # One Scorer scores every held-out figure with the reward settings training uses. Its
        # sandboxes take uid range 0, the HTTP server's, which no embedded run starts.
        scorer = Scorer(cfg.reward)
        if progress.start:
            path = progress.start
            console.print(f"resuming {out}: RL starts from {path}; done: {', '.join(progress.finished) or 'no stage'}")
        else:
            start = time.monotonic()
            init = prepare_model(cfg.model, cfg.tasks, cfg.run.seed, out, console)
            sft = cfg.sft.model_copy(update={"init_model": init, "output_dir": str(out / "sft")})
            path = choose_start(cfg, distil(sft, cfg.tasks, console), console, scorer) \
                if sft.max_minutes or sft.max_steps else init
            log.log({"step": 0, "sft_minutes": (time.monotonic() - start) / 60}, line=False)
            # Every stage's sources on the start checkpoint, so a later stage's gain is also measured
            # against SFT and not only against what the stages before it left (they can cost accuracy).
            progress.start = path
            progress.sft_start = {stage.name: held_out(cfg, path, stage, scorer) for stage in cfg.stages}
            progress.save(out)
        sft_start = progress.sft_start
        version, step = 0, 0
        measured: list[tuple[StageResult, Outcomes, Outcomes, float]] = []  # result, before, after, seconds
        for stage in cfg.stages:
            done = progress.finished.get(stage.name)
            if done is not None:
                measured.append((done.result, done.before, done.after, done.seconds))
                path, version, step = done.result.model_path, done.result.version, step + done.result.steps
                continue
            t0 = time.monotonic()
            if progress.current.get("name") == stage.name:
                before = progress.current["before"]
                console.print(f"resuming stage {stage.name} from its newest learner checkpoint")
            else:
                unchanged = version == 0  # no stage has trained yet: the SFT start was just measured
                before = sft_start[stage.name] if unchanged else held_out(cfg, path, stage, scorer)
                log.log({"step": step, "stage": stage.name, "accuracy": before.greedy_accuracy(),
                         "accuracy_sampled": before.sampled_accuracy()})
                progress.current = {"name": stage.name, "version": version, "step": step, "before": before}
                progress.save(out)
            result = run_stage(cfg, stage, path, version, step, place, out, log, console, scorer)
            after = held_out(cfg, result.model_path, stage, scorer)
            step += result.steps
            log.log({"step": step, "stage": stage.name, "accuracy": after.greedy_accuracy(),
                     "accuracy_sampled": after.sampled_accuracy()})
            seconds = time.monotonic() - t0  # of this process: a resumed stage counts from its resume
            measured.append((result, before, after, seconds))
            (out / "stages" / stage.name / "accounting.yaml").write_text(yaml.safe_dump(result.accounting))
            (out / "stages" / stage.name / "placement.yaml").write_text(yaml.safe_dump(result.placement))
            progress.finished[stage.name] = FinishedStage(result, before, after, seconds)
            progress.current = {}
            progress.save(out)
            path, version = result.model_path, result.version
        # The last stage's "after" already is the final weights on its sources.
        finals = [held_out(cfg, path, stage, scorer) for stage in cfg.stages[:-1]] + [measured[-1][2]]
        summaries = [StageSummary(stage.name, res.steps, sft_start[stage.name], before, after, final, sec,
                                  res.accounting)
                     for stage, (res, before, after, sec), final in zip(cfg.stages, measured, finals)]
        (out / "summary.json").write_text(json.dumps([r.as_dict() for r in summaries], indent=2))
        plots = plot_metrics(log.rows, out / "plots")
        console.print(summary_table(summaries))
        for line in verdicts(summaries):
            console.print(line)
        console.print(f"final weights: {path}\nplots: {', '.join(str(p) for p in plots)}\n"
                      f"metrics: {log.path}   tensorboard: {out / 'tensorboard'}")
        return summaries
    finally:
        if scorer is not None:
            scorer.close()
        log.close()
        ray.shutdown()
        if place.redis is not None:
            place.redis.stop()
