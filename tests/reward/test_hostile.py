"""Hostile programs: each scores 0, is contained, and the host and the service are unharmed."""

from __future__ import annotations

import ctypes
import os
import secrets
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from protocol.config.reward import SandboxConfig
from protocol.schema import (
    CodeReference,
    IOTest,
    MathReference,
    TaskKind,
    VerdictStatus,
)
from reward_service.code_verifier import check_program
from reward_service.sandbox import Sandbox
from reward_service.sandbox.server import REPLY_FORMAT
from reward_service.scorer import Item, Scorer
from tests.reward.conftest import BACKENDS

S = VerdictStatus
ONLY_OK = CodeReference(io_tests=[IOTest(stdin="", stdout="ok")])
NEVER = CodeReference(io_tests=[IOTest(stdin="", stdout="this output is never produced")])


def _processes_matching(marker: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def _live_pids() -> set[int]:
    """Processes that exist and are not zombies."""
    found = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if ") Z" not in (d / "stat").read_text():
                    found.add(int(d.name))
            except OSError:
                pass
    return found


def _live_processes_of_uids(uids: range) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                status = dict(li.split(":", 1) for li in (d / "status").read_text().splitlines())
            except (OSError, ValueError):
                continue
            if int(status["Uid"].split()[0]) in uids and not status["State"].strip().startswith("Z"):
                found.append(int(d.name))
    return found


def _left_behind(scorer: Scorer) -> list[int]:
    """Live processes of the sandbox slot uids other than the warm sandboxes themselves (bwrap
    and the fork server). A killed sandbox's namespace is torn down by the kernel
    asynchronously, so allow it a moment (this bounds a wait, not a speed)."""
    base = scorer.cfg.sandbox.uid_base + 100 + 10 * BACKENDS.index(scorer.cfg.sandbox.backend)
    uids = range(base, base + scorer.cfg.code_concurrency)
    deadline = time.monotonic() + 5
    while True:
        found = sorted(set(_live_processes_of_uids(uids)) - scorer.sandbox.resident_pids())
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _still_answers(scorer: Scorer) -> None:
    got = scorer.score([Item(TaskKind.code, "```python\nprint('ok')\n```", ONLY_OK),
                        Item(TaskKind.math, "\\boxed{2}", MathReference(answer="2"))])
    assert [v.status for v in got] == [S.correct, S.correct]


@pytest.mark.parametrize("program, statuses", [
    ("while True:\n    pass\nprint('ok')", {S.timeout}),
    ("import time\ntime.sleep(100)\nprint('ok')", {S.timeout}),
    ("x = bytearray(16 << 30)\nprint('ok')", {S.limit_exceeded}),
    ("while True:\n    print('x' * 10000)", {S.limit_exceeded}),
    ("import os\nwhile True:\n    os.fork()", {S.limit_exceeded, S.timeout, S.runtime_error}),
], ids=["infinite-loop", "sleep-past-deadline", "memory-bomb", "huge-output", "fork-bomb"])
def test_resource_attacks_are_cut(scorer: Scorer, program: str, statuses: set[S]) -> None:
    verdict = check_program(scorer.sandbox, program, ONLY_OK)
    assert verdict.status in statuses, verdict
    assert _left_behind(scorer) == []
    _still_answers(scorer)


def test_huge_output_is_cut_at_the_cap(scorer: Scorer) -> None:
    done = scorer.sandbox.run("import sys\nwhile True:\n    sys.stdout.write('y' * 65536)")
    assert done.overflow and len(done.stdout) == scorer.cfg.sandbox.output_bytes


def test_no_network_to_the_host(scorer: Scorer) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        try:
            accepted.append(listener.accept())
        except OSError:
            pass
    t = threading.Thread(target=accept)
    t.start()
    program = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('ok')"
    verdict = check_program(scorer.sandbox, program, ONLY_OK)
    t.join()
    listener.close()
    assert verdict.status is S.runtime_error, verdict
    assert accepted == []


def test_cannot_write_outside_into_root_owned_dirs(scorer: Scorer, tmp_path: Path) -> None:
    target = Path("/root") / f"ringrl-escape-{secrets.token_hex(4)}"
    program = f"open({str(target)!r}, 'w').write('pwned')\nprint('ok')"
    verdict = check_program(scorer.sandbox, program, ONLY_OK)
    assert verdict.status is S.runtime_error, verdict
    assert not target.exists()


def test_cannot_write_into_world_writable_tmp(scorer: Scorer) -> None:
    if scorer.cfg.sandbox.backend == "rlimit":
        pytest.skip("rlimit backend has no filesystem isolation: /tmp is writable (docs/reward.md)")
    target = Path("/tmp") / f"ringrl-escape-{secrets.token_hex(4)}"
    program = f"open({str(target)!r}, 'w').write('pwned')\nprint('ok')"
    verdict = check_program(scorer.sandbox, program, ONLY_OK)
    assert not target.exists()
    assert verdict.status is S.correct  # wrote its own private /tmp, which then vanished


def test_host_secrets_do_not_leak(scorer: Scorer, monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_hex(16)
    secret_file = Path("/root") / f"ringrl-secret-{token[:8]}"
    secret_file.write_text(token)
    secret_file.chmod(0o600)
    monkeypatch.setenv("SECRET", token)
    program = (
        "import os, glob\n"
        f"for p in [{str(secret_file)!r}, '/etc/shadow', '/proc/1/environ', '/proc/self/environ']"
        " + glob.glob('/proc/*/environ'):\n"
        "    try:\n        print(open(p, 'rb').read())\n    except OSError as e:\n        print(p, e)\n"
        "print(os.environ)\n")
    try:
        done = scorer.sandbox.run(program)
        verdict = check_program(scorer.sandbox, program, ONLY_OK)
    finally:
        secret_file.unlink()
    assert token.encode() not in done.stdout + done.stderr
    assert b"SECRET" not in done.stdout
    assert verdict.status is S.wrong


def test_killing_the_parent_does_not_hurt_the_service(scorer: Scorer) -> None:
    # pid 1 is the warm backend's fork server (or bwrap's init, or the host's init for rlimit).
    program = ("import os, signal\n"
               "for sig in (signal.SIGSTOP, signal.SIGINT, signal.SIGTERM, signal.SIGKILL):\n"
               "    for pid in (1, os.getppid()):\n"
               "        try:\n            os.kill(pid, sig)\n        except OSError:\n            pass\n"
               "os.kill(-1, signal.SIGKILL)\n")
    verdict = check_program(scorer.sandbox, program, NEVER)
    assert verdict.status is not S.correct
    _still_answers(scorer)


def test_background_process_does_not_outlive_the_run(scorer: Scorer) -> None:
    marker = f"ringrl-bg-{secrets.token_hex(6)}"
    program = (
        "import os\n"
        "if os.fork() == 0:\n"
        "    try:\n        os.setsid()\n    except OSError:\n        pass\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/usr/bin/python3', ['python3', '-c', 'import time; time.sleep(60)', {marker!r}])\n"
        "    os._exit(0)\n"
        "print('started')\n")
    verdict = check_program(scorer.sandbox, program, NEVER)
    assert verdict.status is S.wrong
    assert _processes_matching(marker) == []
    assert _left_behind(scorer) == []


def test_files_do_not_carry_over_to_the_next_program(scorer: Scorer) -> None:
    """Each run starts with an empty, full-size /tmp, even after one that filled it and locked
    a directory tree (the warm backend reuses one tmpfs; it must be emptied in between)."""
    if scorer.cfg.sandbox.backend == "rlimit":
        pytest.skip("rlimit backend has no filesystem isolation: /tmp is shared (docs/reward.md)")
    fill = ("import os\n"
            "os.makedirs('/tmp/a/b/c')\n"
            "for i in range(2):\n"
            "    open(f'/tmp/a/b/c/big{i}', 'wb').write(b'x' * (7 << 20))\n"
            "os.symlink('/usr', '/tmp/link')\n"
            "os.chmod('/tmp/a/b', 0)\nos.chmod('/tmp/a', 0)\nos.chmod('/tmp', 0o500)\n"
            "print(sorted(os.listdir('/tmp')))\n")
    for _ in range(scorer.cfg.code_concurrency + 1):  # at least twice through some slot
        done = scorer.sandbox.run(fill)
        assert done.returncode == 0, done.stderr
        assert done.stdout == b"['a', 'link']\n"
    assert os.path.isdir("/usr/bin")


def test_interpreter_changes_do_not_carry_over(scorer: Scorer) -> None:
    """A program that rewires builtins and modules affects only itself."""
    hostile = ("import builtins, math, sys\n"
               "builtins.print = lambda *a, **k: None\nbuiltins.len = lambda x: 42\n"
               "math.pi = 3\nsys.modules['json'] = None\nsys.path.insert(0, '/tmp')\n")
    if scorer.cfg.sandbox.backend != "rlimit":  # rlimit's /tmp is the host's (docs/reward.md)
        hostile += "open('/tmp/math.py', 'w').write('pi = 3')\n"
    probe = "import json, math, sys\nprint(len([1]), math.pi, '/tmp' in sys.path)"
    for _ in range(scorer.cfg.code_concurrency + 1):
        scorer.sandbox.run(hostile)
        done = scorer.sandbox.run(probe)
        assert done.stdout == f"1 {__import__('math').pi} False\n".encode(), done.stderr


def test_ipc_objects_cannot_carry_state(scorer: Scorer) -> None:
    """SysV shared memory would outlive the program in a shared IPC namespace: it is denied."""
    program = ("import ctypes\n"
               "libc = ctypes.CDLL(None, use_errno=True)\n"
               "print(libc.shmget(0x5eed, 4096, 0o1000 | 0o600), ctypes.get_errno())\n")
    done = scorer.sandbox.run(program)
    assert done.stdout == b"-1 1\n", done.stderr  # EPERM from seccomp


def test_program_cannot_answer_for_the_sandbox(scorer: Scorer) -> None:
    """Writing a forged 'exit 0' reply to every fd it could have inherited does not make a
    failing program pass, and the next program is scored normally."""
    program = ("import os, struct\n"
               "for fd in range(3, 1024):\n"
               "    try:\n        os.write(fd, struct.pack('!iii', 0, 0, 1) * 4)\n"
               "    except OSError:\n        pass\n"
               "raise SystemExit(1)\n")
    verdict = check_program(scorer.sandbox, program, ONLY_OK)
    assert verdict.status is S.runtime_error, verdict
    _still_answers(scorer)


def test_warm_sandbox_is_rebuilt_after_a_kill(scorer: Scorer) -> None:
    """A timed-out program gets its whole sandbox SIGKILLed from outside; the slot gets a new
    one and its old processes are gone."""
    if scorer.cfg.sandbox.backend != "warm":
        pytest.skip("only the warm backend keeps a sandbox between programs")
    before = scorer.sandbox.resident_pids()
    # Sleeping, not spinning: a busy loop may hit RLIMIT_CPU inside the sandbox first (on an idle
    # machine it does), which ends the program without the outside kill this test is about.
    verdicts = scorer.score([Item(TaskKind.code, "```python\nimport time\ntime.sleep(600)\n```", ONLY_OK)
                             for _ in range(scorer.cfg.code_concurrency)])
    assert {v.status for v in verdicts} == {S.timeout}
    after = scorer.sandbox.resident_pids()
    assert before.isdisjoint(after) and len(after) == len(before)
    assert [p for p in before if p in _live_pids()] == []
    _still_answers(scorer)


def test_a_reply_not_bound_to_the_run_rebuilds_the_slot() -> None:
    """A reply on the control channel that does not carry the run's nonce — what a program that
    reached the channel could forge — is refused: the run fails and the slot gets a new sandbox.
    The forger here is the test itself (root takes the fork server's end of the socket, which
    seccomp and non-dumpability deny to programs)."""
    sb = Sandbox(SandboxConfig(backend="warm", wall_s=3.0, cpu_s=2), slots=1)
    try:
        (slot,) = sb._warm.values()
        server = slot.pids[1]
        socks = [int(fd.name) for fd in Path(f"/proc/{server}/fd").iterdir()
                 if os.readlink(fd).startswith("socket:")]
        assert len(socks) == 1
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(server)
        stolen = libc.syscall(438, pidfd, socks[0], 0)  # pidfd_getfd
        os.close(pidfd)
        assert stolen >= 0, ctypes.get_errno()
        os.write(stolen, struct.pack(REPLY_FORMAT, bytes(16), 0, 0, 1))  # a forged "exit 0"
        os.close(stolen)
        before = sb.resident_pids()
        verdict = check_program(sb, "print('ok')", ONLY_OK)
        assert verdict.status is not S.correct, verdict
        assert sb.resident_pids().isdisjoint(before)
        assert check_program(sb, "print('ok')", ONLY_OK).status is S.correct
    finally:
        sb.close()
