"""The services never import each other; they share only protocol/ (import-linter contracts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint), "--config", "pyproject.toml"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: 3 kept, 0 broken" in r.stdout


def test_contract_catches_a_violation(tmp_path: Path) -> None:
    """The checker is live: a service importing another service breaks the build."""
    bad = ROOT / "learner" / "_contract_probe.py"
    bad.write_text("import reward_service\n")
    try:
        lint = Path(sys.executable).with_name("lint-imports")
        r = subprocess.run([str(lint), "--config", "pyproject.toml", "--no-cache"], cwd=ROOT,
                           capture_output=True, text=True)
        assert r.returncode != 0 and "BROKEN" in r.stdout
    finally:
        bad.unlink()


def test_layers_contract_catches_an_upward_import() -> None:
    """actors/ wraps services; a Ray actor importing the run (recipe/) above it breaks the build."""
    bad = ROOT / "actors" / "_layers_probe.py"
    bad.write_text("import recipe.driver\n")
    try:
        lint = Path(sys.executable).with_name("lint-imports")
        r = subprocess.run([str(lint), "--config", "pyproject.toml", "--no-cache"], cwd=ROOT,
                           capture_output=True, text=True)
        assert r.returncode != 0 and "layers" in r.stdout and "BROKEN" in r.stdout
    finally:
        bad.unlink()
