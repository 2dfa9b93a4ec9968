"""The usage log: one JSON line per request appended to USAGE_LOG, whole, from any number of threads."""

import errno
import json
import logging
import os
import stat
import threading
from typing import Any, Mapping, Optional

from .errors import ConfigError

logger = logging.getLogger(__name__)

# Not blocking: a FIFO without a reader fails at start instead of hanging there, and a full pipe
# costs a line, never a request thread.
OPEN_FLAGS = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NONBLOCK", 0)
              | getattr(os, "O_CLOEXEC", 0))
# A new log is the user's alone: its lines say when they worked and with which models.
MODE = 0o600


def usage_line(record: Mapping[str, Any]) -> bytes:
    """One record as one line of compact JSON (ASCII: a line is whole or not there)."""
    return (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")


class UsageLog:
    """An open usage log. Each line is one ``os.write`` on an ``O_APPEND`` descriptor under a lock:
    lines of this process never interleave, and another process appending to the same file never
    overwrites them. A write that fails logs one warning, and the request goes on."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._lost = 0  # lines not written since the last one that was
        self._torn = False  # the last write stopped mid-line: the next line starts on a new one
        try:
            self._fd: Optional[int] = os.open(path, OPEN_FLAGS, MODE)
        except OSError as exc:
            raise ConfigError("cannot open the usage log USAGE_LOG=%s: %s; set USAGE_LOG to a file you can write, "
                              "in a folder that exists, or leave it empty"
                              % (path, exc.strerror or exc)) from None
        self._torn = self._ends_mid_line()

    def _ends_mid_line(self) -> bool:
        """Whether the file's last line was cut short (a crash, a full disk): ours must not be glued to it."""
        try:
            if not stat.S_ISREG(os.fstat(self._fd).st_mode):
                return False
            with open(self.path, "rb") as existing:
                existing.seek(0, os.SEEK_END)
                if not existing.tell():
                    return False
                existing.seek(-1, os.SEEK_END)
                return existing.read(1) != b"\n"
        except OSError:
            return False

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line; a failure is logged once until a line can be written again."""
        line = usage_line(record)
        with self._lock:
            if self._fd is None:  # closed: the proxy has stopped
                return
            data = b"\n" + line if self._torn else line
            try:
                written = os.write(self._fd, data)
            except OSError as exc:
                self._failed(exc.strerror or str(exc))
                return
            if written < len(data):
                self._torn = True
                self._failed(os.strerror(errno.ENOSPC) + " (a line written in part)")
                return
            self._torn = False
            if self._lost:
                logger.info("the usage log %s is written again; %d usage line%s could not be written",
                            self.path, self._lost, "" if self._lost == 1 else "s")
                self._lost = 0

    def _failed(self, reason: str) -> None:
        if not self._lost:
            logger.warning("cannot write the usage log %s: %s; requests go on, without their usage lines until "
                           "it can be written again", self.path, reason)
        self._lost += 1

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
