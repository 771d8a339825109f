"""The seccomp deny-list shared by the backends, built with pyseccomp (libseccomp).

Denied calls fail with EPERM (a clean Python exception, so the verdict is `runtime_error`),
never kill the process. The `rlimit` backend loads the filter in each child; the namespace
backends hand it to bwrap as BPF (`--seccomp FD`), which loads it just before exec.
"""

from __future__ import annotations

import errno
import os

import pyseccomp as seccomp

# Network; reaching into another process (tracing, its memory, its descriptors — pidfd_getfd is
# how a program would take the warm fork server's control socket —, comparing or advising its
# resources); namespace/mount games (the new mount API too) and rarely-needed kernel attack
# surface. setsid/setpgid keep every child in the run's process group (the rlimit backend kills
# that group); SysV and POSIX message-queue IPC objects outlive their creator, so in a warm
# sandbox they would carry state from one program to the next; anonymous files (memfd) hold
# memory outside the address-space limit.
DENY = ("socket", "socketpair", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open",
        "pidfd_getfd", "kcmp", "process_madvise", "kexec_load",
        "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount",
        "fsopen", "fsmount", "fspick", "mount_setattr", "bpf", "perf_event_open",
        "keyctl", "add_key", "request_key", "userfaultfd", "io_uring_setup", "setsid", "setpgid",
        "personality", "open_by_handle_at", "name_to_handle_at",
        "shmget", "semget", "msgget", "mq_open", "memfd_create", "memfd_secret")
_CLONE_NEWUSER = 0x10000000

_filter: seccomp.SyscallFilter | None = None
_bpf: bytes | None = None


def deny_filter() -> seccomp.SyscallFilter:
    """Built once per process; forked children only load it."""
    global _filter
    if _filter is None:
        f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for name in DENY:
            f.add_rule(seccomp.ERRNO(errno.EPERM), name)
        # clone3 passes its flags in memory seccomp cannot read: make libc fall back to clone.
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        f.add_rule(seccomp.ERRNO(errno.EPERM), "clone",
                   seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_NEWUSER, _CLONE_NEWUSER))
        _filter = f
    return _filter


def bpf() -> bytes:
    """The filter as a BPF program, the form `bwrap --seccomp FD` reads."""
    global _bpf
    if _bpf is None:
        fd = os.memfd_create("ringrl-seccomp")
        try:
            with os.fdopen(os.dup(fd), "w+b") as f:
                deny_filter().export_bpf(f)
            _bpf = os.pread(fd, 1 << 20, 0)
        finally:
            os.close(fd)
    return _bpf


def bpf_fd() -> int:
    """A fresh readable fd holding the BPF program (bwrap reads it to the end); caller closes."""
    fd = os.memfd_create("ringrl-seccomp")
    os.write(fd, bpf())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
