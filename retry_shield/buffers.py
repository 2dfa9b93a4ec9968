"""Answer memory: the pool of reused buffers, the Loan that owns one, and glibc's mmap threshold."""

import sys
import threading
import time
from typing import List, Optional, Tuple, Union

try:
    import ctypes
except ImportError:  # pragma: no cover - a Python built without it keeps the C library's own policy
    ctypes = None

# Upstream bodies are read this much at a time, straight into a reused buffer.
READ_CHUNK = 256 * 1024
# Buffers kept for reuse once an answer is delivered: at most this many, this many bytes in
# all, each for this many seconds unused.
POOLED_BUFFERS = 64
POOLED_BYTES = 32 * 1024 * 1024
POOLED_SECONDS = 30.0

Bytes = Union[bytes, bytearray, memoryview]


class BufferPool:
    """Large buffers kept for the next answers: a reused buffer's memory is already
    mapped, so filling it costs a copy, not a page fault per 4 KB (on this kind of
    machine, faults cost more than the copy). Unused buffers go after a while."""

    def __init__(self, count: int = POOLED_BUFFERS, total: int = POOLED_BYTES,
                 seconds: float = POOLED_SECONDS) -> None:
        self.count = count
        self.total = total
        self.seconds = seconds
        self._free: List[Tuple[float, bytearray]] = []
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, biggest: bool = False) -> bytearray:
        """A buffer of at least READ_CHUNK bytes with stale contents: the biggest kept, or the smallest."""
        with self._lock:
            if self._free:
                pick = max if biggest else min
                index = pick(range(len(self._free)), key=lambda i: len(self._free[i][1]))
                _, buf = self._free.pop(index)
                self._bytes -= len(buf)
                return buf
        return bytearray(READ_CHUNK)

    def give(self, buf: bytearray, now: Optional[float] = None) -> None:
        with self._lock:
            if len(self._free) < self.count and self._bytes + len(buf) <= self.total:
                self._free.append((time.monotonic() if now is None else now, buf))
                self._bytes += len(buf)

    def trim(self, now: Optional[float] = None) -> None:
        """Let go of the buffers unused for ``seconds``."""
        cutoff = (time.monotonic() if now is None else now) - self.seconds
        with self._lock:
            old = [buf for given, buf in self._free if given < cutoff]
            if old:
                self._free = [(given, buf) for given, buf in self._free if given >= cutoff]
                self._bytes -= sum(len(buf) for buf in old)

    @property
    def pooled_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def lend(self, biggest: bool = False) -> "Loan":
        return Loan(self, biggest)


class Loan:
    """One buffer borrowed from a BufferPool, or a private one without a pool.

    It is the only code that knows the rules: writes overwrite a reused buffer's stale
    tail or grow it, and when a view of it is still alive elsewhere (so it cannot
    grow) they move to a fresh copy; views are lent out tracked; ``close`` (or the
    end of a ``with`` block) releases every view and gives the buffer back, once.
    """

    def __init__(self, pool: Optional[BufferPool] = None, biggest: bool = False,
                 buffer: Optional[bytearray] = None) -> None:
        if buffer is None:
            buffer = pool.take(biggest) if pool is not None else bytearray()
        self.buffer = buffer
        self._pool = pool
        self._views: List[memoryview] = []

    @classmethod
    def of(cls, buffer: Union[None, bytearray, "Loan"]) -> "Loan":
        """``buffer`` itself if it is a Loan, else a private Loan over it (or over a new buffer)."""
        return buffer if isinstance(buffer, Loan) else cls(buffer=buffer)

    def put(self, at: int, data: Bytes, start: int, stop: int) -> int:
        """Write ``data[start:stop]`` at ``at``; return where it ends."""
        end = at + stop - start
        try:
            self.buffer[at:end] = data[start:stop]
        except BufferError:
            self.buffer = self.buffer[:at] + data[start:stop]
        return end

    def view(self, end: int) -> memoryview:
        """The first ``end`` bytes, without a copy; released when the loan closes."""
        view = memoryview(self.buffer)[:end]
        self._views.append(view)
        return view

    def close(self) -> None:
        for view in self._views:
            view.release()
        self._views = []
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.give(self.buffer)

    def __enter__(self) -> "Loan":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def keep_big_buffers_in_mmap() -> None:
    """Ask glibc to keep every large allocation in its own mapping, once and for all.

    Otherwise glibc raises its mmap threshold after the first big answer is freed, and
    the next big buffer grows on the heap, where a realloc can copy it: for a moment two
    copies of the answer. In a mapping, growth is a remap, never a copy.
    """
    if not sys.platform.startswith("linux") or ctypes is None:
        return
    try:
        ctypes.CDLL(None).mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # another C library: it keeps its own policy
