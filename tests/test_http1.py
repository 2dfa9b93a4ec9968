"""Chunked request bodies: ``read_chunked_body`` / ``read_request_body`` take the framing off through the
one strict ``ChunkedDecoder``, and the proxy answers malformed framing with a JSON 400.

The first part feeds an ``io.BufferedReader`` over the raw bytes (a small ``buffer_size`` makes every
``peek`` return a few bytes, as a slow client's packets would); the second sends raw bytes to the real
proxy over a socket.
"""

import http.client
import io
import json
import socket

import pytest

from retry_shield.errors import ClientError
from retry_shield.http1 import read_chunked_body, read_request_body
from tests.helpers import request

BUFFER_SIZES = [1, 2, 3, 7, 8192]
NEXT_REQUEST = b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"


def rfile(raw, buffer_size=8192):
    return io.BufferedReader(io.BytesIO(raw), buffer_size=buffer_size)


def parsed_headers(text):
    """Request headers as the handler has them: an http.client.HTTPMessage."""
    return http.client.parse_headers(io.BytesIO(text.encode("latin-1") + b"\r\n"))


def read_error(raw, limit=1000, buffer_size=8192):
    with pytest.raises(ClientError) as caught:
        read_chunked_body(rfile(raw, buffer_size), limit)
    return caught.value


# -- well-formed bodies ----------------------------------------------------------


WELL_FORMED = {
    "one-chunk": b"b\r\nhello world\r\n0\r\n\r\n",
    "three-chunks": b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n",
    "a-byte-a-chunk": b"".join(b"1\r\n%c\r\n" % byte for byte in b"hello world") + b"0\r\n\r\n",
    "upper-case-and-leading-zeros": b"000B\r\nhello world\r\n0000\r\n\r\n",
    "extensions": b'5;name=value\r\nhello\r\n6;a;b="c d"\r\n world\r\n0;last\r\n\r\n',
    "trailers": b"b\r\nhello world\r\n0\r\nX-Checksum: abc\r\nX-Other: 2\r\n\r\n",
    "extensions-and-trailers": b"6;x=1\r\nhello \r\n5;y\r\nworld\r\n0;z=2\r\nX-Trailer: yes\r\n\r\n",
}


@pytest.mark.parametrize("buffer_size", BUFFER_SIZES)
@pytest.mark.parametrize("raw", list(WELL_FORMED.values()), ids=list(WELL_FORMED))
def test_well_formed_bodies_in_any_chunking(raw, buffer_size):
    assert read_chunked_body(rfile(raw, buffer_size), 1000) == b"hello world"


@pytest.mark.parametrize("buffer_size", BUFFER_SIZES)
def test_an_empty_body(buffer_size):
    assert read_chunked_body(rfile(b"0\r\n\r\n", buffer_size), 1000) == b""


def test_a_body_larger_than_one_read():
    pieces = [bytes([65 + index % 26]) * size for index, size in enumerate((1, 70000, 3, 65536, 9000))]
    raw = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    assert read_chunked_body(rfile(raw), 10 ** 6) == b"".join(pieces)


# -- malformed framing -----------------------------------------------------------


@pytest.mark.parametrize("buffer_size", [1, 8192])
@pytest.mark.parametrize("size_line", [b"-2", b"0x2", b"+2", b"1_0", b"", b"zz", b"2 2", b"\x00\xff",
                                       b"1" * 17])
def test_bad_chunk_sizes_are_a_400(size_line, buffer_size):
    # Python's int(..., 16) takes "-2", "0x2", "+2" and "1_0"; HTTP's chunk-size is hex digits only.
    error = read_error(size_line + b"\r\n" + b"{}" + b"x" * 14 + b"\r\n0\r\n\r\n", buffer_size=buffer_size)
    assert (error.status, error.code) == (400, "bad_chunked_body")
    assert "chunk" in error.message


@pytest.mark.parametrize("buffer_size", [1, 8192])
def test_chunk_data_longer_than_its_size_is_a_400(buffer_size):
    error = read_error(b"2\r\nabc\r\n0\r\n\r\n", buffer_size=buffer_size)
    assert (error.status, error.code) == (400, "bad_chunked_body")


def test_a_size_line_without_end_is_a_400_not_a_memory_sink():
    error = read_error(b"1" * 100000, limit=10 ** 9)
    assert (error.status, error.code) == (400, "bad_chunked_body")


# -- limits and truncation -------------------------------------------------------


@pytest.mark.parametrize("buffer_size", [1, 8192])
def test_a_body_over_the_limit_is_a_413(buffer_size):
    chunk = b"x" * 600
    raw = b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2 + b"0\r\n\r\n"
    error = read_error(raw, limit=1000, buffer_size=buffer_size)
    assert (error.status, error.code) == (413, "request_too_large")
    assert "MAX_REQUEST_BYTES" in error.message
    assert read_chunked_body(rfile(raw, buffer_size), 1200) == chunk * 2  # exactly at the limit: accepted


