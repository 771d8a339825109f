"""Host uids for sandbox slots, leased so that no two sandboxes on one kernel share one.

RLIMIT_NPROC is counted per uid across the whole kernel, and the rlimit backend ends stray
processes by uid: two scoring processes (two reward replicas on one host, `ringrl eval` beside a
training run, the tests) that ran programs under the same uid would limit and kill each other's
programs. Each uid has a lock file in `uid_lease_dir`; a process holds an exclusive flock on the
files of the uids it uses for as long as it lives (the kernel drops the lock when it dies, even by
SIGKILL). Containers on one host share the directory through a volume (docs/deploy.md).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from protocol.config.reward import SandboxConfig

SEARCH = 4096
"""uids tried above uid_base before giving up."""
COOLDOWN_S = 5.0
"""A uid released this recently is passed over: the processes of a sandbox just torn down may
still count against its RLIMIT_NPROC for a moment."""


class UidLease:
    def __init__(self, cfg: SandboxConfig, count: int) -> None:
        self.uids: list[int] = []
        self._fds: list[int] = []
        d = Path(cfg.uid_lease_dir)
        d.mkdir(parents=True, exist_ok=True)
        for uid in range(cfg.uid_base, cfg.uid_base + SEARCH):
            if len(self.uids) == count:
                break
            fd = os.open(d / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            st = os.fstat(fd)
            if st.st_size and time.time() - st.st_mtime < COOLDOWN_S:
                os.close(fd)  # released a moment ago
                continue
            if not st.st_size:
                os.write(fd, b"x")  # marks the file used: a new file's mtime says nothing
            self.uids.append(uid)
            self._fds.append(fd)
        if len(self.uids) < count:
            self.release()
            raise OSError(f"no {count} free sandbox uids in [{cfg.uid_base}, {cfg.uid_base + SEARCH}) "
                          f"(leases in {d})")

    def release(self) -> None:
        for fd in self._fds:
            os.utime(fd)  # starts the cooldown
            os.close(fd)
        self._fds, self.uids = [], []
