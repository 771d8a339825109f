"""Supervised background loops: an unexpected error is logged with its cause and the loop restarts;
a loop that keeps failing makes its process report not-ready and exit non-zero.

A service's threads (rollout admission and writer, weight follower, reward stream workers, the
learner's step loop) each run under one `Supervisor`. A loop body runs until it returns (it saw the
stop event) or raises. A raise is logged with its traceback and the body starts again after a
capped backoff; more than `max_restarts` raises within `window_s` means restarting does not help,
so the supervisor gives up: it marks itself failed (readiness and liveness both say so) and calls
`on_give_up`, which in a server asks the process to shut down so the orchestrator restarts it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ringrl.supervise")


@dataclass
class LoopState:
    """What /healthz reports of one loop."""
    name: str
    restarts: int = 0
    running: bool = False
    last_error: str = ""
    recent: deque[float] = field(default_factory=deque)


class Supervisor:
    def __init__(self, stop: threading.Event | None = None, max_restarts: int = 5, window_s: float = 60.0,
                 backoff_s: tuple[float, float] = (0.2, 5.0),
                 on_give_up: Callable[[str], None] | None = None) -> None:
        self.stop = stop or threading.Event()
        self.max_restarts, self.window_s, self.backoff_s = max_restarts, window_s, backoff_s
        self.on_give_up = on_give_up
        self.loops: dict[str, LoopState] = {}
        self.threads: list[threading.Thread] = []
        self.failed: str | None = None  # why it gave up
        self._lock = threading.Lock()

    def start(self, name: str, body: Callable[[], Any]) -> threading.Thread:
        """Run `body` on a daemon thread under supervision until `stop` is set."""
        state = self.loops[name] = LoopState(name)
        thread = threading.Thread(target=self._run, args=(state, body), daemon=True, name=name)
        self.threads.append(thread)
        thread.start()
        return thread

    def _run(self, state: LoopState, body: Callable[[], Any]) -> None:
        delay = self.backoff_s[0]
        while not self.stop.is_set():
            state.running = True
            try:
                body()
                return  # a body returns only when it was told to stop
            except BaseException as exc:
                state.running = False
                state.restarts += 1
                state.last_error = f"{type(exc).__name__}: {exc}"
                now = time.monotonic()
                state.recent.append(now)
                while state.recent and now - state.recent[0] > self.window_s:
                    state.recent.popleft()
                if len(state.recent) > self.max_restarts:
                    log.critical("%s: failed %d times in %.0fs, giving up: %s", state.name,
                                 len(state.recent), self.window_s, state.last_error, exc_info=exc)
                    self.give_up(f"{state.name}: {state.last_error}")
                    return
                log.error("%s: %s; restarting in %.1fs", state.name, state.last_error, delay, exc_info=exc)
                self.stop.wait(delay)
                delay = min(delay * 2, self.backoff_s[1])
            finally:
                state.running = False

    def give_up(self, reason: str) -> None:
        """Mark the process failed (also for a part that is not a loop, e.g. a dead engine)."""
        with self._lock:
            if self.failed is not None:
                return
            self.failed = reason
        if self.on_give_up is not None:
            self.on_give_up(reason)

    def health(self) -> dict[str, Any]:
        loops = {s.name: {"running": s.running, "restarts": s.restarts,
                          **({"last_error": s.last_error} if s.last_error else {})}
                 for s in self.loops.values()}
        return {"ok": self.failed is None, "loops": loops, **({"failed": self.failed} if self.failed else {})}

    def join(self, timeout: float | None = None) -> None:
        end = None if timeout is None else time.monotonic() + timeout
        for t in self.threads:
            t.join(None if end is None else max(0.0, end - time.monotonic()))
