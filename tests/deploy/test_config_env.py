"""What the deploy files tell ringrl must be something ringrl reads: every RINGRL_<SECTION>__<FIELD>
they set names a real config field, the run configs they ship load, and every metric the dashboard
plots is one a part exports.

The run config every part reads is one whole TrainConfig (stages, tasks, sft, driver, ...); the
`serve` commands take its service sections (TrainConfig.services()).

A part whose config section (or whose metrics) is not written yet is skipped by name, not passed:
the skip reason lists what the deploy files assume of it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from protocol.config import ENV_PREFIX, describe, load_config, parse_config
from protocol.config.base import Section
from protocol.config.train import TrainConfig
from tests.deploy.manifests import (
    COMPOSE_RUN,
    DEPLOY,
    RINGRL_SERVICES,
    ROOT,
    all_ringrl_env,
    compose_env,
    container_env,
    containers,
    helm_value_variants,
    kuberay_docs,
    render,
)

FIELDS = {name for name, _, _ in describe(TrainConfig)}
ENV_WHERE = all_ringrl_env()


def _section_is_empty(name: str) -> bool:
    field = TrainConfig.model_fields.get(name)
    ann = field.annotation if field else None
    return isinstance(ann, type) and issubclass(ann, Section) and not ann.model_fields


def _dotted(env_name: str) -> str:
    return ".".join(p.lower() for p in env_name[len(ENV_PREFIX):].split("__"))


@pytest.mark.parametrize("env_name", sorted(ENV_WHERE))
def test_env_override_names_a_config_field(env_name: str) -> None:
    assert "__" in env_name, f"{env_name}: overrides are RINGRL_<SECTION>__<FIELD>"
    dotted = _dotted(env_name)
    if dotted in FIELDS:
        return
    section = dotted.split(".")[0]
    if _section_is_empty(section):
        pytest.skip(f"config section {section!r} has no fields yet; deploy assumes {dotted}")
    pytest.fail(f"{env_name} (set in {sorted(ENV_WHERE[env_name])}) is not a config field: "
                f"no {dotted} in protocol.config.describe()")


def _loadable_env(env: dict[str, str]) -> dict[str, str]:
    """The env a part would see, minus overrides for sections not written yet."""
    return {k: v for k, v in env.items()
            if k.startswith(ENV_PREFIX) and not _section_is_empty(_dotted(k).split(".")[0])}


@pytest.mark.parametrize("service", RINGRL_SERVICES)
def test_compose_config_loads_with_each_services_env(service: str) -> None:
    cfg = load_config(COMPOSE_RUN, env=_loadable_env(compose_env(service)), model=TrainConfig)
    assert cfg.stages, "run.yaml describes the run the driver runs"
    assert cfg.redis.url == "redis://redis:6379/0"
    assert cfg.learner.public_url == "http://learner:8002"
    if service == "reward":
        assert (cfg.reward.host, cfg.reward.port, cfg.reward.sandbox.backend) == ("0.0.0.0", 8001, "rlimit")
    if service == "learner":
        assert (cfg.learner.http_host, cfg.learner.http_port) == ("0.0.0.0", 8002)
        assert cfg.learner.checkpoint_dir == "/data/checkpoints"
    if service == "driver":
        assert cfg.driver.rollout_urls == ["http://rollout:8000"]
        assert (cfg.driver.reward_url, cfg.driver.host, cfg.driver.port) == ("http://reward:8001", "0.0.0.0", 8003)


def _run_yaml(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    return yaml.safe_load(cm["data"]["run.yaml"])


@pytest.mark.parametrize("variant", helm_value_variants())
def test_helm_config_loads_with_each_pods_env(variant: str) -> None:
    docs = render(helm_value_variants()[variant])
    raw = _run_yaml(docs)
    seen = 0
    for obj in docs:
        for c in containers(obj):
            if c.get("args", [None])[0] != "serve":
                continue
            cfg = parse_config(raw, f"{variant}:{c['name']}", env=_loadable_env(container_env(c)),
                               model=TrainConfig)
            assert cfg.redis.url and cfg.learner.public_url.startswith("http://demo-ringrl-learner:")
            seen += 1
    assert seen == 4  # rollout, reward, learner, driver


RUN_SECTIONS = ("model", "tasks", "sft", "selection", "stages", "eval_size", "eval_samples")


def test_compose_and_helm_describe_the_same_run() -> None:
    """Both ship the embedded demo's run in services mode; they must not drift apart."""
    compose_cfg = load_config(COMPOSE_RUN, env={}, model=TrainConfig)
    helm_cfg = parse_config(_run_yaml(render({})), "helm", env={}, model=TrainConfig)
    for section in RUN_SECTIONS:
        assert getattr(compose_cfg, section) == getattr(helm_cfg, section), section


def test_kuberay_config_loads() -> None:
    docs = kuberay_docs()
    raw = _run_yaml(docs)
    for obj in docs:
        for c in containers(obj):
            parse_config(raw, f"kuberay:{c['name']}", env=_loadable_env(container_env(c)), model=TrainConfig)


def test_a_wrong_override_is_caught() -> None:
    # The check above is only worth something if a misspelt override fails to load.
    with pytest.raises(ValueError, match="reward.sandbox.backnd"):
        load_config(COMPOSE_RUN, env={"RINGRL_REWARD__SANDBOX__BACKND": "rlimit"}, model=TrainConfig)


# --- metrics the dashboard plots ---------------------------------------------------------------

OWNERS = {"ringrl_rollout_": "rollout_service", "ringrl_reward_": "reward_service",
          "ringrl_learner_": "learner"}
_SUFFIX = re.compile(r"_(total|bucket|sum|count|created)$")


def _dashboard_metrics() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "ringrl.json").read_text())
    names = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            names |= set(re.findall(r"\bringrl_[a-z0-9_]+", target["expr"]))
    return sorted(names)


def _declared(package: str) -> str:
    return "\n".join(p.read_text() for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("series", _dashboard_metrics())
def test_dashboard_metric_is_exported(series: str) -> None:
    base = series
    candidates = {series}
    if _SUFFIX.search(series):
        base = _SUFFIX.sub("", series)
        candidates.add(base)
    package = next(pkg for prefix, pkg in OWNERS.items() if series.startswith(prefix))
    source = _declared(package) + _declared("protocol")
    if any(f'"{name}"' in source for name in candidates):
        return
    prefix = next(prefix for prefix, pkg in OWNERS.items() if pkg == package)
    if f'"{prefix}' not in _declared(package):
        pytest.skip(f"{package} declares no {prefix}* metrics yet; dashboard assumes {base}")
    pytest.fail(f"dashboard plots {series}, but {package} declares no metric {base!r}")