def test_a_chunk_announced_over_the_limit_is_refused_before_its_data():
    # The client announces 4 GB and sends none of it: the size line alone is enough to refuse.
    error = read_error(b"ffffffff\r\n", limit=1000)
    assert (error.status, error.code) == (413, "request_too_large")


def test_a_body_ending_before_its_last_chunk_is_a_400():
    raw = WELL_FORMED["extensions-and-trailers"]
    for end in range(len(raw)):  # every cut: in a size line, in data, before and inside the trailers
        for buffer_size in (1, 8192):
            error = read_error(raw[:end], buffer_size=buffer_size)
            assert (error.status, error.code) == (400, "incomplete_body"), (end, buffer_size)


# -- what follows the body -------------------------------------------------------


@pytest.mark.parametrize("buffer_size", BUFFER_SIZES)
@pytest.mark.parametrize("name", ["one-chunk", "extensions-and-trailers"])
def test_bytes_after_the_last_chunk_stay_unread(name, buffer_size):
    source = rfile(WELL_FORMED[name] + NEXT_REQUEST, buffer_size)
    assert read_chunked_body(source, 1000) == b"hello world"
    assert source.read() == NEXT_REQUEST


def test_read_request_body_takes_the_framing_the_client_chose():
    chunked = parsed_headers("Transfer-Encoding: Chunked\r\n")
    source = rfile(WELL_FORMED["extensions"] + NEXT_REQUEST)
    assert read_request_body(source, chunked, 1000) == b"hello world"
    assert source.read() == NEXT_REQUEST
    source = rfile(b"hello world" + NEXT_REQUEST)
    assert read_request_body(source, parsed_headers("Content-Length: 11\r\n"), 1000) == b"hello world"
    assert source.read() == NEXT_REQUEST
    with pytest.raises(ClientError) as caught:
        read_request_body(rfile(b"-2\r\n{}\r\n0\r\n\r\n"), chunked, 1000)
    assert (caught.value.status, caught.value.code) == (400, "bad_chunked_body")


# -- end to end: raw bytes to the real proxy ---------------------------------------


def chunked_post(body, path=b"/v1/responses", extra=b""):
    return (b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n" + extra + b"\r\n" + body)


def read_answers(sock, count):
    """Read ``count`` whole answers (each framed by Content-Length) from ``sock``: [(status, headers, body)]."""
    data = b""
    answers = []
    while len(answers) < count:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode("latin-1").split("\r\n")
            headers = {name.strip().lower(): value.strip()
                       for name, _, value in (line.partition(":") for line in lines[1:])}
            length = int(headers["content-length"])
            if len(rest) >= length:
                answers.append((int(lines[0].split(" ")[1]), headers, rest[:length]))
                data = rest[length:]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed after %d answers; unread %r" % (len(answers), data[:200]))
        data += chunk
    return answers


def exchange(port, raw, count=1):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        return read_answers(sock, count)


@pytest.mark.parametrize("size_line", [b"-2", b"0x2", b"+2", b"1_0"])
def test_a_bad_chunk_size_gets_a_json_400(upstream, make_proxy, size_line):
    shield = make_proxy(upstream)
    body = b'{"input": "abc"}' if size_line == b"1_0" else b"{}"  # as long as Python's int() reads the size
    [(status, headers, payload)] = exchange(shield.port, chunked_post(size_line + b"\r\n" + body + b"\r\n0\r\n\r\n"))
    assert status == 400 and headers["content-type"] == "application/json"
    error = json.loads(payload)["error"]
    assert error["code"] == "bad_chunked_body" and "chunk size" in error["message"]
    assert headers["connection"] == "close"
    assert upstream.attempts == 0
    assert request(shield.port, "GET", "/health", body=None)[0] == 200


def test_a_valid_chunked_request_gets_the_upstreams_answer(upstream, make_proxy):
    shield = make_proxy(upstream)
    payload = json.dumps({"model": "m", "input": "hi", "stream": True}).encode()
    body = b"".join(b"%x;piece=%d\r\n%s\r\n" % (len(payload[start:start + 5]), start, payload[start:start + 5])
                    for start in range(0, len(payload), 5)) + b"0\r\nX-Trailer: 1\r\n\r\n"
    [(status, headers, received)] = exchange(shield.port, chunked_post(body))
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert received == upstream.sent[-1]
    assert upstream.requests[-1].json == {"model": "m", "input": "hi", "stream": True}


def test_a_request_pipelined_after_a_chunked_body_is_served(upstream, make_proxy):
    shield = make_proxy(upstream)
    payload = json.dumps({"model": "m", "input": "hi", "stream": True}).encode()
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    health = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    first, second = exchange(shield.port, chunked_post(body) + health, count=2)
    assert first[0] == 200 and first[2] == upstream.sent[-1]
    assert second[0] == 200 and json.loads(second[2])["status"] == "ok"
