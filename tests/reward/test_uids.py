"""Sandbox uid leases: two scoring processes on one kernel never share a uid, and a lease dies
with the process that held it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from protocol.config.reward import SandboxConfig
from reward_service.sandbox.uids import COOLDOWN_S, UidLease


def test_leases_are_disjoint_and_released(tmp_path: Path) -> None:
    cfg = SandboxConfig(uid_lease_dir=str(tmp_path), uid_base=70000)
    a, b = UidLease(cfg, 3), UidLease(cfg, 2)
    assert set(a.uids).isdisjoint(b.uids) and len(set(a.uids + b.uids)) == 5
    a.release()
    c = UidLease(cfg, 3)  # a's uids are cooling down: c takes fresh ones
    assert set(c.uids).isdisjoint(b.uids)
    assert time.time() - (tmp_path / f"{c.uids[0]}.lock").stat().st_mtime < COOLDOWN_S


def test_a_killed_holder_frees_its_uids(tmp_path: Path) -> None:
    code = ("import sys, time; from protocol.config.reward import SandboxConfig; "
            "from reward_service.sandbox.uids import UidLease; "
            f"l = UidLease(SandboxConfig(uid_lease_dir={str(tmp_path)!r}, uid_base=71000), 2); "
            "print(*l.uids, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        held = [int(x) for x in proc.stdout.readline().split()]  # type: ignore[union-attr]
        mine = UidLease(SandboxConfig(uid_lease_dir=str(tmp_path), uid_base=71000), 2)
        assert set(mine.uids).isdisjoint(held)
        mine.release()
    finally:
        proc.kill()
        proc.wait(10)
    time.sleep(COOLDOWN_S + 0.2)  # recently used uids are passed over, whoever used them
    again = UidLease(SandboxConfig(uid_lease_dir=str(tmp_path), uid_base=71000), 2)
    assert again.uids == held  # the kernel dropped the dead holder's locks
