"""Feed a program its stdin and capture its output with a deadline and a size cap.

Output is read incrementally; a stream that passes its cap is cut there and the caller kills
the program, so a program printing forever costs at most `max_bytes` of memory.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reward_service.sandbox.harness import VERDICT_PASS


@dataclass
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    overflow: bool
    wall_s: float
    checked: bool = False
    """`call` mode: the checker wrote its pass mark on the run's verdict pipe."""
    limit: str | None = None
    """A bound the host saw the run hit outside the program's view (e.g. "memory")."""


@dataclass
class Pumped:
    stdout: bytes
    stderr: bytes
    timed_out: bool
    overflow: bool


def pump(stdin_fd: int, out_fd: int, err_fd: int, data: bytes, deadline: float, max_bytes: int,
         on_idle: Callable[[], None] | None = None,
         readers: Mapping[int, Callable[[], bool]] | None = None) -> Pumped:
    """Write `data` to `stdin_fd` (closed once written; it is the only fd this closes) and read
    the two outputs until both reach EOF and every `readers[fd]()` has returned True (called
    when its fd is readable; True means done) — or the deadline passes, or an output passes
    `max_bytes`. `on_idle` runs when nothing happened for 50 ms."""
    out, err = bytearray(), bytearray()
    bufs = {out_fd: out, err_fd: err}
    extra = dict(readers or {})
    sel = selectors.DefaultSelector()
    for fd in (stdin_fd, out_fd, err_fd):
        os.set_blocking(fd, False)
    for fd in (out_fd, err_fd, *extra):
        sel.register(fd, selectors.EVENT_READ)
    pending = memoryview(data)
    stdin_open = True
    if pending:
        sel.register(stdin_fd, selectors.EVENT_WRITE)
    else:
        os.close(stdin_fd)
        stdin_open = False
    timed_out = overflow = False
    try:
        while sel.get_map() and not overflow:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            events = sel.select(min(remaining, 0.05))
            if not events and on_idle is not None:
                on_idle()
            for key, _ in events:
                fd = key.fd
                if fd == stdin_fd:
                    try:
                        pending = pending[os.write(fd, pending[:65536]):]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(fd)
                        os.close(fd)
                        stdin_open = False
                elif fd in extra:
                    if extra[fd]():
                        sel.unregister(fd)
                else:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        sel.unregister(fd)
                        continue
                    buf = bufs[fd]
                    room = max_bytes - len(buf)
                    buf += chunk[:room]
                    if len(chunk) > room:
                        overflow = True
                        break
    finally:
        sel.close()
        if stdin_open:
            os.close(stdin_fd)
    return Pumped(bytes(out), bytes(err), timed_out, overflow)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def verdict_reader(fd: int) -> tuple[Callable[[], bool], Callable[[], bool]]:
    """A pump reader for a run's verdict pipe, and a function that says whether it held
    exactly the pass mark once the pipe has been read."""
    got = bytearray()

    def read() -> bool:
        chunk = os.read(fd, 16)
        got.extend(chunk[:16 - len(got)])
        return not chunk

    return read, lambda: bytes(got) == VERDICT_PASS


def run_capped(argv: Sequence[str], stdin: bytes, wall_s: float, max_bytes: int,
               verdict: tuple[int, int], after_exit: Callable[[], None] | None = None,
               **popen: Any) -> Completed:
    """Run a fresh process (new session). `verdict` is the run's verdict pipe (read end, write
    end): the write end goes to the process (in `popen`'s pass_fds) and is closed here once it
    is started. `after_exit` runs once the main process is gone (or killed): it must end any
    process the program left behind, so the pipes reach EOF."""
    start = time.monotonic()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = subprocess.Popen(list(argv), stdin=in_r, stdout=out_w, stderr=err_w,
                                start_new_session=True, **popen)
    except BaseException:
        for fd in (in_w, out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (in_r, out_w, err_w, verdict[1]):
            os.close(fd)
    read_verdict, passed = verdict_reader(verdict[0])
    cleaned = False

    def cleanup() -> None:
        nonlocal cleaned
        if not cleaned and after_exit is not None:
            after_exit()
        cleaned = True

    def idle() -> None:
        if proc.poll() is not None:
            cleanup()  # the main process is gone; end anything it left holding the pipes

    got = None
    try:
        got = pump(in_w, out_r, err_r, stdin, start + wall_s, max_bytes, on_idle=idle,
                   readers={verdict[0]: read_verdict})
    finally:
        if got is None or got.timed_out or got.overflow or proc.poll() is None:
            _kill_group(proc.pid)
        proc.wait()
        cleanup()
        os.close(out_r)
        os.close(err_r)
    return Completed(proc.returncode, got.stdout, got.stderr, got.timed_out, got.overflow,
                     time.monotonic() - start, passed())
