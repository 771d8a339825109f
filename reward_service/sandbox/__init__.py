"""Run untrusted Python programs under a selectable backend (bwrap or rlimit fallback)."""

from __future__ import annotations

import queue
import secrets
import threading

from protocol.config.reward import SandboxConfig
from reward_service.sandbox import bwrap, rlimit
from reward_service.sandbox.capture import Completed, run_capped
from reward_service.sandbox.harness import header


class SandboxUnavailable(RuntimeError):
    """The configured backend cannot run on this machine; the message says why."""


class Sandbox:
    """Runs programs, at most `slots` at once, each slot under its own host uid.

    One uid per slot keeps RLIMIT_NPROC (counted per uid) per program, and lets the rlimit
    backend end stray processes by uid without touching another program's.
    """

    def __init__(self, cfg: SandboxConfig, slots: int, uid_offset: int = 0) -> None:
        backend = bwrap if cfg.backend == "bwrap" else rlimit
        why = backend.available()
        if why:
            raise SandboxUnavailable(f"sandbox backend {cfg.backend!r}: {why}")
        self.cfg = cfg
        self.kills = 0
        self._lock = threading.Lock()
        self._uids: queue.Queue[int] = queue.Queue()
        for i in range(slots):
            self._uids.put(cfg.uid_base + uid_offset + i)

    def run(self, program: str, stdin: bytes = b"", test_code: str = "",
            entry_point: str = "") -> tuple[Completed, str]:
        """Run `program` (then `check(entry_point)` if test_code is given); returns the
        completed run and the nonce a `call`-mode run prints when its check passed."""
        cfg = self.cfg
        nonce = secrets.token_hex(16)
        src, test = program.encode(errors="replace"), test_code.encode(errors="replace")
        head = header("call" if test_code else "io", nonce, src, test, entry_point, cfg.cpu_s,
                      cfg.memory_mb << 20, cfg.file_size_mb << 20, cfg.nproc)
        uid = self._uids.get()
        try:
            if cfg.backend == "bwrap":
                argv, popen = bwrap.command(cfg, uid)
                after = None
            else:
                argv, popen, after = rlimit.command(cfg, uid)
            done = run_capped(argv, head + src + test + stdin, cfg.wall_s, cfg.output_bytes,
                              after_exit=after, **popen)
        finally:
            self._uids.put(uid)
        if done.timed_out or done.overflow:
            with self._lock:
                self.kills += 1
        return done, nonce
