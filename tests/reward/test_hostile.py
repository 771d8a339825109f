"""Hostile programs: each scores 0, is contained, and the host and the service are unharmed."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest

from protocol.schema import CodeReference, IOTest, MathReference, TaskKind, VerdictStatus
from reward_service.code_verifier import check_program
from reward_service.scorer import Item, Scorer

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


def _processes_of_uids(uids: range) -> list[int]:
    """Live processes left by the sandbox slots. A killed sandbox's namespace is torn down by
    the kernel asynchronously, so allow it a moment (this bounds a wait, not a speed)."""
    deadline = time.monotonic() + 5
    while (found := _live_processes_of_uids(uids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _slot_uids(scorer: Scorer) -> range:
    base = scorer.cfg.sandbox.uid_base + 100
    return range(base, base + scorer.cfg.code_concurrency)


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
    assert _processes_of_uids(_slot_uids(scorer)) == []
    _still_answers(scorer)


def test_huge_output_is_cut_at_the_cap(scorer: Scorer) -> None:
    done, _ = scorer.sandbox.run("import sys\nwhile True:\n    sys.stdout.write('y' * 65536)")
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
        done, _ = scorer.sandbox.run(program)
        verdict = check_program(scorer.sandbox, program, ONLY_OK)
    finally:
        secret_file.unlink()
    assert token.encode() not in done.stdout + done.stderr
    assert b"SECRET" not in done.stdout
    assert verdict.status is S.wrong


def test_killing_the_parent_does_not_hurt_the_service(scorer: Scorer) -> None:
    program = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(-1, signal.SIGKILL)\n"
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
    assert _processes_of_uids(_slot_uids(scorer)) == []
