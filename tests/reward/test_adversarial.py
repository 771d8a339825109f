"""Programs written against this sandbox's design (docs/reward.md, "Threat model"): the fork
server's control channel, other processes and their descriptors, memory outside the address
space, the harness's internals, timing. None may score `correct`; each is followed in the same
slot by honest programs that must still be scored exactly (a correct one `correct`, a wrong one
not), and no process of the attack may be left in the slot."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from protocol.config.reward import SandboxConfig
from protocol.schema import CodeReference, IOTest, VerdictStatus
from reward_service.code_verifier import check_program
from reward_service.sandbox import Sandbox

pytestmark = pytest.mark.slow
S = VerdictStatus

CALL = CodeReference(entry_point="add", test_code=(
    "def check(candidate):\n"
    "    assert candidate(2, 3) == 5\n"
    "    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9\n"
    "    assert candidate(-1, 1) == 0\n"))
IO = CodeReference(io_tests=[IOTest(stdin="2 3\n", stdout="5")])
WRONG_ADD = "def add(a, b):\n    return a - b\n"
LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
# Every descriptor a program could have inherited gets a forged pass mark, forged checker
# replies and a forged server reply.
FORGE_ALL_FDS = ("import os, struct\n"
                 "forged = b'P\\n\"ready\"\\n[\"r\", 5]\\n' + struct.pack('!16siii', bytes(16), 0, 0, 1)\n"
                 "for fd in range(3, 1024):\n"
                 "    try:\n        os.write(fd, forged)\n    except OSError:\n        pass\n")

ATTACKS: dict[str, tuple[str, CodeReference, set[S] | None]] = {
    # -- the harness: the checks run in another process, data comes back as plain values
    "always-equal-object": (
        "class Yes:\n    __eq__ = __lt__ = __le__ = __gt__ = __ge__ = lambda s, o: True\n"
        "    __ne__ = lambda s, o: False\n    __abs__ = __sub__ = __rsub__ = lambda s, *o: s\n"
        "    __bool__ = lambda s: True\n"
        "def add(a, b):\n    return Yes()\n", CALL, None),
    "int-subclass-equal-to-all": (
        "class I(int):\n    __eq__ = lambda s, o: True\n    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return I(7)\n", CALL, None),
    # Skips every line of `check` but the last (a trace function may move a frame's next line
    # forward); the function is right for the last assert only.
    "settrace-jumps-over-asserts": (
        "import sys, threading\n"
        "def tr(frame, event, arg):\n"
        "    if frame.f_code.co_name == 'check' and event == 'line':\n"
        "        last = max(ln for _, _, ln in frame.f_code.co_lines() if ln)\n"
        "        if frame.f_lineno < last:\n            frame.f_lineno = last\n"
        "    return tr\n"
        "sys.settrace(tr)\nthreading.settrace(tr)\n"
        "def add(a, b):\n    return 0 if a == -1 else a - b\n", CALL, None),
    "setprofile-exits-0-in-check": (
        "import os, sys\n"
        "sys.setprofile(lambda f, e, a: os._exit(0) if f.f_code.co_name == 'check' else None)\n"
        + WRONG_ADD, CALL, None),
    "builtins-patched": (
        "import builtins\n"
        "builtins.AssertionError = type('AssertionError', (Exception,), {})\n"
        "builtins.abs = lambda x: 0\nbuiltins.all = lambda x: True\n"
        "builtins.isinstance = lambda *a: True\n" + WRONG_ADD, CALL, None),
    "os-exit-0-before-tests": ("import os\nos._exit(0)\n" + WRONG_ADD, CALL, None),
    "sys-exit-0-in-call": ("def add(a, b):\n    raise SystemExit(0)\n", CALL, None),
    "os-exit-0-in-call": ("import os\ndef add(a, b):\n    os._exit(0)\n", CALL, None),
    # Digs every 32-character string (the old harness's nonce) out of the frames above it and
    # the heap, prints them as the last lines, writes a pass mark everywhere and exits 0.
    "frames-and-gc-searched-for-a-proof": (
        "import gc, os, sys\n"
        "def add(a, b):\n"
        "    seen = []\n"
        "    f = sys._getframe()\n"
        "    while f:\n        seen += list(f.f_locals.values()) + list(f.f_globals.values())\n"
        "        f = f.f_back\n"
        "    seen += gc.get_objects()\n"
        "    for v in seen:\n"
        "        if isinstance(v, (str, bytes)) and len(v) == 32:\n"
        "            print(v if isinstance(v, str) else v.decode(errors='replace'))\n"
        "    for fd in range(3, 1024):\n"
        "        try:\n            os.write(fd, b'P')\n        except OSError:\n            pass\n"
        "    sys.stdout.flush()\n"
        "    os._exit(0)\n", CALL, None),
    "forged-marks-on-every-fd-at-import": (FORGE_ALL_FDS + WRONG_ADD, CALL, None),
    "forged-marks-from-atexit": (
        "import atexit\natexit.register(lambda: exec(" + repr(FORGE_ALL_FDS) + "))\n" + WRONG_ADD,
        CALL, None),
    "thread-spams-replies-during-checks": (
        "import threading\n"
        "def spam():\n    for _ in range(200):\n        exec(" + repr(FORGE_ALL_FDS) + ")\n"
        "threading.Thread(target=spam, daemon=True).start()\n" + WRONG_ADD, CALL, None),
    "kills-the-checker": (
        "import os\ndef add(a, b):\n    os.kill(os.getppid(), 9)\n    return a + b\n", CALL, None),
    "stops-the-checker": (
        "import os, signal\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGSTOP)\n"
        "    return a + b\n", CALL, None),
    "proc-fds-and-memory-of-the-checker": (
        "import os\n"
        "def add(a, b):\n"
        "    pp = os.getppid()\n"
        "    for fd in range(3, 64):\n"
        "        try:\n"
        "            with open(f'/proc/{pp}/fd/{fd}', 'wb') as f:\n                f.write(b'P')\n"
        "        except OSError:\n            pass\n"
        "    try:\n        open(f'/proc/{pp}/mem', 'rb').read(1)\n    except OSError:\n        pass\n"
        "    return a - b\n", CALL, None),
    "garbage-replies-to-the-checker": (
        "import os\n"
        "for fd in range(3, 64):\n"
        "    try:\n        os.write(fd, b'\"ready\"\\n[\"r\", {\"d\": 5}]\\n{\"t\": 1, \"s\": 2}\\n')\n"
        "    except OSError:\n        pass\n" + WRONG_ADD, CALL, None),
    "json-decoder-bomb": (
        "import os\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        os.write(fd, b'\"ready\"\\n[\"r\", ' + b'[' * 300000 + b']' * 300000 + b']\\n')\n"
        "    except OSError:\n        pass\n" + WRONG_ADD, CALL, None),
    "huge-return-value": ("def add(a, b):\n    return 'x' * (300 << 20)\n", CALL, None),
    "nan-return-value": ("def add(a, b):\n    return float('nan')\n", CALL, None),
    "own-check-defined": (
        "def check(candidate):\n    pass\n" + WRONG_ADD, CALL, None),
    "reply-encoder-patched": (
        "import json\njson.dumps = lambda *a, **k: '[\"r\", 5]'\n" + WRONG_ADD, CALL, None),
    # -- the control channel and other processes
    "pidfd-getfd-of-the-server": (
        LIBC + "for pid in (1, os.getppid()):\n"
        "    pfd = libc.syscall(434, pid, 0)\n"  # pidfd_open
        "    print('pidfd_open', pid, pfd, ctypes.get_errno())\n"
        "    for fd in range(64):\n"
        "        got = libc.syscall(438, pfd, fd, 0)\n"  # pidfd_getfd
        "        if got >= 0:\n"
        "            os.write(got, b'P' * 64)\n"
        "print('wrong')\n", IO, None),
    "ptrace-the-server": (
        LIBC + "for pid in (1, os.getppid()):\n"
        "    print(libc.ptrace(16, pid, 0, 0), ctypes.get_errno())\n"  # PTRACE_ATTACH
        "    print(libc.ptrace(0x4206, pid, 0, 0), ctypes.get_errno())\n"  # PTRACE_SEIZE
        "print('wrong')\n", IO, None),
    "process-vm-writev-into-the-server": (
        LIBC + "buf = ctypes.create_string_buffer(b'P' * 64)\n"
        "class IOV(ctypes.Structure):\n"
        "    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n"
        "local = IOV(ctypes.addressof(buf), 64)\nremote = IOV(0x400000, 64)\n"
        "for pid in (1, os.getppid()):\n"
        "    print(libc.syscall(311, pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0),\n"
        "          libc.syscall(310, pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0))\n"
        "print('wrong')\n", IO, None),
    "proc-fds-of-the-server": (
        "import os\n"
        "for p in ('/proc/1/fd', '/proc/1/mem', '/proc/self/fd'):\n"
        "    try:\n        print(p, os.listdir(p))\n    except OSError as e:\n        print(p, e)\n"
        "for args in (('proc', '/tmp', 'proc'), ('tmpfs', '/tmp', 'tmpfs')):\n"
        "    try:\n        os.makedirs('/tmp/m', exist_ok=True)\n"
        "        import ctypes\n"
        "        print(ctypes.CDLL(None).mount(args[0].encode(), b'/tmp/m', args[2].encode(), 0, None))\n"
        "    except OSError as e:\n        print(e)\n"
        "print('wrong')\n", IO, None),
    "signals-to-every-process": (
        "import os, signal\n"
        "for sig in range(1, 32):\n"
        "    if sig in (signal.SIGKILL, signal.SIGSTOP):\n        continue\n"
        "    for pid in (1, os.getppid(), -1):\n"
        "        try:\n            os.kill(pid, sig)\n        except OSError:\n            pass\n"
        "print('wrong')\n", IO, None),
    "daemon-answers-for-the-next-program": (
        "import os, signal, time\n"
        "if os.fork() == 0:\n"
        "    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):\n"
        "        signal.signal(s, signal.SIG_IGN)\n"
        "    for _ in range(100):\n"
        "        time.sleep(0.05)\n"
        "        for fd in range(64):\n"
        "            try:\n                os.write(fd, b'5\\n')\n            except OSError:\n"
        "                pass\n"
        "    os._exit(0)\n"
        "print('wrong')\n", IO, None),
    "holds-the-slot-with-an-open-stdout": (
        "import os, time\nif os.fork() == 0:\n    os.close(0)\n    time.sleep(600)\nprint('wrong')\n",
        IO, None),
    "new-session-and-user-namespace": (
        LIBC + "print(libc.setsid(), libc.unshare(0x10000000), libc.unshare(0x20000000),\n"
        "      libc.syscall(435, 0, 0), ctypes.get_errno())\n"  # clone3
        "print('wrong')\n", IO, None),
    # -- memory and files outside the address space
    "memfd-and-shm-hoard": (
        "import mmap, os\nheld = []\n"
        "for make in (lambda: os.memfd_create('x'), lambda: os.open('/dev/shm/x', os.O_CREAT | os.O_RDWR)):\n"
        "    try:\n        fd = make()\n        os.ftruncate(fd, 64 << 20)\n"
        "        held.append(mmap.mmap(fd, 64 << 20))\n    except OSError as e:\n        print(e)\n"
        "print('wrong')\n", IO, None),
    "tmp-filled-in-bytes": (
        "n = 0\nwhile True:\n    open(f'/tmp/{n}', 'wb').write(b'x' * (4 << 20))\n    n += 1\n",
        IO, {S.limit_exceeded}),
    "tmp-filled-in-files": (
        "import os\nn = 0\nwhile True:\n    os.mkdir(f'/tmp/{n:08x}' + 'd' * 200)\n    n += 1\n",
        IO, {S.limit_exceeded}),
    "memory-spread-over-processes": (
        "import os, time\n"
        "for _ in range(5):\n"
        "    if os.fork() == 0:\n"
        "        b = bytearray(200 << 20)\n"
        "        for i in range(0, len(b), 4096):\n            b[i] = 1\n"
        "        time.sleep(5)\n        os._exit(0)\n"
        "os.wait()\nprint('wrong')\n", IO, {S.limit_exceeded}),
    "pipe-buffers-hoarded": (
        "import fcntl, os\n"
        "for _ in range(3):\n    os.fork()\n"
        "ends = []\n"
        "try:\n"
        "    while True:\n"
        "        r, w = os.pipe()\n        ends += [r, w]\n"
        "        fcntl.fcntl(w, 1031, 1 << 20)\n"  # F_SETPIPE_SZ
        "        os.set_blocking(w, False)\n"
        "        try:\n            while True:\n                os.write(w, b'x' * 65536)\n"
        "        except BlockingIOError:\n            pass\n"
        "except OSError as e:\n    print(e)\n"
        "print('wrong')\n", IO, None),
    "descriptors-exhausted": (
        "fs = [open('/dev/null') for _ in range(100000)]\nprint('wrong')\n", IO, {S.limit_exceeded}),
    "threads-exhausted": (
        "import threading, time\n"
        "ts = [threading.Thread(target=time.sleep, args=(5,)) for _ in range(100000)]\n"
        "for t in ts:\n    t.start()\nprint('wrong')\n", IO,
        {S.limit_exceeded, S.runtime_error, S.timeout}),
    "stderr-flood": (
        "import sys\nwhile True:\n    sys.stderr.write('e' * 65536)\n", IO, {S.limit_exceeded}),
    # -- timing
    "writes-after-its-verdict": (
        "import os, time\n"
        "if os.fork() == 0:\n    time.sleep(1)\n    os.write(1, b'5\\n')\n    os._exit(0)\n"
        "print('wrong')\n", IO, None),
    "cpu-burn-while-checked": (
        "import threading\n"
        "threading.Thread(target=lambda: [0 for _ in iter(int, 1)], daemon=True).start()\n"
        + WRONG_ADD, CALL, None),
}


@pytest.fixture(scope="module", params=["warm", "bwrap"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    # One slot, so every honest follow-up runs where the attack ran.
    cfg = SandboxConfig(backend=request.param, wall_s=3.0, cpu_s=2, memory_mb=256,
                        run_memory_mb=512)
    sb = Sandbox(cfg, slots=1)
    yield sb
    sb.close()


def _left_in_slot(sb: Sandbox) -> set[int]:
    """Processes in the slot's cgroup other than the warm sandbox itself."""
    return {p for cg in sb.cgroups.values() for p in cg.pids_in()} - sb.resident_pids()


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_fails_and_the_slot_stays_honest(sandbox: Sandbox, name: str) -> None:
    program, ref, statuses = ATTACKS[name]
    if statuses == {S.limit_exceeded} and name == "memory-spread-over-processes" \
            and not sandbox.cgroups:
        statuses = None  # without a cgroup only the per-process limit holds (docs/reward.md)
    verdict = check_program(sandbox, program, ref)
    assert verdict.status is not S.correct, verdict
    if statuses is not None:
        assert verdict.status in statuses, verdict
    assert _left_in_slot(sandbox) == set()
    assert check_program(sandbox, "def add(a, b):\n    return a + b\n", CALL).status is S.correct
    assert check_program(sandbox, WRONG_ADD, CALL).status is not S.correct
    assert check_program(sandbox, "a, b = map(int, input().split())\nprint(a + b)\n",
                         IO).status is S.correct
    assert check_program(sandbox, "print(6)\n", IO).status is S.wrong


@pytest.mark.parametrize("backend", ["warm", "bwrap"])
def test_without_a_cgroup_the_other_bounds_still_hold(backend: str) -> None:
    """Where no cgroup can be made (`cgroup: off` stands in for a container that cannot), memory
    spread over processes is bounded per process only, but no such run scores, and the slot
    stays honest."""
    sb = Sandbox(SandboxConfig(backend=backend, wall_s=3.0, cpu_s=2, memory_mb=256,
                               cgroup="off"), slots=1)
    try:
        assert sb.cgroups == {}
        for name in ("memory-spread-over-processes", "pipe-buffers-hoarded", "tmp-filled-in-files"):
            program, ref, _ = ATTACKS[name]
            assert check_program(sb, program, ref).status is not S.correct, name
            assert check_program(sb, "def add(a, b):\n    return a + b\n", CALL).status is S.correct
    finally:
        sb.close()
