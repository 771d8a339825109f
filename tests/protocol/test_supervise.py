"""Supervised loops: an error restarts the loop; one that keeps failing gives up once, and says so."""

from __future__ import annotations

import threading
import time

from protocol.supervise import Supervisor


def test_a_failing_loop_restarts_and_a_persistent_failure_gives_up() -> None:
    calls, gave_up = [], []
    done = threading.Event()

    def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError(f"boom {len(calls)}")
        done.set()  # third start: runs until told to stop
        sup.stop.wait()

    sup = Supervisor(max_restarts=5, backoff_s=(0.01, 0.05), on_give_up=gave_up.append)
    sup.start("flaky", flaky)
    assert done.wait(5)
    h = sup.health()
    assert h["ok"] and h["loops"]["flaky"]["restarts"] == 2 and "boom 2" in h["loops"]["flaky"]["last_error"]
    assert gave_up == []

    def broken() -> None:
        raise ValueError("always")

    sup.start("broken", broken)
    deadline = time.monotonic() + 5
    while not gave_up and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gave_up == ["broken: ValueError: always"]
    h = sup.health()
    assert not h["ok"] and h["failed"].startswith("broken") and h["loops"]["broken"]["restarts"] == 6
    sup.give_up("again")  # gives up once
    assert gave_up == ["broken: ValueError: always"]
    sup.stop.set()
    sup.join(5)
    assert not any(t.is_alive() for t in sup.threads)
