"""The trusted first stage that runs inside every sandbox, before any untrusted code.

Run as `python -I -S -c HARNESS` (or forked by the warm fork server). It reads a header line
and the sources from stdin, lowers its own rlimits (inside the sandbox, so they bind the
sandboxed uid), then:

- `io` mode: closes the verdict fd, compiles the program (a SyntaxError is reported as such,
  not as a crash) and runs it in this process. The rest of stdin is the program's stdin.
- `call` mode (HumanEval form): this process becomes the *checker* and never runs a line of the
  program. It makes itself non-dumpable, forks the *candidate* (which closes the verdict fd,
  then compiles and runs the program and serves calls), and runs the trusted test code itself.
  `check` gets a proxy for the entry point (and, for any other unknown name the tests use — a
  helper such as HumanEval's `poly` — a proxy for the program's function of that name): each
  call sends its arguments to the candidate over a pipe and gets back plain data (None, bool,
  int, float, complex, str, bytes, list, tuple, dict, set, frozenset), decoded here by `json`.
  No object the program built ever exists in the checker, so it cannot override `__eq__`,
  and no tracing hook, patched builtin or frame it touches is the checker's. Only if `check`
  returns does the checker write `P` to the verdict fd — a pipe the host opened for this run
  alone, which the candidate never holds — and then it kills the candidate: what the program
  would do after its last call (atexit, threads) does not count.
"""

from __future__ import annotations

COMPILE_ERROR_EXIT = 3
COMPILE_ERROR_TAG = b"ringrl-compile-error"
VERDICT_PASS = b"P"

