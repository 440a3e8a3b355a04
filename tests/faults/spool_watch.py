"""How many episodes an actor durably put into its spool, counted by the kernel: inotify reports every
``*.episode`` rename into the directory (`Spool.put`'s last step), so the count is exact even for a process
SIGKILLed right after a write, and independent of anything the process printed."""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from pathlib import Path

from fleet.spool import SUFFIX

_IN_MOVED_TO = 0x00000080
_IN_Q_OVERFLOW = 0x00004000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name, len bytes)


class SpoolWatch:
    """Counts ``*.episode`` files renamed into a spool directory (Spool.put's last step) via inotify."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(self.fd, str(self.dir).encode(), _IN_MOVED_TO) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"inotify_add_watch {self.dir} failed")
        self.written = 0

    def count(self) -> int:
        """Episodes spooled since the watch began (drains the kernel's event queue)."""
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return self.written
            pos = 0
            while pos < len(buf):
                _, mask, _, length = _EVENT.unpack_from(buf, pos)
                name = buf[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
                pos += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:  # events were dropped: the count would be a guess
                    raise RuntimeError(f"inotify queue overflow on {self.dir}: spool writes not counted")
                if mask & _IN_MOVED_TO and name.endswith(SUFFIX.encode()):
                    self.written += 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
