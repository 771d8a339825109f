"""KubeRay manifests for cluster mode: RayCluster/RayJob against the KubeRay v1 CRD schemas (vendored
under schemas/, pod templates pruned from them) with unknown fields refused, and every pod template
against the Kubernetes PodTemplate schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.manifests import KUBE_VERSIONS, container_env, kuberay_docs, pod_specs

SCHEMAS = Path(__file__).parent / "schemas"
CRD_FILES = {"RayCluster": "ray.io_v1_rayclusters.json", "RayJob": "ray.io_v1_rayjobs.json"}


def _closed(node: Any) -> Any:
    """The API server prunes unknown fields silently; here they are errors instead (a typo'd
    field would otherwise vanish on apply)."""
    if isinstance(node, dict):
        node = {k: _closed(v) for k, v in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_closed(v) for v in node]
    return node


def test_manifests_present() -> None:
    kinds = sorted(d["kind"] for d in kuberay_docs())
    assert kinds == ["ConfigMap", "RayCluster", "RayJob"]


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_custom_resources_match_the_crd(kind: str) -> None:
    schema = _closed(json.loads((SCHEMAS / CRD_FILES[kind]).read_text()))
    (obj,) = [d for d in kuberay_docs() if d["kind"] == kind]
    assert obj["apiVersion"] == "ray.io/v1"
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_crd_check_can_fail() -> None:
    schema = _closed(json.loads((SCHEMAS / CRD_FILES["RayCluster"]).read_text()))
    (obj,) = [d for d in kuberay_docs() if d["kind"] == "RayCluster"]
    bad = json.loads(json.dumps(obj))
    bad["spec"]["headGroupSpec"]["rayStartParam"] = {}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_pod_templates_and_plain_objects_validate(version: str) -> None:
    for obj in kuberay_docs():
        if obj["kind"] == "RayCluster":
            templates = [obj["spec"]["headGroupSpec"]["template"]]
            templates += [g["template"] for g in obj["spec"]["workerGroupSpecs"]]
            for i, tmpl in enumerate(templates):
                wrapped = {"apiVersion": "v1", "kind": "PodTemplate",
                           "metadata": {"name": f"t{i}"}, "template": tmpl}
                kubernetes_validate.validate(wrapped, version, strict=True)
        elif obj["kind"] != "RayJob":
            kubernetes_validate.validate(obj, version, strict=True)


def test_cluster_roles() -> None:
    docs = {d["kind"]: d for d in kuberay_docs()}
    cluster, job = docs["RayCluster"], docs["RayJob"]
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["spec"]["entrypoint"].startswith("ringrl train /etc/ringrl/run.yaml")
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    cpu = groups["cpu"]["template"]["spec"]["containers"][0]
    assert container_env(cpu)["RINGRL_REWARD__SANDBOX__BACKEND"] == "rlimit"
    head = next(pod_specs(cluster))
    mounts = {m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    assert "/etc/ringrl" in mounts
    assert head["volumes"][0]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]


def test_run_config_fills_the_gpu_group() -> None:
    """The RayJob's run config is a valid TrainConfig whose engines and learner ranks, one GPU each,
    are exactly what the gpu worker group offers (fewer: the run waits forever for a placement)."""
    from protocol.config import parse_config
    from protocol.config.train import TrainConfig

    docs = {d["kind"]: d for d in kuberay_docs()}
    cfg = parse_config(yaml.safe_load(docs["ConfigMap"]["data"]["run.yaml"]), "run.yaml", env={}, model=TrainConfig)
    groups = {g["groupName"]: g for g in docs["RayCluster"]["spec"]["workerGroupSpecs"]}
    gpus = groups["gpu"]["replicas"] * groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"]
    assert cfg.cluster.engines * cfg.cluster.engine_gpus + cfg.learner.ranks * cfg.learner.rank_num_gpus == gpus
    assert cfg.learner.ranks > 1 and cfg.cluster.engines > 1 and cfg.learner.broadcast_backend == "nccl"


def test_ray_refuses_callers_without_the_token() -> None:
    """The dashboard (its job API runs code), the GCS and the client port need Ray's token; the
    head is reached only inside the cluster (port-forward for people)."""
    cluster = next(d for d in kuberay_docs() if d["kind"] == "RayCluster")
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    head = cluster["spec"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    major, minor = (int(x) for x in cluster["spec"]["rayVersion"].split(".")[:2])
    assert (major, minor) >= (2, 52), "Ray's token authentication needs Ray 2.52+"