HARNESS_DEF = r'''
import os, sys, resource, json, atexit, traceback, builtins

def _ringrl_exit_code(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1

def _ringrl_finish(code):
    """What the interpreter does at exit (join non-daemon threads, atexit, flush), then exit:
    every forked process of the harness ends here, never by returning into its parent's code."""
    threading = sys.modules.get("threading")
    try:
        if threading is not None:
            threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except BaseException:
            code = code or 120
    os._exit(code)

def _ringrl_end_with(fn, *args):
    """Run fn(*args) and end the process with its exit code (a SystemExit's, 1 on an error)."""
    try:
        code = fn(*args)
    except SystemExit as e:
        code = _ringrl_exit_code(e.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    _ringrl_finish(code)

def _ringrl_program(src):
    """Compile and run the program as __main__; returns its globals."""
    try:
        code = compile(src, "solution.py", "exec")
    except (SyntaxError, ValueError) as e:
        os.write(2, b"ringrl-compile-error: " + repr(e).encode()[:2000] + b"\n")
        os._exit(3)
    sys.argv = ["solution.py"]
    g = {"__name__": "__main__", "__builtins__": builtins}
    del src
    exec(code, g)
    return g

def _ringrl_enc(v, depth=0):
    # Base types by exact test first: a subclass (Counter, a named tuple) goes as its base, so
    # an honest program is checked on its data; the checker decodes only plain types anyway.
    if depth > 200:
        raise ValueError("value nested too deeply to check")
    t = type(v)
    if v is None or t is bool or t is str or t is float:
        return v
    if isinstance(v, int):
        v = int(v)
        return v if -(1 << 62) < v < 1 << 62 else {"x": hex(v)}
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str.__str__(v)
    d = depth + 1
    if isinstance(v, list):
        return [_ringrl_enc(x, d) for x in v]
    if isinstance(v, tuple):
        return {"t": [_ringrl_enc(x, d) for x in v]}
    if isinstance(v, dict):
        return {"d": [[_ringrl_enc(k, d), _ringrl_enc(x, d)] for k, x in v.items()]}
    if isinstance(v, frozenset):
        return {"f": [_ringrl_enc(x, d) for x in v]}
    if isinstance(v, set):
        return {"s": [_ringrl_enc(x, d) for x in v]}
    if isinstance(v, (bytes, bytearray)):
        return {"b": bytes(v).hex()}
    if isinstance(v, complex):
        return {"c": [v.real, v.imag]}
    raise TypeError(f"a value of type {t.__name__} cannot be checked (plain data only)")

_RINGRL_DEC = {"t": tuple, "f": frozenset, "s": set, "d": dict,
               "x": lambda h: int(h, 16), "b": bytes.fromhex, "c": lambda p: complex(*p)}

def _ringrl_dec(o):
    (tag, val), = o.items()
    return _RINGRL_DEC[tag](val)

def _ringrl_candidate(src, rfd, wfd):
    """The untrusted side of a `call` run: the program, then its functions on request."""
    g = _ringrl_program(src)
    rd, wr = os.fdopen(rfd, "rb"), os.fdopen(wfd, "wb")
    wr.write(b'"ready"\n')
    wr.flush()
    for line in rd:
        name, args, kwargs = json.loads(line, object_hook=_ringrl_dec)
        try:
            f = g.get(name)
            if not callable(f):
                raise NameError(f"name {name!r} is not a function of the program")
            reply = ["r", _ringrl_enc(f(*args, **kwargs))]
        except Exception as e:
            reply = ["e", type(e).__name__, str(e)[:500]]
        wr.write(json.dumps(reply).encode() + b"\n")
        wr.flush()
    return 0

class _RingrlProgramError(Exception):
    """The program's function raised, returned something that is not plain data, or died."""

def _ringrl_check(test, entry, wfd, rfd):
    """The trusted side: run the tests against proxies; True once `check` has returned."""
    with os.fdopen(rfd, "rb") as rd, os.fdopen(wfd, "wb") as wr:
        return _ringrl_tests(test, entry, rd, wr)

def _ringrl_tests(test, entry, rd, wr):
    # The tests are loaded while the candidate runs the program.
    g = {"__name__": "__main__", "__builtins__": _RingrlNames(builtins.__dict__)}
    exec(compile(test, "test.py", "exec"), g)
    if rd.readline() != b'"ready"\n':
        return False  # the program ended (or spoke out of turn) before the tests ran

    def proxy(name):
        def call(*args, **kwargs):
            wr.write(json.dumps([name, _ringrl_enc(args), _ringrl_enc(kwargs)]).encode() + b"\n")
            wr.flush()
            reply = json.loads(rd.readline() or b'["e", "EOFError", "the program exited"]',
                               object_hook=_ringrl_dec)
            if reply[0] == "r" and len(reply) == 2:
                return reply[1]
            raise _RingrlProgramError(": ".join(map(str, reply[1:3])))
        call.__name__ = name
        return call

    g["__builtins__"].proxy = proxy
    g["check"](proxy(entry))
    return True

class _RingrlNames(dict):
    """The tests' builtins. Names the tests use but do not define are the program's functions
    (HumanEval's tests call helpers of the prompt, e.g. `poly`, `encode_cyclic`)."""
    def __missing__(self, name):
        return self.proxy(name)

def _ringrl_limits(cpu, mem, fsize, nproc):
    for res, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1),
                            (resource.RLIMIT_AS, mem, mem),
                            (resource.RLIMIT_FSIZE, fsize, fsize),
                            (resource.RLIMIT_NPROC, nproc, nproc),
                            (resource.RLIMIT_NOFILE, 64, 64),
                            (resource.RLIMIT_CORE, 0, 0)):
        cur = resource.getrlimit(res)[1]
        top = hard if cur == resource.RLIM_INFINITY else min(hard, cur)
        resource.setrlimit(res, (min(soft, top), top))

def _ringrl_nodump():
    # Non-dumpable: no process of the same uid may open its /proc files, take its fds
    # (pidfd_getfd) or read its memory; children inherit it.
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE

def _ringrl_harness():
    """Returns the exit code of the run (the caller exits with it)."""
    inp = sys.stdin.buffer
    mode, n_src, n_test, entry, cpu, mem, fsize, nproc, vfd = inp.readline().split()
    src, test, vfd = inp.read(int(n_src)), inp.read(int(n_test)), int(vfd)
    _ringrl_limits(int(cpu), int(mem), int(fsize), int(nproc))
    del inp, n_src, n_test, cpu, mem, fsize, nproc
    if mode == b"io":
        os.close(vfd)
        _ringrl_program(src)
        return 0
    _ringrl_nodump()
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(vfd)
        os.close(req_w)
        os.close(resp_r)
        del test
        _ringrl_end_with(_ringrl_candidate, src, req_r, resp_w)
    os.close(req_r)
    os.close(resp_w)
    del src
    try:
        if _ringrl_check(test, entry.decode(), req_w, resp_r):
            os.write(vfd, b"P")
            os.kill(pid, 9)  # its part is done; nothing it does from here counts
            os.waitpid(pid, 0)
            return 0
    except BaseException:
        traceback.print_exc()
        os.kill(pid, 9)  # a failed check ends the run
        status = os.waitpid(pid, 0)[1]
        # ... as a failure, unless the candidate died of its own limit first (SIGXCPU).
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 9
        return 1 if sig == 9 else 128 + sig
    finally:
        os.close(vfd)
    rc = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return rc if rc >= 0 else 128 - rc
'''
HARNESS = HARNESS_DEF + "\n_ringrl_end_with(_ringrl_harness)\n"


def header(mode: str, src: bytes, test: bytes, entry: str, cpu_s: int, memory_bytes: int,
           fsize_bytes: int, nproc: int, verdict_fd: int) -> bytes:
    fields = [mode, str(len(src)), str(len(test)), entry or "-", str(cpu_s),
              str(memory_bytes), str(fsize_bytes), str(nproc), str(verdict_fd)]
    return (" ".join(fields) + "\n").encode()
