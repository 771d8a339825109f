"""The trusted fork server that runs as pid 1 of each warm sandbox (source text, run with -c).

It never runs untrusted code itself; it only forks. Per request (a per-run nonce and four fds
over the control socket: the run's stdin, stdout, stderr and verdict pipe) it forks a child
that wires those fds to 0-3 and runs the shared harness (rlimits; in `call` mode the checker,
which forks the candidate that runs the program), and exits. Then the server SIGKILLs every
other process in the pid namespace (`kill(-1)` from init reaches all of them), reaps until it
has no children left — so nothing of the run survives —, empties /tmp (the only writable
path), and answers `(nonce, exit code, processes left behind, healthy)`. If /tmp cannot be
emptied it answers unhealthy and exits, and the host starts a fresh sandbox.

As pid 1 of its namespace it cannot be killed or stopped by the programs (the kernel drops
signals from inside the namespace that init has no handler for, so SIGINT is set to default).
It is non-dumpable (so are its children), and seccomp denies ptrace, process_vm_*, pidfd_open
and pidfd_getfd, with no /proc mounted: a program cannot read its memory or take its control
socket.
"""
from __future__ import annotations

import struct

from reward_service.sandbox.harness import HARNESS_DEF

NONCE_SIZE = 16
REPLY_FORMAT = f"!{NONCE_SIZE}siii"
REPLY_SIZE = struct.calcsize(REPLY_FORMAT)

SERVER = HARNESS_DEF + f"NONCE_SIZE = {NONCE_SIZE}\nREPLY_FORMAT = {REPLY_FORMAT!r}\n" + r'''
import ctypes, signal, socket, struct
# Loaded once here, so a forked program finds them imported (children re-seed `random`).
import bisect, collections, copy, decimal, fractions, functools, heapq, itertools, json, math
import operator, random, re, statistics, string, typing

def _ringrl_child(fds):
    for i, fd in enumerate(fds):
        os.dup2(fd, i)
    os.closerange(4, 1 << 20)  # the control socket above all: a program must not answer for us
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.stdin = sys.__stdin__ = open(0, "r", encoding="utf-8", closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace",
                                       closefd=False)
    os.chdir("/tmp")
    _ringrl_end_with(_ringrl_harness)

def _ringrl_reap():
    left = 0
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return left
        left += 1

def _ringrl_empty(path):
    for e in os.scandir(path):
        if e.is_dir(follow_symlinks=False):
            os.chmod(e.path, 0o700)
            _ringrl_empty(e.path)
            os.rmdir(e.path)
        else:
            os.unlink(e.path)

def _ringrl_wipe():
    try:
        os.chmod("/tmp", 0o700)
        _ringrl_empty("/tmp")
        return os.listdir("/tmp") == []
    except (OSError, RecursionError):
        return False

def _ringrl_serve(ctl_fd):
    os.closerange(3, ctl_fd)
    os.closerange(ctl_fd + 1, 1 << 20)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _ringrl_nodump()
    ctl = socket.socket(fileno=ctl_fd)
    ctl.sendall(b"R")
    while True:
        msg, fds, _, _ = socket.recv_fds(ctl, 1 + NONCE_SIZE, 4)
        if not msg:
            os._exit(0)  # the host is gone
        if len(fds) != 4 or len(msg) != 1 + NONCE_SIZE:
            os._exit(1)
        pid = os.fork()
        if pid == 0:
            _ringrl_child(fds)
        for fd in fds:
            os.close(fd)
        status = os.waitpid(pid, 0)[1]
        left = _ringrl_reap()
        ok = _ringrl_wipe()
        ctl.sendall(struct.pack(REPLY_FORMAT, msg[1:], os.waitstatus_to_exitcode(status), left,
                                int(ok)))
        if not ok:
            os._exit(2)

_ringrl_serve(int(sys.argv[1]))
'''
