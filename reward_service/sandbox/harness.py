"""The trusted first stage that runs inside every sandbox, before any untrusted code.

Run as `python -I -S -c HARNESS`. It reads a header line and the sources from stdin, lowers
its own rlimits (inside the sandbox, so they bind the sandboxed uid), compiles the program
(a SyntaxError is reported as such, not as a crash), then runs it. The rest of stdin is the
program's stdin. In `call` mode (HumanEval form) it runs the test snippet and `check(entry)`,
then prints a per-run nonce: a program that exits 0 early never prints it, so it cannot pass
by quitting before the tests run.
"""

from __future__ import annotations

COMPILE_ERROR_EXIT = 3
COMPILE_ERROR_TAG = b"ringrl-compile-error"

HARNESS_DEF = r'''
import os, sys, resource
def _ringrl_harness():
    inp = sys.stdin.buffer
    mode, nonce, n_src, n_test, entry, cpu, mem, fsize, nproc = inp.readline().split()
    src, test = inp.read(int(n_src)), inp.read(int(n_test))
    for res, soft, hard in ((resource.RLIMIT_CPU, int(cpu), int(cpu) + 1),
                            (resource.RLIMIT_AS, int(mem), int(mem)),
                            (resource.RLIMIT_FSIZE, int(fsize), int(fsize)),
                            (resource.RLIMIT_NPROC, int(nproc), int(nproc)),
                            (resource.RLIMIT_NOFILE, 64, 64),
                            (resource.RLIMIT_CORE, 0, 0)):
        cur = resource.getrlimit(res)[1]
        top = hard if cur == resource.RLIM_INFINITY else min(hard, cur)
        resource.setrlimit(res, (min(soft, top), top))
    try:
        code = compile(src, "solution.py", "exec")
        tcode = compile(test, "test.py", "exec") if test else None
    except (SyntaxError, ValueError) as e:
        os.write(2, b"ringrl-compile-error: " + repr(e).encode()[:2000] + b"\n")
        os._exit(3)
    sys.argv = ["solution.py"]
    g = {"__name__": "__main__", "__builtins__": __builtins__}
    del src, test, n_src, n_test, cpu, mem, fsize, nproc, inp
    exec(code, g)
    if mode == b"call":
        exec(tcode, g)
        g["check"](g[entry.decode()])
        sys.stdout.flush()
        os.write(1, b"\n" + nonce + b"\n")
'''
HARNESS = HARNESS_DEF + "_ringrl_harness()\n"


def header(mode: str, nonce: str, src: bytes, test: bytes, entry: str, cpu_s: int,
           memory_bytes: int, fsize_bytes: int, nproc: int) -> bytes:
    fields = [mode, nonce, str(len(src)), str(len(test)), entry or "-", str(cpu_s),
              str(memory_bytes), str(fsize_bytes), str(nproc)]
    return (" ".join(fields) + "\n").encode()
