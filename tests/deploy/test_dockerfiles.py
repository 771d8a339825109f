"""Dockerfiles: hadolint-clean, and the properties the images are meant to have. No engine here:
nothing is built (docs/deploy.md)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.manifests import DOCKERFILES, dockerfile_env, venv_tool

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
    assert re.search(r'^ENTRYPOINT \["ringrl"\]', text, re.M)
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
