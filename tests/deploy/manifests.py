"""Loading the deploy/ files the way their tools would: compose with its interpolation, the Helm
chart rendered with given values, KubeRay manifests; plus the env every one of them sets."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "docker-compose.yaml"
COMPOSE_RUN = DEPLOY / "compose" / "run.yaml"
CHART = DEPLOY / "helm" / "ringrl"
KUBERAY = DEPLOY / "kuberay"
DOCKERFILES = sorted(p for p in (DEPLOY / "docker").glob("Dockerfile.*") if p.suffix != ".dockerignore")
KUBE_VERSIONS = ("1.30.0", "1.37.0")

RINGRL_SERVICES = ("rollout", "reward", "learner", "driver")
"""The long-running ringrl servers of the compose stack (`ringrl serve <name>`)."""
ONE_SHOT = ("init-secrets", "init-model")
"""Compose services that run to completion (the others wait for them to exit 0)."""
SECRETS_DIR = "/run/secrets/ringrl"
"""Where each compose service mounts its own folder of the ringrl-secrets volume."""
GPU_VALUES = yaml.safe_load((CHART / "values-gpu.yaml").read_text())


def venv_tool(name: str) -> str:
    """A console script installed beside this interpreter (the `test` extra's tools)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: pip install -e '.[test]'")
    return str(path)


_VAR = re.compile(r"\$\$|\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(node: Any, env: dict[str, str] | None = None) -> Any:
    """Compose's `${VAR:-default}` substitution, with only the defaults (or `env`) set; `$$` is `$`."""
    env = env or {}
    if isinstance(node, str):
        return _VAR.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(2) or ""), node)
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    return node


@functools.cache
def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()))


def compose_env(service: str) -> dict[str, str]:
    env = compose()["services"][service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def render(values: dict[str, Any] | None = None, name: str = "demo") -> list[dict[str, Any]]:
    """Every object the chart renders with `values`, as dicts."""
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values=values, name=name, namespace="ml", is_install=True)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def kuberay_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Pod specs inside a workload or KubeRay object."""
    spec = obj.get("spec", {})
    if "template" in spec:
        yield spec["template"]["spec"]
    if obj.get("kind") == "RayCluster":
        yield spec["headGroupSpec"]["template"]["spec"]
        for group in spec.get("workerGroupSpecs", []):
            yield group["template"]["spec"]


def containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every container of the object's pods: the main ones first, then the init containers."""
    for pod in pod_specs(obj):
        yield from pod.get("containers", [])
    for pod in pod_specs(obj):
        yield from pod.get("initContainers", [])


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e.get("value", "")) for e in container.get("env", [])}


def by_kind_name(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def dockerfile_env(path: Path) -> dict[str, str]:
    """ENV assignments of a Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for key, value in re.findall(r"(\w+)=(\S+)", line[4:]):
                env[key] = value
    return env


def helm_value_variants() -> dict[str, dict[str, Any]]:
    """Values a user is expected to deploy with; every test over the chart covers all of them."""
    return {
        "default": {},
        "gpu": GPU_VALUES,
        "bwrap": {"reward": {"sandbox": {"backend": "bwrap"}}},
        "external-redis": {"redis": {"enabled": False, "externalUrl": "redis://redis.infra:6379/3"}},
        "no-scrape": {"metrics": {"scrapeAnnotations": False}},
        "models": {"models": {"volume": {"persistentVolumeClaim": {"claimName": "ringrl-models"}}}},
        "existing-secret": {"auth": {"existingSecret": "my-ringrl-secrets", "metricsOpen": True}},
    }


def all_ringrl_env() -> dict[str, set[str]]:
    """Every RINGRL_* env name any deploy file sets -> where it is set."""
    where: dict[str, set[str]] = {}

    def add(env: dict[str, str], origin: str) -> None:
        for key in env:
            if key.startswith("RINGRL_"):
                where.setdefault(key, set()).add(origin)

    for svc in RINGRL_SERVICES + ("init-model",):
        add(compose_env(svc), f"compose:{svc}")
    for variant, values in helm_value_variants().items():
        for obj in render(values):
            for c in containers(obj):
                add(container_env(c), f"helm[{variant}]:{obj['metadata']['name']}")
    for obj in kuberay_docs():
        for c in containers(obj):
            add(container_env(c), f"kuberay:{obj['metadata']['name']}")
    for path in DOCKERFILES:
        add(dockerfile_env(path), path.name)
    return where


def env_for_config(env: dict[str, str]) -> dict[str, str]:
    """Only the RINGRL_* overrides, the way protocol.config reads the process environment."""
    return {k: v for k, v in env.items() if k.startswith("RINGRL_")}

