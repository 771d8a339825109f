"""The services never import each other; they share only protocol/ (import-linter contracts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _lint(*args: str) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint), "--config", "pyproject.toml", *args], cwd=ROOT, capture_output=True,
                          text=True)


def _lint_with(probe: Path, source: str) -> subprocess.CompletedProcess[str]:
    """The contracts checked with one extra module in the tree (removed afterwards)."""
    probe.write_text(source)
    try:
        return _lint("--no-cache")
    finally:
        probe.unlink()


def test_import_contracts_hold() -> None:
    r = _lint()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: 3 kept, 0 broken" in r.stdout


def test_contract_catches_a_violation(tmp_path: Path) -> None:
    """The checker is live: a service importing another service breaks the build."""
    r = _lint_with(ROOT / "learner" / "_contract_probe.py", "import reward_service\n")
    assert r.returncode != 0 and "BROKEN" in r.stdout


def test_layers_contract_catches_an_upward_import() -> None:
    """actors/ wraps services; a Ray actor importing the run (recipe/) above it breaks the build."""
    r = _lint_with(ROOT / "actors" / "_layers_probe.py", "import recipe.driver\n")
    assert r.returncode != 0 and "layers" in r.stdout and "BROKEN" in r.stdout
