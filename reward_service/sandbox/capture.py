"""Run a process with a wall-clock deadline and bounded output capture.

Output is read incrementally; a stream that passes its cap is cut there and the whole process
group is killed, so a program printing forever costs at most `max_bytes` of memory.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    overflow: bool
    wall_s: float


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_capped(argv: Sequence[str], stdin: bytes, wall_s: float, max_bytes: int,
               after_exit: Callable[[], None] | None = None, **popen: Any) -> Completed:
    """`after_exit` runs once the main process is gone (or killed): it must end any process the
    program left behind, so the pipes reach EOF."""
    start = time.monotonic()
    deadline = start + wall_s
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, **popen)
    assert proc.stdin and proc.stdout and proc.stderr
    out, err = bytearray(), bytearray()
    bufs = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    sel = selectors.DefaultSelector()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        os.set_blocking(f.fileno(), False)
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    pending = memoryview(stdin)
    if pending:
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    timed_out = overflow = cleaned = False

    def cleanup() -> None:
        nonlocal cleaned
        if not cleaned and after_exit is not None:
            after_exit()
        cleaned = True

    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            events = sel.select(min(remaining, 0.05))
            if not events and proc.poll() is not None:
                cleanup()  # the main process is gone; end anything it left holding the pipes
            for key, _ in events:
                f = key.fileobj
                if f is proc.stdin:
                    try:
                        n = os.write(proc.stdin.fileno(), pending[:65536])
                        pending = pending[n:]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                fd = f.fileno()  # type: ignore[union-attr]
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(f)
                    continue
                buf = bufs[fd]
                room = max_bytes - len(buf)
                buf += chunk[:room]
                if len(chunk) > room:
                    overflow = True
                    break
            if overflow:
                break
    finally:
        if timed_out or overflow or proc.poll() is None:
            _kill_group(proc.pid)
        proc.wait()
        cleanup()
        sel.close()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            f.close()
    return Completed(proc.returncode, bytes(out), bytes(err), timed_out, overflow,
                     time.monotonic() - start)
