"""The Helm chart: lints strictly and renders with every expected set of values; every rendered
object validates against the Kubernetes schemas; the chart's promises hold in what it renders."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.manifests import (
    CHART,
    KUBE_VERSIONS,
    by_kind_name,
    container_env,
    containers,
    helm_value_variants,
    render,
)

VARIANTS = helm_value_variants()


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_strict(variant: str) -> None:
    import helm_python as helm

    report = helm.lint(CHART, VARIANTS[variant], strict=True, namespace="ml")
    assert not report["errors"], report
    # severity 2 = warning, 3 = error; info (e.g. "icon is recommended") is allowed.
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_validates_strictly(variant: str, version: str) -> None:
    docs = render(VARIANTS[variant])
    assert docs
    for obj in docs:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")


def _objs(values: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return by_kind_name(render(values))


def _container(objs: dict[tuple[str, str], dict[str, Any]], kind: str, part: str) -> dict[str, Any]:
    return next(containers(objs[(kind, f"demo-ringrl-{part}")]))


WORKLOADS = {"rollout": "Deployment", "reward": "Deployment", "learner": "StatefulSet", "driver": "Deployment"}


def test_default_objects() -> None:
    objs = _objs({})
    assert set(objs) == {
        ("ConfigMap", "demo-ringrl-config"), ("Secret", "demo-ringrl-secrets"),
        ("Service", "demo-ringrl-redis"), ("StatefulSet", "demo-ringrl-redis"),
        ("Service", "demo-ringrl-rollout"), ("Deployment", "demo-ringrl-rollout"),
        ("Service", "demo-ringrl-reward"), ("Deployment", "demo-ringrl-reward"),
        ("Service", "demo-ringrl-learner"), ("StatefulSet", "demo-ringrl-learner"),
        ("PersistentVolumeClaim", "demo-ringrl-models"),
        ("PersistentVolumeClaim", "demo-ringrl-driver"), ("Deployment", "demo-ringrl-driver"),
    }
    assert objs[("Deployment", "demo-ringrl-reward")]["spec"]["replicas"] == 2
    learner = objs[("StatefulSet", "demo-ringrl-learner")]
    (claim,) = learner["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    mounts = {m["name"]: m["mountPath"] for m in _container(objs, "StatefulSet", "learner")["volumeMounts"]}
    assert mounts["data"] == "/data"
    assert container_env(_container(objs, "StatefulSet", "learner"))["RINGRL_LEARNER__CHECKPOINT_DIR"] == "/data/checkpoints"


@pytest.mark.parametrize("variant", VARIANTS)
def test_parts_probe_liveness_and_readiness_and_carry_resources(variant: str) -> None:
    objs = _objs(VARIANTS[variant])
    for part, kind in WORKLOADS.items():
        c = _container(objs, kind, part)
        assert c["args"] == ["serve", part, "/etc/ringrl/run.yaml"]
        for probe in ("startupProbe", "livenessProbe"):  # open: liveness needs no secret
            assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, (part, probe)
        assert c["resources"]["requests"] and c["resources"]["limits"]
        port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
        # /readyz needs the token: the image's probe script sends the file HEALTHCHECK_TOKEN_FILE names.
        assert c["readinessProbe"]["exec"]["command"] == [
            "python3", "/usr/local/bin/ringrl-healthcheck", f"http://127.0.0.1:{port}/readyz"], part
        env = container_env(c)
        assert env["HEALTHCHECK_TOKEN_FILE"] == env["RINGRL_AUTH__TOKEN_FILE"], part
        served = env.get(f"RINGRL_{part.upper()}__PORT") or env.get(f"RINGRL_{part.upper()}__HTTP_PORT")
        assert served == str(port), f"{part} serves on the port its probe uses"


def test_scrape_annotations() -> None:
    objs = _objs({})
    expect = {"rollout": "8000", "reward": "9101", "learner": "8002", "driver": "8003"}
    for part, kind in WORKLOADS.items():
        ann = objs[(kind, f"demo-ringrl-{part}")]["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
        assert ann["prometheus.io/port"] == expect[part]
    objs = _objs(VARIANTS["no-scrape"])
    for part, kind in WORKLOADS.items():
        ann = objs[(kind, f"demo-ringrl-{part}")]["spec"]["template"]["metadata"]["annotations"]
        assert "prometheus.io/scrape" not in ann


def test_gpu_toggle() -> None:
    cpu, gpu = _objs({}), _objs(VARIANTS["gpu"])
    for part in ("rollout", "learner"):
        kind = WORKLOADS[part]
        assert "nvidia.com/gpu" not in _container(cpu, kind, part)["resources"]["limits"]
        c = _container(gpu, kind, part)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert c["image"] == "ringrl:gpu"
        assert container_env(c)["RINGRL_LEARNER__BROADCAST_BACKEND"] == "nccl"
    for part in ("reward", "driver"):
        c = _container(gpu, "Deployment", part)
        assert c["image"] == "ringrl:cpu" and "nvidia.com/gpu" not in c["resources"]["limits"], part
    for objs, backend in ((cpu, "gloo"), (gpu, "nccl")):
        env = container_env(_container(objs, "Deployment", "rollout"))
        assert env["RINGRL_LEARNER__BROADCAST_BACKEND"] == backend  # the engines read the same field
        assert env["RINGRL_ROLLOUT__FOLLOW_WEIGHTS"] == "true"


def _init(objs: dict[tuple[str, str], dict[str, Any]], part: str) -> dict[str, Any] | None:
    pod = objs[(WORKLOADS[part], f"demo-ringrl-{part}")]["spec"]["template"]["spec"]
    inits = pod.get("initContainers", [])
    assert len(inits) <= 1
    return inits[0] if inits else None


def _volume(objs: dict[tuple[str, str], dict[str, Any]], part: str, name: str) -> dict[str, Any] | None:
    pod = objs[(WORKLOADS[part], f"demo-ringrl-{part}")]["spec"]["template"]["spec"]
    return next((v for v in pod["volumes"] if v["name"] == name), None)


@pytest.mark.parametrize("variant", ["default", "models", "gpu"])
def test_init_model_writes_the_model_rollout_and_learner_start_from(variant: str) -> None:
    """The learner pod's init container runs `ringrl init-model` into the models volume, as root
    with exactly the reward sandbox's capabilities (checkpoint choice scores code); rollout waits
    for the model; both are pointed at it and mount it read-only."""
    objs = _objs(VARIANTS[variant])
    init = _init(objs, "learner")
    assert init is not None and init["args"] == ["init-model", "/models/start", "/etc/ringrl/run.yaml"]
    assert container_env(init)["RINGRL_REWARD__SANDBOX__BACKEND"] == "rlimit"
    reward = _container(objs, "Deployment", "reward")["securityContext"]
    ctx = init["securityContext"]
    assert (ctx["runAsUser"], ctx["runAsNonRoot"], ctx["allowPrivilegeEscalation"]) == (0, False, False)
    assert ctx["capabilities"] == reward["capabilities"]
    assert {m["mountPath"]: m.get("readOnly", False) for m in init["volumeMounts"]} == {
        "/etc/ringrl": True, "/models": False, "/run/ringrl/sandbox-uids": False}
    wait = _init(objs, "rollout")
    assert wait is not None and wait["command"][-1] == "/models/start"
    assert wait["securityContext"]["capabilities"]["drop"] == ["ALL"]
    volume = _volume(objs, "learner", "models")
    assert volume == _volume(objs, "rollout", "models")
    if variant == "models":
        assert volume["persistentVolumeClaim"]["claimName"] == "ringrl-models"
        assert ("PersistentVolumeClaim", "demo-ringrl-models") not in objs
    else:
        assert volume["persistentVolumeClaim"]["claimName"] == "demo-ringrl-models"
        pvc = objs[("PersistentVolumeClaim", "demo-ringrl-models")]
        assert pvc["spec"]["accessModes"] == (["ReadWriteMany"] if variant == "gpu" else ["ReadWriteOnce"])
    for part in ("rollout", "learner"):
        c = _container(objs, WORKLOADS[part], part)
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
        env = container_env(c)
        assert env["RINGRL_ROLLOUT__MODEL"] == env["RINGRL_LEARNER__MODEL_PATH"] == "/models/start"


def test_init_model_options() -> None:
    untrained = _objs({"models": {"initModel": {"sft": False, "path": "/models/m0"}}})
    init = _init(untrained, "learner")
    assert init is not None and init["args"] == ["init-model", "/models/m0", "/etc/ringrl/run.yaml", "--no-sft"]
    assert _init(untrained, "rollout")["command"][-1] == "/models/m0"  # type: ignore[index]
    off = _objs({"models": {"initModel": {"enabled": False}}})
    for part in ("rollout", "learner"):
        assert _init(off, part) is None and _volume(off, part, "models") is None
        assert "RINGRL_ROLLOUT__MODEL" not in container_env(_container(off, WORKLOADS[part], part))
    assert ("PersistentVolumeClaim", "demo-ringrl-models") not in off


@pytest.mark.parametrize("host_path", ["/run/ringrl/sandbox-uids", ""])
def test_code_scorers_on_a_node_share_the_uid_leases(host_path: str) -> None:
    objs = _objs({"reward": {"sandbox": {"uidLeaseHostPath": host_path}}})
    want = {"hostPath": {"path": host_path, "type": "DirectoryOrCreate"}} if host_path else {"emptyDir": {}}
    for part, c in (("reward", _container(objs, "Deployment", "reward")), ("learner", _init(objs, "learner"))):
        assert c is not None
        lease_dir = container_env(c)["RINGRL_REWARD__SANDBOX__UID_LEASE_DIR"]
        assert {"name": "sandbox-uids", "mountPath": lease_dir} in c["volumeMounts"], part
        assert _volume(objs, part, "sandbox-uids") == {"name": "sandbox-uids", **want}, part
    assert _volume(objs, "rollout", "sandbox-uids") is None


def test_driver() -> None:
    objs = _objs({})
    driver = objs[("Deployment", "demo-ringrl-driver")]
    assert driver["spec"]["replicas"] == 1 and driver["spec"]["strategy"] == {"type": "Recreate"}
    env = container_env(_container(objs, "Deployment", "driver"))
    assert env["RINGRL_DRIVER__ROLLOUT_URLS"] == "[http://demo-ringrl-rollout:8000]"
    assert env["RINGRL_DRIVER__REWARD_URL"] == "http://demo-ringrl-reward:8001"
    assert (env["RINGRL_DRIVER__HOST"], env["RINGRL_DRIVER__PORT"]) == ("0.0.0.0", "8003")
    services = {name: obj for (kind, name), obj in objs.items() if kind == "Service"}
    ports = {p["name"]: p["port"] for p in services["demo-ringrl-rollout"]["spec"]["ports"]}
    assert ports["http"] == 8000
    assert {p["name"]: p["port"] for p in services["demo-ringrl-reward"]["spec"]["ports"]}["http"] == 8001
    assert _volume(objs, "driver", "data") == {"name": "data",
                                               "persistentVolumeClaim": {"claimName": "demo-ringrl-driver"}}
    assert ("Deployment", "demo-ringrl-driver") not in _objs({"driver": {"enabled": False}})


def test_weight_broadcast_world_size_follows_rollout_replicas() -> None:
    off = container_env(_container(_objs({}), "StatefulSet", "learner"))
    assert off["RINGRL_LEARNER__BROADCAST_WORLD_SIZE"] == "0"
    assert off["RINGRL_LEARNER__WEIGHT_TRANSPORT"] == "http"
    on = _objs({"weightBroadcast": {"enabled": True}, "rollout": {"replicas": 3}})
    for part, kind in WORKLOADS.items():
        env = container_env(_container(on, kind, part))
        assert env["RINGRL_LEARNER__BROADCAST_WORLD_SIZE"] == "4"
        assert env["RINGRL_LEARNER__WEIGHT_TRANSPORT"] == "broadcast"
        assert env["RINGRL_LEARNER__BROADCAST_HOST"] == "demo-ringrl-learner"
        assert env["RINGRL_LEARNER__BROADCAST_PORT"] == "29500"
    svc = on[("Service", "demo-ringrl-learner")]
    assert svc["spec"]["clusterIP"] == "None"
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"http": 8002, "rendezvous": 29500}


def test_ports_are_values() -> None:
    ports = {"rollout": 9000, "reward": 9001, "rewardWorkerMetrics": 9201, "learner": 9002,
             "weightRendezvous": 39500}
    objs = _objs({"ports": ports})
    assert container_env(_container(objs, "Deployment", "rollout"))["RINGRL_ROLLOUT__PORT"] == "9000"
    reward = container_env(_container(objs, "Deployment", "reward"))
    assert (reward["RINGRL_REWARD__PORT"], reward["RINGRL_REWARD__METRICS_PORT"]) == ("9001", "9201")
    learner = container_env(_container(objs, "StatefulSet", "learner"))
    assert learner["RINGRL_LEARNER__HTTP_PORT"] == "9002"
    assert learner["RINGRL_LEARNER__PUBLIC_URL"] == "http://demo-ringrl-learner:9002"
    assert learner["RINGRL_LEARNER__BROADCAST_PORT"] == "39500"


def test_security_contexts() -> None:
    for variant, values in VARIANTS.items():
        objs = _objs(values)
        for part in ("rollout", "learner", "driver"):
            obj = objs[(WORKLOADS[part], f"demo-ringrl-{part}")]
            pod = obj["spec"]["template"]["spec"]["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001, (variant, part)
            c = _container(objs, WORKLOADS[part], part)["securityContext"]
            assert c["allowPrivilegeEscalation"] is False and c["capabilities"]["drop"] == ["ALL"]
    rlimit = _objs({})
    c = _container(rlimit, "Deployment", "reward")
    assert container_env(c)["RINGRL_REWARD__SANDBOX__BACKEND"] == "rlimit"
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"],
                                                    "add": ["CHOWN", "DAC_OVERRIDE", "SETUID", "SETGID", "KILL"]}
    assert "privileged" not in c["securityContext"]
    bwrap = _objs(VARIANTS["bwrap"])
    c = _container(bwrap, "Deployment", "reward")
    assert container_env(c)["RINGRL_REWARD__SANDBOX__BACKEND"] == "bwrap"
    assert c["securityContext"]["privileged"] is True
    pod = bwrap[("Deployment", "demo-ringrl-reward")]["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "Unconfined"


def test_external_redis() -> None:
    objs = _objs(VARIANTS["external-redis"])
    assert not any(name.endswith("-redis") for _, name in objs)
    for part, kind in WORKLOADS.items():
        assert container_env(_container(objs, kind, part))["RINGRL_REDIS__URL"] == "redis://redis.infra:6379/3"


@pytest.mark.parametrize("values, message", [
    ({"redis": {"enabled": False}}, "redis.externalUrl is required"),
    ({"reward": {"sandbox": {"backend": "docker"}}}, "reward.sandbox.backend must be warm, bwrap or rlimit"),
])
def test_bad_values_fail_with_the_value_named(values: dict[str, Any], message: str) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match=message.replace(".", r"\.")):
        render(values)


def test_config_map_holds_the_run_config() -> None:
    import yaml

    cm = _objs({"runConfig": {"run": {"name": "exp7"}}})[("ConfigMap", "demo-ringrl-config")]
    run = yaml.safe_load(cm["data"]["run.yaml"])
    # A user's runConfig merges over the chart's defaults, as Helm merges values.
    assert run["run"] == {"name": "exp7"} and run["reward"]["workers"] == 1


PASSWORDS = {"learner": "pw-l", "rollout": "pw-r", "reward": "pw-w", "driver": "pw-d", "probe": "pw-p",
             "default": "pw-admin"}


def _secret_data(objs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    import base64

    return {k: base64.b64decode(v).decode() for k, v in objs[("Secret", "demo-ringrl-secrets")]["data"].items()}


def test_redis_acl_is_the_one_init_secrets_writes() -> None:
    """The chart renders the ACL file from its own passwords: byte for byte protocol.redis_acl's."""
    from protocol.redis_acl import users_acl

    data = _secret_data(_objs({"auth": {"apiToken": "tok", "adminToken": "adm", "redisPasswords": PASSWORDS}}))
    assert data["users.acl"] == users_acl(PASSWORDS)
    assert (data["api-token"], data["admin-token"]) == ("tok", "adm")
    assert {k: data[f"redis-{k}"] for k in PASSWORDS} == PASSWORDS


