"""The compose stack, statically: valid against the Compose spec (and Debian docker-compose when
installed), every long-running service healthchecked, start order gated on health (and on the
one-shot init-model's exit), Prometheus and Grafana wired to what runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.deploy.manifests import (
    COMPOSE,
    DEPLOY,
    ONE_SHOT,
    RINGRL_SERVICES,
    compose,
    compose_env,
)

EXPECTED = {"redis", "init-model", "rollout", "reward", "learner", "driver", "prometheus", "grafana"}


def test_compose_spec_schema() -> None:
    res = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                          "vendor.compose-spec", str(COMPOSE)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="Debian docker-compose not installed (check-jsonschema still checks)")
def test_docker_compose_config() -> None:
    res = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "--services"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert set(res.stdout.split()) == EXPECTED


def test_every_service_has_a_healthcheck() -> None:
    services = compose()["services"]
    assert set(services) == EXPECTED
    for name, svc in services.items():
        if name in ONE_SHOT:
            # Waited for by its exit status; the image's probe would mark it unhealthy meanwhile.
            assert svc["healthcheck"] == {"disable": True} and svc["restart"] == "no", name
            continue
        test = svc.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"


def test_dependencies_wait_for_health() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            if dep in ONE_SHOT:
                assert cond == {"condition": "service_completed_successfully"}, f"{name} -> {dep}"
                continue
            assert cond == {"condition": "service_healthy"}, f"{name} -> {dep}"
            assert "healthcheck" in services[dep]
    assert set(services["rollout"]["depends_on"]) == {"redis", "init-model", "learner"}
    assert set(services["reward"]["depends_on"]) == {"redis"}
    assert set(services["learner"]["depends_on"]) == {"redis", "init-model"}
    assert set(services["driver"]["depends_on"]) == {"redis", "learner", "rollout", "reward"}
    assert "depends_on" not in services["init-model"]


def test_init_model_writes_the_model_the_parts_start_from() -> None:
    """The one-shot writes the starting model where run.yaml tells rollout and learner to find it,
    on the volume they mount, as a user that can run the sandbox (checkpoint choice scores code)."""
    from protocol.config import load_config
    from protocol.config.train import TrainConfig
    from tests.deploy.manifests import COMPOSE_RUN

    services = compose()["services"]
    init = services["init-model"]
    assert init["command"][:1] == ["init-model"] and init["command"][2] == "/etc/ringrl/run.yaml"
    out = init["command"][1]
    assert "ringrl-data:/data" in init["volumes"] and out.startswith("/data/")
    assert init["build"] == services["learner"]["build"] and init["image"] == services["learner"]["image"]
    cfg = load_config(COMPOSE_RUN, env={}, model=TrainConfig)
    assert cfg.rollout.model == out and cfg.learner.model_path == out
    assert (init["user"], init["cap_drop"], init["cap_add"]) == (
        services["reward"]["user"], services["reward"]["cap_drop"], services["reward"]["cap_add"])
    assert compose_env("init-model")["RINGRL_REWARD__SANDBOX__BACKEND"] == "rlimit"


def test_ringrl_services_share_one_image_config_and_redis() -> None:
    services = compose()["services"]
    for name in RINGRL_SERVICES + ONE_SHOT:
        svc = services[name]
        assert svc["command"][-1] == "/etc/ringrl/run.yaml"
        assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile.cpu"
        assert "./run.yaml:/etc/ringrl/run.yaml:ro" in svc["volumes"]
        assert compose_env(name)["RINGRL_REDIS__URL"] == "redis://redis:6379/0"
    for name in RINGRL_SERVICES:
        assert services[name]["command"] == ["serve", name, "/etc/ringrl/run.yaml"]
        env = compose_env(name)
        # The healthcheck probes the port the part is told to serve on.
        port = next(v for k, v in env.items() if re.fullmatch(rf"RINGRL_{name.upper()}__(HTTP_)?PORT", k))
        assert env["HEALTHCHECK_URL"] == f"http://127.0.0.1:{port}/healthz"
    assert services["reward"]["deploy"]["replicas"] == 2


def test_code_scorers_share_the_uid_leases() -> None:
    """Every container that runs the sandbox on this host leases slot uids from one folder."""
    services = compose()["services"]
    scorers = [name for name, svc in services.items() if "SETUID" in (svc.get("cap_add") or [])]
    assert sorted(scorers) == ["init-model", "reward"]
    for name in scorers:
        lease_dir = compose_env(name)["RINGRL_REWARD__SANDBOX__UID_LEASE_DIR"]
        assert f"sandbox-uids:{lease_dir}" in services[name]["volumes"], name
    assert "sandbox-uids" in compose()["volumes"]


def test_driver_reaches_the_services_by_name() -> None:
    env = compose_env("driver")
    assert env["RINGRL_DRIVER__ROLLOUT_URLS"] == "[http://rollout:8000]"
    assert env["RINGRL_DRIVER__REWARD_URL"] == "http://reward:8001"
    assert (env["RINGRL_DRIVER__HOST"], env["RINGRL_DRIVER__PORT"]) == ("0.0.0.0", "8003")
    assert compose_env("rollout")["RINGRL_ROLLOUT__PORT"] == "8000"
    assert compose_env("reward")["RINGRL_REWARD__PORT"] == "8001"
    assert "ringrl-data:/data" in compose()["services"]["driver"]["volumes"]  # metrics, plots, summary


def test_checkpoints_on_a_shared_volume() -> None:
    doc = compose()
    assert "ringrl-data" in doc["volumes"]
    assert "ringrl-data:/data" in doc["services"]["learner"]["volumes"]
    assert "ringrl-data:/data:ro" in doc["services"]["rollout"]["volumes"]
    assert compose_env("learner")["RINGRL_LEARNER__CHECKPOINT_DIR"].startswith("/data/")


def test_reward_sandbox_settings() -> None:
    reward = compose()["services"]["reward"]
    assert compose_env("reward")["RINGRL_REWARD__SANDBOX__BACKEND"] == "rlimit"
    assert reward["user"] == "0:0" and reward["cap_drop"] == ["ALL"]
    assert set(reward["cap_add"]) == {"CHOWN", "DAC_OVERRIDE", "SETUID", "SETGID", "KILL"}
    assert "ports" not in reward, "replicas cannot share a host port"


def test_prometheus_scrapes_every_part_where_it_listens() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets: dict[str, set[str]] = {}
    for job in prom["scrape_configs"]:
        for sc in job.get("static_configs", []):
            for t in sc["targets"]:
                host, port = t.split(":")
                targets.setdefault(host, set()).add(port)
        for sd in job.get("dns_sd_configs", []):
            for host in sd["names"]:
                targets.setdefault(host, set()).add(str(sd["port"]))
    for name in RINGRL_SERVICES:
        listening = {v for k, v in compose_env(name).items() if k.endswith("_PORT") and "BROADCAST" not in k}
        assert targets.get(name) == listening, name


def test_grafana_dashboard_uses_the_provisioned_datasource() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    uid = ds["datasources"][0]["uid"]
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    dash = json.loads((DEPLOY / "grafana/dashboards/ringrl.json").read_text())
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/ringrl.yaml").read_text())
    mounts = compose()["services"]["grafana"]["volumes"]
    assert f"../grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts
    assert dash["panels"]
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for needed in ("tokens/s", "verifications/s", "steps", "gradient norm"):
        assert needed in titles
