"""Fallback backend for containers without user namespaces: setuid + rlimits + seccomp.

There is no filesystem isolation beyond permissions: the program sees the host filesystem as
an unprivileged uid would. See docs/reward.md for what this does and does not hold.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import tempfile
from collections.abc import Callable
from typing import Any

from protocol.config.reward import SandboxConfig
from reward_service.sandbox import syscalls
from reward_service.sandbox.cgroup import SlotCgroup
from reward_service.sandbox.harness import HARNESS


def available() -> str | None:
    return None if os.geteuid() == 0 else "the rlimit backend must start as root to setuid"


def _confine(cfg: SandboxConfig, uid: int, cgroup: SlotCgroup | None) -> Callable[[], None]:
    limits = ((resource.RLIMIT_CPU, cfg.cpu_s, cfg.cpu_s + 1),
              (resource.RLIMIT_AS, cfg.memory_mb << 20, cfg.memory_mb << 20),
              (resource.RLIMIT_FSIZE, cfg.file_size_mb << 20, cfg.file_size_mb << 20),
              (resource.RLIMIT_NPROC, cfg.nproc, cfg.nproc),
              (resource.RLIMIT_NOFILE, 64, 64),
              (resource.RLIMIT_CORE, 0, 0))
    filt = syscalls.deny_filter()

    def preexec() -> None:  # runs in the child between fork and exec, after setsid
        if cgroup is not None:
            cgroup.join()  # while still root
        for res, soft, hard in limits:
            resource.setrlimit(res, (soft, hard))
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        filt.load()
    return preexec


def kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid`, including ones that left the process group."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)  # as that uid, -1 reaches exactly its processes
        except OSError:
            pass
        os._exit(0)
    os.waitpid(pid, 0)


def command(cfg: SandboxConfig, uid: int, verdict_fd: int,
            cgroup: SlotCgroup | None) -> tuple[list[str], dict[str, Any], Callable[[], None]]:
    """argv, Popen kwargs and the cleanup to run after the program (removes its workdir)."""
    workdir = tempfile.mkdtemp(prefix="ringrl-sbx-")
    os.chown(workdir, uid, uid)

    def cleanup() -> None:
        kill_uid(uid)
        shutil.rmtree(workdir, ignore_errors=True)

    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8", "TMPDIR": workdir}
    popen = {"preexec_fn": _confine(cfg, uid, cgroup), "env": env, "cwd": workdir,
             "pass_fds": (verdict_fd,)}
    return [cfg.python, "-I", "-S", "-c", HARNESS], popen, cleanup
