"""Reading upstream bodies: chunked framing taken off by ``ChunkedDecoder`` (fed raw bytes in
pieces of any size), the ``BufferPool`` that answers are read into, and ``byte_finder``."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retry_shield import search
from retry_shield.buffers import BufferPool, POOLED_SECONDS, READ_CHUNK
from retry_shield.http1 import ChunkedDecoder
from retry_shield.search import MemmemFinder


def frame(pieces, extension=b"", trailers=b"", line_end=b"\r\n"):
    out = b"".join(b"%x%s%s%s%s" % (len(piece), extension, line_end, piece, line_end) for piece in pieces)
    return out + b"0" + line_end + trailers + line_end


def decode(raw, cuts):
    """Feed ``raw`` (followed by stale bytes the decoder must not read) cut at ``cuts``."""
    data = bytearray(raw + b"9\r\nSTALE!!!!\r\n")
    decoder = ChunkedDecoder()
    out = bytearray()
    bounds = sorted(set(cut for cut in cuts if 0 < cut < len(raw))) + [len(raw)]
    start = 0
    for end in bounds:
        for span_start, span_end in decoder.feed(data, start, end):
            assert start <= span_start <= span_end <= end
            out += data[span_start:span_end]
        start = end
    return bytes(out), decoder.done


PIECES = [b"event: a\ndata: {}\n\n", b"x" * 300, b"\r\n", b"0", b"\n", b"last"]


@pytest.mark.parametrize("step", [1, 2, 3, 5, 16, 1000])
def test_every_cut_gives_the_body_and_ends_at_the_last_chunk(step):
    raw = frame(PIECES)
    body, done = decode(raw, range(step, len(raw), step))
    assert body == b"".join(PIECES)
    assert done


@pytest.mark.parametrize("raw", [
    frame(PIECES, extension=b";name=value"),
    frame(PIECES, trailers=b"X-Trailer: 1\r\nX-Other: 2\r\n"),
    frame(PIECES, line_end=b"\n"),
    frame([b"ab"]).replace(b"2\r\n", b"2   \r\n"),
], ids=["extension", "trailers", "bare-lf", "padded-size"])
def test_tolerated_forms(raw):
    for step in (1, 7, len(raw)):
        body, done = decode(raw, range(step, len(raw), step))
        assert (body, done) == (b"".join(PIECES) if len(raw) > 40 else b"ab", True)


def test_a_cut_body_is_not_done():
    raw = frame(PIECES)
    for end in range(len(raw)):
        _, done = decode(raw[:end], [])
        assert not done, end


@pytest.mark.parametrize("raw", [
    b"zz\r\nab\r\n0\r\n\r\n",  # not hex
    b"-2\r\nab\r\n0\r\n\r\n",  # negative
    b"+2\r\nab\r\n0\r\n\r\n",  # a sign
    b"0x2\r\nab\r\n0\r\n\r\n",  # a prefix
    b"1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n",  # an underscore, as Python's int() takes it
    b"\r\nab\r\n0\r\n\r\n",  # empty size line
    b"2\r\nabc\r\n0\r\n\r\n",  # data longer than its size
    b"1" * 5000,  # a size line without end
])
def test_malformed_framing_raises_value_error(raw):
    for cuts in ([], range(1, len(raw))):  # read whole, and a byte at a time
        with pytest.raises(ValueError):
            decode(raw, cuts)


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.binary(min_size=1, max_size=50), max_size=8),
       cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=10))
def test_any_body_in_any_cutting(pieces, cuts):
    raw = frame(pieces)
    assert decode(raw, cuts) == (b"".join(pieces), True)


def test_buffer_pool_hands_back_what_it_was_given():
    pool = BufferPool()
    fresh = pool.take()
    assert len(fresh) >= READ_CHUNK
    pool.give(fresh)
    assert pool.take() is fresh
    assert pool.take() is not fresh


def test_buffer_pool_keeps_at_most_its_count_and_bytes():
    pool = BufferPool(count=3, total=4 * READ_CHUNK)
    buffers = [pool.take() for _ in range(5)]
    for buf in buffers:
        pool.give(buf)
    assert pool.pooled_bytes == 3 * READ_CHUNK  # the count is the limit
    pool = BufferPool(count=10, total=4 * READ_CHUNK)
    pool.give(bytearray(3 * READ_CHUNK))
    pool.give(bytearray(2 * READ_CHUNK))  # over the byte limit: dropped
    pool.give(bytearray(READ_CHUNK))
    assert pool.pooled_bytes == 4 * READ_CHUNK


def test_buffer_pool_gives_answers_the_biggest_and_reads_the_smallest():
    pool = BufferPool()
    sizes = [2, 5, 1, 3]
    for size in sizes:
        pool.give(bytearray(size * READ_CHUNK))
    assert len(pool.take(biggest=True)) == 5 * READ_CHUNK
    assert len(pool.take()) == 1 * READ_CHUNK
    assert pool.pooled_bytes == 5 * READ_CHUNK


def test_buffer_pool_lets_go_of_buffers_unused_for_its_seconds():
    pool = BufferPool(seconds=30)
    old, recent = bytearray(READ_CHUNK), bytearray(2 * READ_CHUNK)
    pool.give(old, now=100.0)
    pool.give(recent, now=125.0)
    pool.trim(now=129.0)
    assert pool.pooled_bytes == 3 * READ_CHUNK
    pool.trim(now=131.0)
    assert pool.pooled_bytes == 2 * READ_CHUNK
    assert pool.take() is recent


def test_the_server_trims_its_buffers_while_it_serves(upstream, make_proxy):
    """Within the server's poll loop (service_actions), buffers past POOLED_SECONDS go."""
    shield = make_proxy(upstream)
    server = shield.server
    server.buffers.give(bytearray(READ_CHUNK), now=time.monotonic() - POOLED_SECONDS - 1)
    deadline = time.monotonic() + 5
    while server.buffers.pooled_bytes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.buffers.pooled_bytes == 0


