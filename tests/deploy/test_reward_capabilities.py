"""The reward container's capability set, proven natively: the real `ringrl serve reward` runs
under exactly the user and capabilities the deploy files grant it (no engine here, so util-linux
`setpriv` does what the container runtime would: uid 0, every capability outside the set gone
from the bounding set, so neither the server nor any child can ever hold more), and must score
code in the `rlimit` sandbox and math correctly, end a program at its wall-clock limit, and leave
no work dir behind.

The set is read from deploy/compose/docker-compose.yaml; Helm and KubeRay must grant the same.
Each capability in it is needed (docs/deploy.md, "The sandbox in containers"); dropping any one
makes one of the assertions below fail.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.deploy.manifests import (
    COMPOSE_RUN,
    SECRETS_DIR,
    by_kind_name,
    compose,
    compose_env,
    container_env,
    kuberay_docs,
    render,
    venv_tool,
)

# Capability numbers (linux/capability.h) of the ones a reward container might be granted.
CAP_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4,
            "KILL": 5, "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10,
            "SYS_CHROOT": 18, "SYS_ADMIN": 21, "SYS_RESOURCE": 24}
WALL_S = 3          # the sandbox's wall-clock limit in this test (the deploy default is 10)
UID_BASE = 64000    # slot uids of this test (leased from here up), apart from tests/reward's
ITEMS = [  # (item, reward)
    ({"task": "code", "response": "```python\nprint(int(input()) * 2)\n```",
      "tests": {"io_tests": [{"stdin": "21\n", "stdout": "42"}]}}, 1.0),
    ({"task": "code", "response": "```python\nprint(int(input()) + 2)\n```",
      "tests": {"io_tests": [{"stdin": "21\n", "stdout": "42"}]}}, 0.0),
    ({"task": "code", "response": "```python\ndef double(x):\n    return 2 * x\n```",
      "tests": {"test_code": "def check(f):\n    assert f(4) == 8\n", "entry_point": "double"}}, 1.0),
    # Writes into its work dir: removing that dir afterwards takes DAC_OVERRIDE.
    ({"task": "code", "response": "```python\nopen('scratch.txt', 'w').write('x' * 100)\n"
                                  "print(int(input()) * 2)\n```",
      "tests": {"io_tests": [{"stdin": "21\n", "stdout": "42"}]}}, 1.0),
    # Sleeps past the wall-clock limit: ending it on time takes KILL (it runs as another uid).
    ({"task": "code", "response": "```python\nimport time\ntime.sleep(600)\n```",
      "tests": {"io_tests": [{"stdin": "", "stdout": "1"}]}}, 0.0),
    ({"task": "math", "response": "Half of it: \\boxed{\\frac{1}{2}}", "answer": "0.5"}, 1.0),
    ({"task": "math", "response": "So \\boxed{3}", "answer": "0.5"}, 0.0),
]


@dataclass(frozen=True)
class Grant:
    """What a runtime gives the reward container."""
    uid: int
    gid: int
    caps: frozenset[str]
    no_new_privs: bool  # Kubernetes allowPrivilegeEscalation: false


def compose_grant() -> Grant:
    reward = compose()["services"]["reward"]
    uid, gid = (int(x) for x in str(reward["user"]).split(":"))
    assert reward["cap_drop"] == ["ALL"], "compose: the reward service drops every capability first"
    nnp = any(re.fullmatch(r"no-new-privileges(:true)?", opt) for opt in reward.get("security_opt", []))
    return Grant(uid, gid, frozenset(reward["cap_add"]), nnp)


def _k8s_grant(pod: dict[str, Any], container: dict[str, Any], where: str) -> Grant:
    ctx = container["securityContext"]
    assert ctx["capabilities"]["drop"] == ["ALL"], f"{where}: drops every capability first"
    assert not ctx.get("privileged"), f"{where}: not privileged"
    uid = ctx.get("runAsUser", pod["securityContext"]["runAsUser"])
    gid = ctx.get("runAsGroup", pod["securityContext"].get("runAsGroup", 0))
    return Grant(uid, gid, frozenset(ctx["capabilities"]["add"]),
                 ctx.get("allowPrivilegeEscalation") is False)


def helm_grant() -> Grant:
    objs = by_kind_name(render({}))
    pod = objs[("Deployment", "demo-ringrl-reward")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container_env(container)["RINGRL_REWARD__SANDBOX__BACKEND"] == "rlimit"
    return _k8s_grant(pod, container, "helm reward")


def helm_init_model_grant() -> Grant:
    objs = by_kind_name(render({}))
    pod = objs[("StatefulSet", "demo-ringrl-learner")]["spec"]["template"]["spec"]
    (container,) = pod["initContainers"]
    assert container_env(container)["RINGRL_REWARD__SANDBOX__BACKEND"] == "rlimit"
    return _k8s_grant(pod, container, "helm learner init-model")


def kuberay_grants() -> dict[str, Grant]:
    """The head (the driver scores held-out code) and the cpu workers (reward actors)."""
    (cluster,) = [d for d in kuberay_docs() if d["kind"] == "RayCluster"]
    pods = {"head": cluster["spec"]["headGroupSpec"]["template"]["spec"]}
    pods |= {g["groupName"]: g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"]
             if g["groupName"] == "cpu"}
    grants = {}
    for name, pod in pods.items():
        (container,) = pod["containers"]
        assert container_env(container)["RINGRL_REWARD__SANDBOX__BACKEND"] == "rlimit", name
        grants[f"kuberay {name}"] = _k8s_grant(pod, container, f"kuberay {name}")
    return grants


def test_every_deploy_file_grants_the_same_set() -> None:
    base = compose_grant()
    assert compose_env("reward")["RINGRL_REWARD__SANDBOX__BACKEND"] == "rlimit"
    assert (base.uid, base.gid) == (0, 0), "the sandbox switches uids, so the scorer starts as root"
    assert base.caps == {"CHOWN", "DAC_OVERRIDE", "SETUID", "SETGID", "KILL"}
    init = compose()["services"]["init-model"]
    assert (str(init["user"]), frozenset(init["cap_add"])) == ("0:0", base.caps), "compose init-model"
    grants = {"helm reward": helm_grant(), "helm init-model": helm_init_model_grant(), **kuberay_grants()}
    for name, grant in grants.items():
        assert (grant.uid, grant.gid, grant.caps) == (base.uid, base.gid, base.caps), name


def _mask(caps: frozenset[str]) -> int:
    unknown = caps - set(CAP_BITS)
    assert not unknown, f"add {sorted(unknown)} to CAP_BITS"
    return sum(1 << CAP_BITS[c] for c in caps)


def _proc_caps(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {k: int(v, 16) for k, v in re.findall(r"^(Cap\w+):\s+([0-9a-f]+)$", status, re.M)}


def _setpriv(grant: Grant) -> list[str]:
    spec = ",".join(["-all"] + [f"+{c.lower()}" for c in sorted(grant.caps)])
    argv = ["setpriv", f"--reuid={grant.uid}", f"--regid={grant.gid}", "--clear-groups",
            # The bounding set is what confines the whole process tree: a uid-0 exec gets exactly
            # it as permitted and effective. Docker (before 20.10.14) also put the set in the
            # inheritable set; Kubernetes runtimes leave that empty and set no_new_privs.
            f"--inh-caps={'-all' if grant.no_new_privs else spec}", f"--bounding-set={spec}"]
    return argv + (["--no-new-privs"] if grant.no_new_privs else [])


@pytest.fixture
def sandbox_tmp() -> Iterator[Path]:
    """A private stand-in for the container's /tmp (root-owned, mode 1777), where the rlimit
    sandbox makes each program's work dir (tempfile.gettempdir(), so TMPDIR)."""
    path = Path(tempfile.mkdtemp(prefix="ringrl-capstest-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _work_dirs(tmp: Path) -> list[str]:
    """The rlimit backend's per-program work dirs (reward_service/sandbox/rlimit.py); the math
    pool's multiprocessing keeps its own pymp-* dir there too."""
    return sorted(p.name for p in tmp.glob("ringrl-sbx-*"))


def _stop(proc: subprocess.Popen[bytes], lease_dir: Path) -> None:
    """End the server's process group, then anything still running as the slot uids it leased
    (a program the server failed to kill runs in its own session, as its slot's uid)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    for uid in sorted(int(p.stem) for p in lease_dir.glob("*.lock")):
        # As that uid, kill(-1) reaches exactly its processes.
        subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable,
                        "-c", "import os, signal\ntry: os.kill(-1, signal.SIGKILL)\nexcept OSError: pass"],
                       timeout=30, check=False)


GRANTS = {"compose": compose_grant, "helm": helm_grant}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the container runs the scorer as uid 0")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
@pytest.mark.parametrize("runtime", sorted(GRANTS))
def test_reward_server_scores_under_exactly_the_granted_capabilities(
        runtime: str, sandbox_tmp: Path, tmp_path: Path) -> None:
    grant = GRANTS[runtime]()
    port = free_port()
    # The service's own config and env, as the container gets them; only where it listens, the
    # sandbox's wall limit and slot uids, and TMPDIR are this test's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGRL_")}
    # Its folder of init-secrets' output where the container mounts it (the token it requires).
    secrets = tmp_path / "secrets"
    subprocess.run([venv_tool("ringrl"), "init-secrets", str(secrets)], check=True, capture_output=True, timeout=60)
    env |= {k: v.replace(SECRETS_DIR, str(secrets / "reward"))
            for k, v in compose_env("reward").items() if k.startswith("RINGRL_")}
    auth = {"Authorization": f"Bearer {(secrets / 'reward' / 'api-token').read_text().strip()}"}
    env |= {"RINGRL_REWARD__HOST": "127.0.0.1", "RINGRL_REWARD__PORT": str(port),
            "RINGRL_REWARD__SANDBOX__WALL_S": str(WALL_S),
            "RINGRL_REWARD__SANDBOX__UID_BASE": str(UID_BASE), "TMPDIR": str(sandbox_tmp),
            # A private lease folder: the slot uids this server takes are exactly its files.
            "RINGRL_REWARD__SANDBOX__UID_LEASE_DIR": str(tmp_path / "uids")}
    ringrl = venv_tool("ringrl")
    log = tmp_path / "reward.log"
    argv = _setpriv(grant) + [ringrl, "serve", "reward", str(COMPOSE_RUN), "--workers", "0"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"

    def logged() -> str:
        return log.read_text(errors="replace")[-4000:]

    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"reward server exited {proc.returncode}:\n{logged()}"
            try:
                health = httpx.get(f"{url}/healthz", timeout=5, headers=auth)  # with it: the whole body
                if health.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no /healthz 200 within 120 s:\n{logged()}"
            time.sleep(0.2)
        assert health.json()["sandbox"] == "rlimit"
        assert list((tmp_path / "uids").glob("*.lock")), "the server leased its slot uids there"

        # setpriv exec'd the server: it holds exactly the set, no more.
        held = _proc_caps(proc.pid)
        want = _mask(grant.caps)
        assert (held["CapBnd"], held["CapPrm"], held["CapEff"]) == (want, want, want), held
        assert held["CapAmb"] == 0

        # Two programs at a time: the sleeper must be ended at WALL_S, not when it wakes up.
        limit = 4 * WALL_S + 10
        try:
            r = httpx.post(f"{url}/v1/score", json={"items": [item for item, _ in ITEMS]},
                           timeout=limit, headers=auth)
        except httpx.TimeoutException:
            pytest.fail(f"no scores within {limit} s: the sleeping program was not killed at its "
                        f"wall-clock limit\n{logged()}")
        assert r.status_code == 200, f"{r.status_code} {r.text[:500]}\n{logged()}"
        results = r.json()["results"]
        got = [res["reward"] for res in results]
        assert got == [reward for _, reward in ITEMS], results
        assert results[4]["status"] == "timeout", results[4]
        assert _work_dirs(sandbox_tmp) == [], "a sandbox work dir was left behind"
    finally:
        _stop(proc, tmp_path / "uids")
    assert _work_dirs(sandbox_tmp) == [], "a sandbox work dir was left behind at shutdown"
