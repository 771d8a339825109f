"""Run untrusted Python programs under a selectable backend: warm (pre-forked bwrap), bwrap, rlimit."""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

from protocol.config.reward import SandboxConfig
from reward_service.sandbox import bwrap, rlimit, syscalls, warm
from reward_service.sandbox.capture import Completed, run_capped
from reward_service.sandbox.cgroup import SlotCgroup
from reward_service.sandbox.harness import header
from reward_service.sandbox.tmpfs import SlotTmp
from reward_service.sandbox.uids import UidLease

_BACKENDS = {"warm": warm, "bwrap": bwrap, "rlimit": rlimit}


class SandboxUnavailable(RuntimeError):
    """The configured backend cannot run on this machine; the message says why."""


class Sandbox:
    """Runs programs, at most `slots` at once, each slot under its own host uid.

    One uid per slot keeps RLIMIT_NPROC (counted per uid) per program, and lets the rlimit
    backend end stray processes by uid without touching another program's. The warm backend
    keeps one sandbox per slot running between programs; call close() to end them (they also
    die with this process).
    """

    def __init__(self, cfg: SandboxConfig, slots: int) -> None:
        why = _BACKENDS[cfg.backend].available()
        if why:
            raise SandboxUnavailable(f"sandbox backend {cfg.backend!r}: {why}")
        self.cfg = cfg
        try:
            self.lease = UidLease(cfg, slots)
        except OSError as exc:
            raise SandboxUnavailable(f"sandbox uids: {exc}") from exc
        self.kills = 0
        self._lock = threading.Lock()
        self._free: queue.Queue[int] = queue.Queue()
        self._warm: dict[int, warm.Slot] = {}
        self.cgroups: dict[int, SlotCgroup] = {}
        self.tmps: dict[int, SlotTmp] = {}
        tmp_base = Path(cfg.uid_lease_dir).parent / "sandbox-tmp"
        for uid in self.lease.uids:
            tmp = None if cfg.backend == "rlimit" else SlotTmp.create(
                tmp_base, uid, cfg.tmpfs_mb << 20, cfg.tmp_inodes)
            if tmp is not None:
                self.tmps[uid] = tmp
            cg = None if cfg.cgroup == "off" else SlotCgroup.create(
                f"ringrl-slot-{uid}", cfg.run_memory_mb << 20)
            if cg is not None:
                self.cgroups[uid] = cg
            elif cfg.cgroup == "require":
                self.close()
                raise SandboxUnavailable("sandbox cgroup: this process cannot create a memory "
                                         "cgroup (cgroup: require)")
            if cfg.backend == "warm":
                try:
                    self._warm[uid] = warm.start(cfg, uid, cg, tmp)
                except (warm.StartError, OSError) as e:
                    self.close()
                    raise SandboxUnavailable(f"sandbox backend 'warm': {e}".strip()) from e
            self._free.put(uid)

    def run(self, program: str, stdin: bytes = b"", test_code: str = "",
            entry_point: str = "") -> Completed:
        """Run `program` with `stdin` (`io` mode), or, if test_code is given, run the tests'
        `check(entry_point)` against it (`call` mode: `checked` says whether it returned)."""
        cfg = self.cfg
        src, test = program.encode(errors="replace"), test_code.encode(errors="replace")
        verdict = os.pipe()
        try:
            head = header("call" if test_code else "io", src, test, entry_point, cfg.cpu_s,
                          cfg.memory_mb << 20, cfg.file_size_mb << 20, cfg.nproc,
                          warm.VERDICT_FD if cfg.backend == "warm" else verdict[1])
            payload = head + src + test + stdin
            uid = self._free.get()
            try:
                # From here the backend owns the write end: it closes it once the run has it.
                cg = self.cgroups.get(uid)
                ooms = cg.oom_kills() if cg else 0
                if cfg.backend == "warm":
                    done, killed = self._run_warm(uid, payload, verdict)
                else:
                    done, killed = self._run_cold(uid, payload, verdict)
                    if cg:
                        cg.kill_all()  # nothing of the run outlives its verdict
                    if uid in self.tmps:
                        self.tmps[uid].reset()
                if cg and cg.oom_kills() > ooms:
                    done.limit, killed = "memory (run_memory_mb)", True
            finally:
                self._free.put(uid)
        finally:
            os.close(verdict[0])
        if killed:
            with self._lock:
                self.kills += 1
        return done

    def _run_cold(self, uid: int, payload: bytes,
                  verdict: tuple[int, int]) -> tuple[Completed, bool]:
        cfg = self.cfg
        if cfg.backend == "bwrap":
            try:
                seccomp_fd = syscalls.bpf_fd()
            except BaseException:
                os.close(verdict[1])
                raise
            try:
                argv, popen = bwrap.command(cfg, uid, seccomp_fd, verdict[1], self.tmps.get(uid))
                cg = self.cgroups.get(uid)
                done = run_capped((cg.launcher() if cg else []) + argv, payload, cfg.wall_s,
                                  cfg.output_bytes, verdict, **popen)
            finally:
                os.close(seccomp_fd)
        else:
            argv, popen, after = rlimit.command(cfg, uid, verdict[1], self.cgroups.get(uid))
            done = run_capped(argv, payload, cfg.wall_s, cfg.output_bytes, verdict,
                              after_exit=after, **popen)
        return done, done.timed_out or done.overflow

    def _run_warm(self, uid: int, payload: bytes,
                  verdict: tuple[int, int]) -> tuple[Completed, bool]:
        slot = self._warm.get(uid)
        if slot is None or slot.proc.poll() is not None:
            try:
                slot = self._restart(uid)
            except BaseException:
                os.close(verdict[1])
                raise
        done, fit, left = warm.run(slot, payload, verdict, self.cfg.wall_s, self.cfg.output_bytes)
        if not fit:
            try:
                self._restart(uid)  # replaced now, so the next program does not wait for it
            except (warm.StartError, OSError):
                pass  # this run's verdict stands; the next run on this slot tries again
        return done, not fit or left > 0

    def _restart(self, uid: int) -> warm.Slot:
        old = self._warm.pop(uid, None)
        if old is not None:
            warm.stop(old)
        cg, tmp = self.cgroups.get(uid), self.tmps.get(uid)
        if cg:
            cg.kill_all()
        if tmp:
            tmp.reset()  # what the dead sandbox left in /tmp goes with the old tmpfs
        slot = warm.start(self.cfg, uid, cg, tmp)
        self._warm[uid] = slot
        return slot

    def resident_pids(self) -> set[int]:
        """Host pids of the warm sandboxes themselves (bwrap and each fork server): the only
        processes of the slot uids that may exist between runs."""
        return {pid for slot in list(self._warm.values()) for pid in slot.pids}

    def close(self) -> None:
        while self._warm:
            _, slot = self._warm.popitem()
            warm.stop(slot)
        while self.cgroups:
            self.cgroups.popitem()[1].remove()
        while self.tmps:
            self.tmps.popitem()[1].remove()
        self.lease.release()
