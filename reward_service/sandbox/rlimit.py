"""Fallback backend for containers without user namespaces: setuid + rlimits + seccomp.

There is no filesystem isolation beyond permissions: the program sees the host filesystem as
an unprivileged uid would. See docs/reward.md for what this does and does not hold.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import tempfile
from collections.abc import Callable
from typing import Any

import pyseccomp as seccomp

from protocol.config.reward import SandboxConfig
from reward_service.sandbox.harness import HARNESS

_DENY = ("socket", "socketpair", "ptrace", "process_vm_readv", "process_vm_writev", "kexec_load",
         "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "bpf", "perf_event_open",
         "keyctl", "add_key", "request_key", "userfaultfd", "io_uring_setup", "setsid", "setpgid",
         "personality", "open_by_handle_at", "name_to_handle_at")
_CLONE_NEWUSER = 0x10000000

_filter: seccomp.SyscallFilter | None = None


def available() -> str | None:
    return None if os.geteuid() == 0 else "the rlimit backend must start as root to setuid"


def _seccomp() -> seccomp.SyscallFilter:
    """Built once in the parent; forked children only load it."""
    global _filter
    if _filter is None:
        f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for name in _DENY:
            f.add_rule(seccomp.ERRNO(errno.EPERM), name)
        # clone3 passes its flags in memory seccomp cannot read: make libc fall back to clone.
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        f.add_rule(seccomp.ERRNO(errno.EPERM), "clone",
                   seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_NEWUSER, _CLONE_NEWUSER))
        _filter = f
    return _filter


def _confine(cfg: SandboxConfig, uid: int) -> Callable[[], None]:
    limits = ((resource.RLIMIT_CPU, cfg.cpu_s, cfg.cpu_s + 1),
              (resource.RLIMIT_AS, cfg.memory_mb << 20, cfg.memory_mb << 20),
              (resource.RLIMIT_FSIZE, cfg.file_size_mb << 20, cfg.file_size_mb << 20),
              (resource.RLIMIT_NPROC, cfg.nproc, cfg.nproc),
              (resource.RLIMIT_NOFILE, 64, 64),
              (resource.RLIMIT_CORE, 0, 0))
    filt = _seccomp()

    def preexec() -> None:  # runs in the child between fork and exec, after setsid
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


def command(cfg: SandboxConfig, uid: int) -> tuple[list[str], dict[str, Any], Callable[[], None]]:
    """argv, Popen kwargs and the cleanup to run after the program (removes its workdir)."""
    workdir = tempfile.mkdtemp(prefix="ringrl-sbx-")
    os.chown(workdir, uid, uid)

    def cleanup() -> None:
        kill_uid(uid)
        shutil.rmtree(workdir, ignore_errors=True)

    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8", "TMPDIR": workdir}
    popen = {"preexec_fn": _confine(cfg, uid), "env": env, "cwd": workdir}
    return [cfg.python, "-I", "-S", "-c", HARNESS], popen, cleanup