@pytest.fixture(params=["memmem", "bytearray.find"])
def finder(request, monkeypatch):
    if request.param == "memmem":
        if search.MEMMEM is None:
            print("no memmem in this C library: byte_finder falls back to bytearray.find")
    else:
        monkeypatch.setattr(search, "MEMMEM", None)
    return search.byte_finder


@settings(max_examples=300, deadline=None)
@given(text=st.binary(max_size=60), stale=st.binary(max_size=20), needle=st.sampled_from([b'"error"', b"ab", b"a"]),
       start=st.integers(min_value=0, max_value=70))
def test_byte_finder_finds_what_find_finds_and_nothing_past_the_end(text, stale, needle, start):
    saved = search.MEMMEM, search.MEMMEM_FROM
    try:
        for memmem in (saved[0], None):
            search.MEMMEM, search.MEMMEM_FROM = memmem, 0  # memmem even for these short texts
            buf = bytearray(text + needle + stale)
            find = search.byte_finder(buf, 0, len(text))
            assert find(needle, start) == bytes(text).find(needle, start)
            del find
            buf += b"x"  # let go: the buffer can grow again
    finally:
        search.MEMMEM, search.MEMMEM_FROM = saved


def test_byte_finder_on_a_big_buffer(finder):
    buf = bytearray(b'{"delta":"x"}\n' * 100000 + b'{"type":"error"}\n' + b"stale")
    find = finder(buf, 0, len(buf) - 5)
    first = find(b'"error"', 0)
    assert first == buf.find(b'"error"') and find(b'"error"', first + 1) == -1


def test_a_buffer_searched_through_memmem_cannot_move_meanwhile():
    if search.MEMMEM is None:
        pytest.skip("no memmem in this C library: nothing pins the buffer")
    buf = bytearray(2 * search.MEMMEM_FROM)
    find = search.byte_finder(buf, 0, len(buf))
    assert isinstance(find, MemmemFinder)
    with pytest.raises(BufferError):
        buf += b"x" * READ_CHUNK
    del find
    buf += b"x"
