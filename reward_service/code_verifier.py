"""Score a code response: extract the program, run it against the tests in the sandbox."""

from __future__ import annotations

import signal

from protocol.schema import CodeReference, Verdict, VerdictStatus
from reward_service.sandbox import Sandbox
from reward_service.sandbox.capture import Completed
from reward_service.sandbox.harness import COMPILE_ERROR_EXIT, COMPILE_ERROR_TAG

S = VerdictStatus


def normalise(text: str) -> list[str]:
    """Lines with runs of whitespace collapsed, blank lines at the ends dropped."""
    return [" ".join(line.split()) for line in text.strip().splitlines()]


def _last_line(stderr: bytes) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    return lines[-1][:200] if lines else ""


def failure(done: Completed, cfg_wall_s: float, output_bytes: int) -> Verdict | None:
    """The verdict of a run that did not finish normally, or None if it exited 0."""
    if done.timed_out:
        return Verdict(status=S.timeout, detail=f"killed after {cfg_wall_s:g}s wall clock")
    if done.overflow:
        return Verdict(status=S.limit_exceeded, detail=f"output over {output_bytes} bytes, cut")
    if done.limit:
        return Verdict(status=S.limit_exceeded, detail=f"{done.limit} limit")
    rc = done.returncode
    if rc > 128 and rc - 128 in signal.valid_signals():
        rc = 128 - rc  # bwrap reports a child killed by signal N as exit code 128 + N
    if rc == COMPILE_ERROR_EXIT and COMPILE_ERROR_TAG in done.stderr:
        return Verdict(status=S.compile_error, detail=_last_line(done.stderr))
    if rc == -signal.SIGXCPU or rc == -signal.SIGKILL:
        return Verdict(status=S.timeout, detail="CPU time limit")
    if rc < 0:
        return Verdict(status=S.runtime_error, detail=f"killed by {signal.Signals(-rc).name}")
    if rc != 0:
        err = done.stderr.decode(errors="replace")
        last = _last_line(done.stderr)
        if "MemoryError" in err:
            return Verdict(status=S.limit_exceeded, detail="memory limit")
        if "File too large" in err:
            return Verdict(status=S.limit_exceeded, detail="file size limit")
        if "BlockingIOError" in err and "Resource temporarily unavailable" in err:
            return Verdict(status=S.limit_exceeded, detail="process limit")
        if "No space left on device" in err:
            return Verdict(status=S.limit_exceeded, detail="/tmp size or file count")
        if "Too many open files" in err:
            return Verdict(status=S.limit_exceeded, detail="open files limit")
        return Verdict(status=S.runtime_error, detail=last or f"exit code {rc}")
    return None


def check_program(sandbox: Sandbox, program: str, ref: CodeReference) -> Verdict:
    if not ref.io_tests and not ref.test_code:
        return Verdict(status=S.wrong, detail="reference has no tests")
    cfg = sandbox.cfg
    for i, test in enumerate(ref.io_tests):
        # A lone surrogate cannot be fed to a program as UTF-8; it reads U+FFFD instead, as
        # program and test code are encoded (one odd item must not fail its whole batch).
        done = sandbox.run(program, stdin=test.stdin.encode(errors="replace"))
        bad = failure(done, cfg.wall_s, cfg.output_bytes)
        if bad is not None:
            return Verdict(status=bad.status, detail=f"test {i}: {bad.detail}")
        if normalise(done.stdout.decode(errors="replace")) != normalise(test.stdout):
            return Verdict(status=S.wrong, detail=f"test {i}: output differs")
    if ref.test_code:
        if not ref.entry_point or not ref.entry_point.isidentifier():
            # It is one field of the harness header: anything but a name would shift the others.
            return Verdict(status=S.wrong, detail="reference entry_point is not a Python identifier")
        done = sandbox.run(program, test_code=ref.test_code, entry_point=ref.entry_point)
        bad = failure(done, cfg.wall_s, cfg.output_bytes)
        if bad is not None:
            return bad
        if not done.checked:  # the pass mark comes from the checker process, never the program
            return Verdict(status=S.wrong, detail="exited before the tests finished")
    n = len(ref.io_tests) + (1 if ref.test_code else 0)
    return Verdict(status=S.correct, detail=f"passed {n} test run(s)")
