"""Warm backend: one long-lived bwrap sandbox per slot, with a trusted fork server as its pid 1.

The sandbox (namespaces, read-only /usr, private /tmp, seccomp, no capabilities, the slot's
unprivileged host uid) is built once; Python and its common modules are imported once. Each
program is a fork of the pristine server (server.py), so a run costs a fork instead of a
namespace set-up plus an interpreter start. The host keeps the hard limits: the wall clock and
the output cap are enforced here, and on either the whole sandbox is SIGKILLed from outside
(through a pidfd on its pid 1: the pid namespace dies with it) and rebuilt before the next run.
A server that dies, answers out of protocol (a reply without this run's nonce, or bytes after
the reply), or reports that it could not clean up is replaced the same way.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import select
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass

from protocol.config.reward import SandboxConfig
from reward_service.sandbox import bwrap, syscalls
from reward_service.sandbox.capture import Completed, pump, verdict_reader
from reward_service.sandbox.cgroup import SlotCgroup
from reward_service.sandbox.server import NONCE_SIZE, REPLY_FORMAT, REPLY_SIZE, SERVER
from reward_service.sandbox.tmpfs import SlotTmp

START_TIMEOUT_S = 30.0
VERDICT_FD = 3
"""The fd number of the verdict pipe in a warm run (the server wires the four fds it receives
to 0-3)."""


class StartError(RuntimeError):
    """A warm sandbox did not come up; the message carries bwrap's stderr."""


def available() -> str | None:
    return bwrap.available()


@dataclass
class Slot:
    """A running warm sandbox. `pids` are its host processes (bwrap, and the server as pid 1)."""
    uid: int
    proc: subprocess.Popen[bytes]
    ctl: socket.socket
    pidfd: int
    pids: tuple[int, int]


def _read_until(fd: int, deadline: float, done: bytes | None = None) -> bytes:
    """Read until `done` has been seen, EOF, or the deadline."""
    got = b""
    while done is None or done not in got:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        got += chunk
    return got


def start(cfg: SandboxConfig, uid: int, cgroup: SlotCgroup | None, tmp: SlotTmp | None) -> Slot:
    host, inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    info_r, info_w = os.pipe()
    err_r, err_w = os.pipe()
    seccomp_fd = syscalls.bpf_fd()
    # --as-pid-1: the server itself is init (signal-proof from inside, reaps every orphan).
    extra = ["--as-pid-1", "--info-fd", str(info_w)]
    argv, popen = bwrap.as_uid(uid, bwrap.args(
        cfg, seccomp_fd, [cfg.python, "-I", "-S", "-c", SERVER, str(inside.fileno())], tmp, extra),
        [inside.fileno(), info_w, seccomp_fd])
    if cgroup is not None:
        argv = cgroup.launcher() + argv
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err_w, start_new_session=True, **popen)
    except BaseException:
        host.close()
        os.close(info_r)
        os.close(err_r)
        raise
    finally:
        for fd in (info_w, err_w, seccomp_fd):
            os.close(fd)
        inside.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        info = _read_until(info_r, deadline, b"}")
        ready = _read_until(host.fileno(), deadline, b"R")
        if ready != b"R":
            why = _read_until(err_r, time.monotonic() + 1).decode(errors="replace").strip()
            raise StartError(why or "the fork server did not answer")
        child = int(json.loads(info)["child-pid"])
        pidfd = os.pidfd_open(child)
    except BaseException:
        host.close()
        _kill(proc, None)
        raise
    finally:
        os.close(info_r)
        os.close(err_r)  # the server never writes to stderr once it is up
    return Slot(uid, proc, host, pidfd, (proc.pid, child))


def _kill(proc: subprocess.Popen[bytes], pidfd: int | None) -> None:
    """SIGKILL the sandbox's pid 1 (the kernel then kills everything in its pid namespace)
    and bwrap; wait for bwrap so nothing is left."""
    if pidfd is not None:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    if pidfd is not None:
        select.select([pidfd], [], [], START_TIMEOUT_S)  # readable once pid 1 has exited


def stop(slot: Slot) -> None:
    _kill(slot.proc, slot.pidfd)
    slot.ctl.close()
    os.close(slot.pidfd)


def run(slot: Slot, payload: bytes, verdict: tuple[int, int], wall_s: float,
        max_bytes: int) -> tuple[Completed, bool, int]:
    """One program in the slot's sandbox; `verdict` is its verdict pipe (the write end goes to
    the server as the run's fd 3 and is closed here). Returns the run, whether the slot is
    still fit for the next program (if not, it has been killed: stop it and start a fresh
    one), and how many processes the program left behind (killed by the server)."""
    start_t = time.monotonic()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    nonce = secrets.token_bytes(NONCE_SIZE)
    try:
        socket.send_fds(slot.ctl, [b"R" + nonce], [in_r, out_w, err_w, verdict[1]])
        sent = True
    except OSError:
        sent = False  # the server is gone
    finally:
        for fd in (in_r, out_w, err_w, verdict[1]):
            os.close(fd)
    reply = bytearray()

    def read_reply() -> bool:
        chunk = slot.ctl.recv(REPLY_SIZE - len(reply))
        reply.extend(chunk)
        return not chunk or len(reply) == REPLY_SIZE

    read_verdict, passed = verdict_reader(verdict[0])
    readers = {verdict[0]: read_verdict}
    if sent:
        readers[slot.ctl.fileno()] = read_reply
    try:
        got = pump(in_w, out_r, err_r, payload if sent else b"", start_t + wall_s, max_bytes,
                   readers=readers)
    finally:
        os.close(out_r)
        os.close(err_r)
    rc, left, healthy = -signal.SIGKILL, 0, 0
    if len(reply) == REPLY_SIZE and not _pending(slot.ctl):
        echoed, rc_, left_, healthy_ = struct.unpack(REPLY_FORMAT, reply)
        if hmac.compare_digest(echoed, nonce):  # a reply for this run, and nothing after it
            rc, left, healthy = rc_, left_, healthy_
    fit = bool(healthy) and not got.timed_out and not got.overflow
    if not fit:
        _kill(slot.proc, slot.pidfd)  # the hard limit: nothing inside can delay this
    return Completed(rc, got.stdout, got.stderr, got.timed_out, got.overflow,
                     time.monotonic() - start_t, passed()), fit, left


def _pending(sock: socket.socket) -> bool:
    """Whether bytes beyond the reply wait on the control socket (only a forger sends them)."""
    try:
        return bool(sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK))
    except BlockingIOError:
        return False
    except OSError:
        return True
