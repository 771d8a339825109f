"""One memory cgroup per sandbox slot: the memory bound of a run as a whole.

RLIMIT_AS bounds one process's address space, not what a run holds through file descriptors or
the kernel: anonymous files, tmpfs pages and inodes, pipe buffers. A memory cgroup charges all
of it (cgroup v1 counts kernel memory in `memory.limit_in_bytes` too) to the slot; when the
slot passes its limit the kernel's OOM killer ends a process in it, and the host sees that in
the slot's `oom_kill` counter and scores the run `limit_exceeded`. The cgroup also lists every
process of the slot, whatever its namespaces, so the host can kill all of a run's processes and
wait until none is left.

(No pids cgroup: RLIMIT_NPROC per slot uid already bounds processes, and on this kernel a
finished bwrap sandbox stays charged in `pids.current` for 1-2 s after its last process is
gone, so a tight `pids.max` refused the next run's fork.)

Used where the scoring process may create cgroups: root with the cgroup v1 `memory` hierarchy
mounted, or cgroup v2 with the memory controller delegated to the scoring process's own cgroup.
Elsewhere (an unprivileged container) `SlotCgroup.create` returns None and the sandbox falls
back to the per-process limits (docs/reward.md says what that does not bound).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
EMPTY_WAIT_S = 10.0
"""How long kill_all waits for the kernel to finish killing a slot's processes."""


def _own_memory() -> tuple[Path, bool] | None:
    """This process's memory cgroup directory, if writable, and whether it is cgroup v2."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if names == "":  # v2: usable only if the controller is delegated to our cgroup
            d = ROOT / path.lstrip("/")
            try:
                if "memory" in (d / "cgroup.subtree_control").read_text().split():
                    return d, True
            except OSError:
                pass
        elif "memory" in names.split(","):
            d = ROOT / "memory" / path.lstrip("/")
            if os.access(d, os.W_OK):
                return d, False
    return None


class SlotCgroup:
    """A slot's memory cgroup."""

    def __init__(self, memory: Path, v2: bool) -> None:
        self.memory, self.v2 = memory, v2
        self.procs = str(memory / "cgroup.procs")

    @classmethod
    def create(cls, name: str, memory_bytes: int) -> SlotCgroup | None:
        """The slot's cgroup with this limit (a stale one of the same name is emptied and
        reused), or None where this process cannot make it."""
        own = _own_memory()
        if own is None:
            return None
        cg = cls(own[0] / name, own[1])
        try:
            cg.memory.mkdir(exist_ok=True)
            cg.kill_all()
            if cg.v2:
                (cg.memory / "memory.max").write_text(str(memory_bytes))
                (cg.memory / "memory.swap.max").write_text("0")
            else:
                (cg.memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
                memsw = cg.memory / "memory.memsw.limit_in_bytes"
                if memsw.exists():  # with swap, the limit must hold memory+swap as well
                    memsw.write_text(str(memory_bytes))
        except OSError:
            cg.remove()
            return None
        return cg

    def launcher(self) -> list[str]:
        """An argv prefix that moves itself into this cgroup, then execs the rest: the only
        way to start a process inside it without a full fork of the (large) scoring process."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', self.procs]

    def join(self) -> None:
        """Move the calling process here (for a preexec_fn, before it drops root)."""
        with open(self.procs, "w") as f:
            f.write(str(os.getpid()))

    def oom_kills(self) -> int:
        name = "memory.events" if self.v2 else "memory.oom_control"
        for line in (self.memory / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def pids_in(self) -> list[int]:
        with open(self.procs) as f:
            return [int(p) for p in f.read().split()]

    def kill_all(self) -> int:
        """SIGKILL every process in the slot and wait until the kernel has removed them all.
        Returns how many there were."""
        killed: set[int] = set()
        deadline = time.monotonic() + EMPTY_WAIT_S
        while pids := self.pids_in():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed.update(pids)
            if time.monotonic() > deadline:
                raise OSError(f"processes {pids} in {self.memory} did not die")
            time.sleep(0.001)
        return len(killed)

    def remove(self) -> None:
        try:
            self.kill_all()
        except OSError:
            pass
        try:
            self.memory.rmdir()
        except OSError:
            pass
