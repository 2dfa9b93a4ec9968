"""Byte search in big buffers: the C library's memmem where ctypes reaches it, bytearray.find elsewhere."""

from typing import Callable, Optional, Union

try:
    import ctypes
except ImportError:  # pragma: no cover - a Python built without it: bytearray.find remains
    ctypes = None

Finder = Callable[[bytes, int], int]


def _c_memmem() -> Optional[Callable[..., int]]:
    """The C library's ``memmem``, or None where ctypes cannot reach it (Windows)."""
    if ctypes is None:
        return None
    try:
        memmem = ctypes.PyDLL(None).memmem  # PyDLL: called holding the GIL, no hand-over per search
    except (OSError, AttributeError, TypeError):
        return None
    memmem.restype = ctypes.c_void_p
    memmem.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t)
    return memmem


MEMMEM = _c_memmem()
MEMMEM_FROM = 4096  # below this many bytes bytearray.find is quicker than a call through ctypes


def byte_finder(buf: bytearray, start: int, end: int) -> Finder:
    """``find(needle, at)``: ``buf.find(needle, at, end)``, with the C library's memmem
    for a search from ``start`` long enough to repay a foreign call: on JSON text it is
    about twice as fast."""
    if MEMMEM is None or end - start < MEMMEM_FROM:
        return lambda needle, at: buf.find(needle, at, end)
    return MemmemFinder(buf, end)


class MemmemFinder:
    """``buf.find(needle, at, end)`` through memmem; while it lives, ``buf`` cannot be
    resized (that raises BufferError), so its address stays valid."""

    def __init__(self, buf: bytearray, end: int) -> None:
        self._anchor = ctypes.c_char.from_buffer(buf)  # an export of buf: pins its memory
        self._base = ctypes.addressof(self._anchor)
        self._end = end

    def __call__(self, needle: bytes, at: int) -> int:
        if at + len(needle) > self._end:
            return -1
        hit = MEMMEM(self._base + at, self._end - at, needle, len(needle))
        return hit - self._base if hit else -1


def find(buf: Union[bytes, memoryview], needle: bytes) -> int:
    """``buf.find(needle)`` for bytes or a memoryview, the view searched where it lies: copying a
    big answer out of its pooled buffer would cost more than the search."""
    if not isinstance(buf, memoryview):
        return buf.find(needle)
    if MEMMEM is not None and not buf.readonly and buf.c_contiguous and len(buf) >= MEMMEM_FROM:
        anchor = ctypes.c_char.from_buffer(buf)  # an export of buf: pins its memory while it lives
        base = ctypes.addressof(anchor)
        hit = MEMMEM(base, buf.nbytes, needle, len(needle))
        return hit - base if hit else -1
    return bytes(buf).find(needle)
