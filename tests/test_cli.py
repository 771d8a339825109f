from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def ringrl(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("ringrl")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_help_works() -> None:
    r = ringrl("--help")
    assert r.returncode == 0 and "ringrl" in r.stdout


def test_unknown_command_is_an_error_not_a_traceback() -> None:
    r = ringrl("frobnicate")
    assert r.returncode != 0 and "Traceback" not in r.stderr + r.stdout
