"""A pool of Math-Verify processes with a hard per-item deadline enforced from outside."""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from protocol.schema import Verdict, VerdictStatus
from reward_service import math_worker

_CTX = mp.get_context("forkserver")
# The fork server imports Math-Verify (and sympy) once, so a replacement worker starts in
# milliseconds instead of re-importing for a second or more.
_CTX.set_forkserver_preload(["reward_service.math_worker"])


@dataclass
class _Slot:
    proc: BaseProcess
    conn: Connection


def _start() -> _Slot:
    parent, child = _CTX.Pipe()
    proc = _CTX.Process(target=math_worker.serve, args=(child,), daemon=True)
    proc.start()
    child.close()
    return _Slot(proc, parent)


class MathPool:
    """`check` is thread-safe; up to `workers` items are verified at once."""

    def __init__(self, workers: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.kills = 0
        self._free: queue.Queue[_Slot] = queue.Queue()
        self._slots = [_start() for _ in range(workers)]
        for slot in self._slots:
            self._free.put(slot)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="math")
        self._lock = threading.Lock()
        self._closed = False

    def check(self, prediction: str, gold: str) -> Verdict:
        slot = self._free.get()
        try:
            slot.conn.send((prediction, gold))
            if slot.conn.poll(self.timeout_s):
                status, detail = slot.conn.recv()
                return Verdict(status=VerdictStatus(status), detail=detail)
            slot = self._replace(slot)
            return Verdict(status=VerdictStatus.timeout,
                           detail=f"verification exceeded {self.timeout_s:g}s")
        except (EOFError, OSError):
            slot = self._replace(slot)
            return Verdict(status=VerdictStatus.wrong, detail="verifier process died")
        finally:
            self._free.put(slot)

    def check_many(self, pairs: Sequence[tuple[str, str]]) -> list[Verdict]:
        return list(self._executor.map(lambda p: self.check(*p), pairs))

    def _replace(self, slot: _Slot) -> _Slot:
        slot.proc.kill()
        slot.proc.join()
        slot.conn.close()
        fresh = _start()
        with self._lock:
            self.kills += 1
            self._slots[self._slots.index(slot)] = fresh
        return fresh

    def alive(self) -> int:
        return sum(s.proc.is_alive() for s in self._slots)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        for slot in self._slots:
            slot.conn.close()
            slot.proc.kill()
            slot.proc.join()
