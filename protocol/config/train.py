"""The config of `ringrl train`: the service sections plus model, data, SFT, selection and stages."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from protocol.config.base import Section
from protocol.config.cluster import ClusterConfig
from protocol.config.driver import DriverConfig
from protocol.config.model import ModelSection
from protocol.config.run import RunSection
from protocol.config.run_config import RunConfig
from protocol.config.selection import SelectionConfig
from protocol.config.sft import SFTConfig
from protocol.config.tasks import TASK_OF, Source, TasksConfig
from protocol.schema import TaskKind

DEFAULT_CONFIG = Path(__file__).parent / "default.yaml"
"""The embedded demo `ringrl train` runs when given no config."""


class StageConfig(Section):
    name: str = Field(description="Stage name (metrics, checkpoints and groups carry it).")
    sources: list[Source] = Field(
        description="Task generators the stage's prompts come from (all of one task kind); the config's "
                    "JSONL items of that kind join them.")
    task: TaskKind | None = Field(
        default=None, description="The stage's task kind (math or code); default: its sources' kind. Set it "
                                  "when sources is empty, to train on the JSONL items of that kind only.")
    steps: int = Field(default=100, gt=0, description="Optimiser steps of this stage.")
    token_budget: int = Field(default=4096, gt=0, description="C3PO: response tokens per optimiser step.")
    max_new_tokens: int = Field(default=48, gt=0, description="Length limit of a response.")
    n: int = Field(default=8, gt=1, description="Responses per prompt (group size).")
    lr: float = Field(default=3e-4, gt=0, description="Peak learning rate of the stage.")
    warmup_steps: int = Field(default=5, ge=0, description="Warm-up steps at the start of the stage.")
    prompts_per_round: int = Field(
        default=16, gt=0, description="Prompts handed to the engine at a time (sync mode: per step).")
    replay_sources: list[Source] = Field(
        default_factory=list,
        description="Earlier stages' sources whose train prompts are mixed in, so that this stage does not "
                    "unlearn them; they get this stage's length limit and are not in its held-out measure.")
    replay_share: float = Field(
        default=0.0, ge=0, lt=1, description="Share of the stage's prompts drawn from replay_sources.")
    feed: Literal["uniform", "pass_rate"] = Field(
        default="uniform",
        description="uniform: the stage's items in shuffled epochs. pass_rate: items whose last feed_window "
                    "groups were all correct or all wrong (filtered: they teach nothing) are drawn "
                    "feed_floor times as often as the others (embedded `ringrl train`).")
    feed_window: int = Field(default=2, gt=0, description="pass_rate feed: recent groups per item it looks at.")
    feed_floor: float = Field(
        default=0.1, gt=0, le=1, description="pass_rate feed: relative weight of an item that taught nothing lately.")


def stage_kind(stage: StageConfig) -> TaskKind:
    """The stage's one task kind (the config check guarantees there is one)."""
    return stage.task or TASK_OF[stage.sources[0]]


class TrainConfig(RunConfig):
    model: ModelSection = Field(default_factory=ModelSection, description="Model to train.")
    tasks: TasksConfig = Field(default_factory=TasksConfig, description="Task data (generated or JSONL).")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Distillation before RL.")
    selection: SelectionConfig = Field(default_factory=SelectionConfig,
                                       description="Entropy-based choice of the SFT checkpoint.")
    stages: list[StageConfig] = Field(
        default_factory=lambda: [StageConfig(name="math", sources=["chain_sum", "leg_counting"]),
                                 StageConfig(name="code", sources=["legs_fn"])],
        description="RL stages in order; each starts from the last weights of the one before.")
    asynchronous: bool = Field(
        default=True, alias="async",
        description="true: rollouts stream while the learner trains; false: generate, score, train in turn.")
    learner_threads: int = Field(
        default=1, gt=0, description="torch threads of the learner actor (keep engine + learner <= cores).")
    reward_workers: int = Field(default=1, gt=0, description="Reward worker actors.")
    eval_size: int = Field(default=100, ge=0, description="Held-out items per source for eval after each stage.")
    eval_every: int = Field(
        default=0, ge=0,
        description="Inside a stage: a held-out measure every this many steps (and at the stage's "
                    "start and end) on eval_curve_items of its held-out items, spread over its sources, "
                    "through the stage's engine at its current weights (the `accuracy_curve` plots, greedy "
                    "and sampled); 0: only the full measures before and after each stage.")
    eval_curve_items: int = Field(
        default=32, gt=0, description="Held-out items per stage in the in-stage curve (a fixed subset).")
    eval_curve_samples: int = Field(
        default=4, ge=0, le=64,
        description="Sampled responses (T=1, the run's seed) per curve item for the in-stage sampled pass@1 "
                    "(`accuracy_curve_sampled`), next to the greedy measure; 0: greedy only.")
    eval_samples: int = Field(
        default=4, gt=0, description="Sampled responses (T=1) per held-out item for the sampled pass@1 "
                                     "reported next to greedy accuracy.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig,
                                   description="Ray: local or a cluster to join, engines, resources per actor.")
    driver: DriverConfig = Field(default_factory=DriverConfig,
                                 description="Services mode: the driver that runs the stages (`ringrl serve driver`).")

    model_config = {**RunConfig.model_config, "populate_by_name": True}

    def services(self) -> RunConfig:
        """The service sections alone: what `ringrl serve learner|rollout|reward` run on, so that
        every part of a deployment can read the same file."""
        return RunConfig.model_validate(self.model_dump(include=set(RunConfig.model_fields)))

    @model_validator(mode="after")
    def _stage_names_unique(self) -> "TrainConfig":
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return self

    @model_validator(mode="after")
    def _stages_one_task_kind(self) -> "TrainConfig":
        # One length limit and token budget serve all of a stage's prompts, and the recipe trains
        # math and code in separate stages.
        for stage in self.stages:
            kinds = {TASK_OF[s].value for s in stage.sources} | ({stage.task.value} if stage.task else set())
            if not kinds:
                raise ValueError(f"stage {stage.name}: no sources; set task (math or code) to train on the "
                                 "JSONL items of that kind")
            if len(kinds) > 1:
                raise ValueError(f"stage {stage.name}: sources mix task kinds {sorted(kinds)}; "
                                 "give each kind its own stage (earlier kinds can come back as replay_sources)")
            if bool(stage.replay_sources) != (stage.replay_share > 0):
                raise ValueError(f"stage {stage.name}: replay_sources and replay_share > 0 go together; "
                                 "set both or neither")
        return self


class SFTRunConfig(Section):
    """`ringrl sft`: distillation alone."""

    run: RunSection = Field(default_factory=RunSection, description="Run identity and outputs.")
    model: ModelSection = Field(default_factory=ModelSection, description="The model SFT starts from.")
    tasks: TasksConfig = Field(default_factory=TasksConfig, description="Training and held-out data.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Distillation settings.")
