"""A slot's private /tmp as a host tmpfs bounded in bytes *and* inodes.

bwrap's own `--tmpfs` takes a size but no inode count (bubblewrap 0.8), and a tmpfs without
`nr_inodes` lets a program create files until the kernel's memory for inodes and dentries is
gone (each empty file costs kernel memory, not tmpfs bytes). Where the scoring process may
mount (root on the host), each slot gets its own tmpfs with `size` and `nr_inodes`, owned by the
slot uid, which the sandboxes bind at /tmp; it is replaced by a fresh one (unmount + mount)
whenever the sandbox that used it is gone. Elsewhere `SlotTmp.create` returns None and bwrap's
size-only tmpfs is used.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

_MS_NOSUID, _MS_NODEV = 0x2, 0x4
_MNT_DETACH = 0x2
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(path: str, options: str) -> None:
    if _libc.mount(b"ringrl-tmp", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                   options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {path}: {os.strerror(err)}")


def _umount(path: str) -> None:
    if _libc.umount2(path.encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {path}: {os.strerror(err)}")


class SlotTmp:
    def __init__(self, path: Path, options: str) -> None:
        self.path, self._options = path, options

    @classmethod
    def create(cls, base: Path, uid: int, size_bytes: int, inodes: int) -> SlotTmp | None:
        """A fresh tmpfs at `base/uid`, or None where this process cannot mount one."""
        path = base / str(uid)
        tmp = cls(path, f"size={size_bytes},nr_inodes={inodes},mode=0700,uid={uid},gid={uid}")
        try:
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(base, 0o711)  # the slot uids must reach their own folder, list none
            if os.path.ismount(path):  # left by a scoring process that died
                _umount(str(path))
            _mount(str(path), tmp._options)
        except OSError:
            return None
        return tmp

    def reset(self) -> None:
        """Replace it by an empty one (the old one lives on only in namespaces still using it)."""
        _umount(str(self.path))
        _mount(str(self.path), self._options)

    def remove(self) -> None:
        try:
            _umount(str(self.path))
            self.path.rmdir()
        except OSError:
            pass