def test_secrets_are_generated_when_not_given() -> None:
    from protocol.redis_acl import users_acl

    data = _secret_data(_objs({}))
    keys = ["api-token", "admin-token", *(f"redis-{k}" for k in PASSWORDS)]
    assert sorted(data) == sorted([*keys, "users.acl"])
    assert all(len(data[k]) == 43 and data[k].isalnum() for k in keys)
    assert len({data[k] for k in keys}) == len(keys)  # no two parts share a secret
    assert data["users.acl"] == users_acl({k: data[f"redis-{k}"] for k in PASSWORDS})


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_part_mounts_only_its_own_secrets(variant: str) -> None:
    """Each pod gets the keys of its folder in `ringrl init-secrets`' layout, under the same file
    names, and its env names files there; Redis loads the ACL file and probes as `probe`."""
    from cli.commands.init_secrets import layout
    from protocol.redis_acl import PARTS

    values = VARIANTS[variant]
    objs = _objs(values)
    secret = (values.get("auth") or {}).get("existingSecret") or "demo-ringrl-secrets"
    assert (("Secret", "demo-ringrl-secrets") in objs) == (secret == "demo-ringrl-secrets")
    plan = layout(PARTS)
    for part in PARTS:
        volume = _volume(objs, part, "secrets")
        assert volume is not None and volume["secret"]["secretName"] == secret
        assert volume["secret"]["defaultMode"] == 0o440
        files = {i["path"]: i["key"] for i in volume["secret"]["items"]}
        assert set(files) == set(plan[part]), part
        assert files["redis-password"] == f"redis-{part}"
        c = _container(objs, WORKLOADS[part], part)
        assert {"name": "secrets", "mountPath": "/run/secrets/ringrl", "readOnly": True} in c["volumeMounts"]
        env = container_env(c)
        assert env["RINGRL_REDIS__USERNAME"] == part
        assert env["RINGRL_AUTH__METRICS_OPEN"] == ("true" if variant == "existing-secret" else "false")
        named = [env["RINGRL_AUTH__TOKEN_FILE"], env["RINGRL_REDIS__PASSWORD_FILE"]]
        named += [env["RINGRL_AUTH__ADMIN_TOKEN_FILE"]] if part == "rollout" else []
        assert all(f.startswith("/run/secrets/ringrl/") and f.rsplit("/", 1)[1] in files for f in named), part
        assert ("RINGRL_AUTH__ADMIN_TOKEN_FILE" in env) == (part == "rollout")
    if ("StatefulSet", "demo-ringrl-redis") in objs:
        redis = next(containers(objs[("StatefulSet", "demo-ringrl-redis")]))
        pod = objs[("StatefulSet", "demo-ringrl-redis")]["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "secrets"]
        assert {i["path"]: i["key"] for i in volume["secret"]["items"]} == {
            "users.acl": "users.acl", "probe-password": "redis-probe"}
        assert set(plan["redis"]) == {"users.acl", "probe-password"}
        assert redis["args"][redis["args"].index("--aclfile") + 1] == "/run/secrets/ringrl/users.acl"
        probe = redis["readinessProbe"]["exec"]["command"]
        assert probe[:2] == ["sh", "-c"] and "--user probe" in probe[2]
        assert '"$(cat /run/secrets/ringrl/probe-password)"' in probe[2]


def test_rollout_accepts_weights_from_the_learner_service() -> None:
    """Engines take weight URLs only from rollout.weight_hosts, by default the learner's hosts:
    in the chart that is the learner's Service, where the rollout pods pull from."""
    from protocol.config import parse_config
    from protocol.config.run_config import weight_hosts
    from protocol.config.train import TrainConfig

    env = container_env(_container(_objs({}), "Deployment", "rollout"))
    cfg = parse_config({}, "helm", env={k: v for k, v in env.items() if k.startswith("RINGRL_")}, model=TrainConfig)
    assert cfg.learner.public_url == "http://demo-ringrl-learner:8002"  # where the learner's versions are
    assert "demo-ringrl-learner" in weight_hosts(cfg)  # type: ignore[arg-type]


@pytest.mark.parametrize("password", ["has space", "tab\tin", "non-ascii-é"])
def test_a_redis_password_that_breaks_the_acl_file_fails(password: str) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="redis-learner must be one word of printable ASCII"):
        render({"auth": {"redisPasswords": {"learner": password}}})
