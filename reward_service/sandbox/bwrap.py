"""bubblewrap backend: user, pid, net, ipc, uts, cgroup and mount namespaces.

bwrap is started as the slot's unprivileged host uid (not as root): as root, the sandbox's
mapped uid would be host root, for which the kernel ignores RLIMIT_NPROC, so a fork bomb
would not be contained. The `warm` backend builds its long-lived sandboxes from the same
arguments (`args`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from protocol.config.reward import SandboxConfig
from reward_service.sandbox.harness import HARNESS
from reward_service.sandbox.tmpfs import SlotTmp

SANDBOX_UID = 65534


def available() -> str | None:
    """None if this backend can run here, else why not."""
    return None if shutil.which("bwrap") else "bwrap not found on PATH (apt-get install bubblewrap)"


def _root_binds(python: str) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/lib", "/lib64", "/lib32", "/sbin"):
        p = Path(top)
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), top]
        elif p.is_dir():
            args += ["--ro-bind", top, top]
    real = Path(python).resolve()
    if not real.is_relative_to("/usr"):
        # e.g. a pyenv build: bind its whole install (bin/, lib/) at its real path.
        prefix = str(real.parent.parent)
        args += ["--ro-bind", prefix, prefix]
    return args


def args(cfg: SandboxConfig, seccomp_fd: int, cmd: Sequence[str], tmp: SlotTmp | None,
         extra: Sequence[str] = ()) -> list[str]:
    """bwrap argv: every namespace, read-only /, /usr and /dev, private /tmp tmpfs, no
    capabilities, the seccomp deny-list (read from `seccomp_fd`), then `extra`
    options/operations, then `cmd`. /tmp is the slot's own tmpfs (`tmp`) if it has one."""
    tmp_args = (["--bind", str(tmp.path), "/tmp"] if tmp is not None
                else ["--size", str(cfg.tmpfs_mb << 20), "--tmpfs", "/tmp"])
    return ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox",
            *_root_binds(cfg.python), "--dev", "/dev",
            *tmp_args, "--chdir", "/tmp",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
            "--setenv", "LANG", "C.UTF-8", "--seccomp", str(seccomp_fd),
            # bwrap's / and /dev are tmpfs without a size: writable, they would hold memory
            # beyond the private /tmp's bound (and /dev/shm is one of them).
            "--remount-ro", "/", "--remount-ro", "/dev", *extra, *cmd]


def as_uid(uid: int, argv: list[str],
           pass_fds: Sequence[int]) -> tuple[list[str], dict[str, Any]]:
    """argv and Popen kwargs that run `argv` as `uid` (all of real/effective/saved, no groups,
    no capabilities). Through util-linux `setpriv` when present: Popen's own `user=`/`group=`
    make CPython fork() the whole scoring process instead of vfork(), which costs
    milliseconds to hundreds of milliseconds per program in a process with a large heap."""
    kwargs: dict[str, Any] = {"env": {}, "cwd": "/", "pass_fds": tuple(pass_fds)}
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv], kwargs
    return argv, {**kwargs, "user": uid, "group": uid, "extra_groups": []}


def command(cfg: SandboxConfig, uid: int, seccomp_fd: int, verdict_fd: int,
            tmp: SlotTmp | None) -> tuple[list[str], dict[str, Any]]:
    return as_uid(uid, args(cfg, seccomp_fd, [cfg.python, "-I", "-S", "-c", HARNESS], tmp),
                  [seccomp_fd, verdict_fd])
