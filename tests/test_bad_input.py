"""Bad input gets a clear JSON error with the right status, is not forwarded, and the server keeps serving."""

import json
import logging
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import request


def raw_exchange(port, data, timeout=10.0):
    """Send raw bytes, read until the server closes or answers fully; return the bytes received."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may answer and close before taking everything
        received = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
                if _complete(received):
                    break
        except OSError:
            pass
        return received


def _complete(received):
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status_and_error(received):
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


def assert_still_serving(port, upstream):
    status, _, body = request(port, "GET", "/health", body=None)
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert upstream.attempts == 0


def assert_no_internal_error(caplog, capfd, since=0):
    """The proxy runs in this process: an exception while serving shows in its log (ShieldServer.handle_error
    logs "internal error serving ..." at ERROR) or, from the stdlib's handlers, as a traceback on stderr.
    The client never sees either, so this is where a crash on bad input shows.
    ``caplog`` must have been set to WARNING or lower before the input was sent."""
    bad = [record for record in caplog.records[since:]
           if record.levelno >= logging.ERROR or record.exc_info or "internal error" in record.getMessage()]
    assert not bad, "\n".join(caplog.handler.format(record) for record in bad)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err


def post_raw(body, headers=b"", path=b"/v1/responses"):
    return b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n" + body


@pytest.mark.parametrize("body, headers, expected, code", [pytest.param(*case, id=str(index)) for index, case in enumerate([
    (b"{not json", None, 400, "invalid_json"),
    (b"[1, 2]", None, 400, "invalid_json"),
    (b'"text"', None, 400, "invalid_json"),
    (b'{"input": "\xff\xfe"}', None, 400, "invalid_json"),
    (b"", None, 400, "invalid_json"),
    (b"[" * 100000 + b"]" * 100000, None, 400, "invalid_json"),
    (b"{}", b"Content-Length: abc\r\n", 400, "bad_content_length"),
    (b"{}", b"Content-Length: -5\r\n", 400, "bad_content_length"),
    (b"", b"", 411, "length_required"),
])])
def test_malformed_bodies(upstream, make_proxy, body, headers, expected, code):
    shield = make_proxy(upstream)
    if headers is None:
        headers = b"Content-Length: %d\r\n" % len(body)
    status, error = status_and_error(raw_exchange(shield.port, post_raw(body, headers)))
    assert (status, error["code"]) == (expected, code)
    assert error["message"]
    assert_still_serving(shield.port, upstream)


def test_oversized_body_is_refused_before_it_is_read(upstream, make_proxy):
    shield = make_proxy(upstream, MAX_REQUEST_BYTES="1000")
    # Announce 10 GB and send none of it: the answer must come from Content-Length alone.
    received = raw_exchange(shield.port, post_raw(b"", b"Content-Length: 10000000000\r\n"))
    status, error = status_and_error(received)
    assert status == 413 and "MAX_REQUEST_BYTES" in error["message"]
    assert_still_serving(shield.port, upstream)


def test_oversized_chunked_body_is_refused(upstream, make_proxy):
    shield = make_proxy(upstream, MAX_REQUEST_BYTES="1000")
    chunk = b"x" * 600
    body = b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2 + b"0\r\n\r\n"
    status, error = status_and_error(raw_exchange(shield.port, post_raw(body, b"Transfer-Encoding: chunked\r\n")))
    assert status == 413 and error["code"] == "request_too_large"
    assert_still_serving(shield.port, upstream)


def test_chunked_body_within_limit_is_served(upstream, make_proxy):
    shield = make_proxy(upstream)
    payload = json.dumps({"model": "m", "input": "hi"}).encode()
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    received = raw_exchange(shield.port, post_raw(body, b"Transfer-Encoding: chunked\r\n"))
    assert received.startswith(b"HTTP/1.1 200")
    assert upstream.requests[-1].json == {"model": "m", "input": "hi", "stream": True}


@pytest.mark.parametrize("method, path, expected", [
    ("GET", "/v1/responses", 405), ("PUT", "/v1/chat/completions", 405), ("POST", "/health", 405),
    ("DELETE", "/v1/models", 405), ("GET", "/nowhere", 404), ("POST", "/v1/embeddings", 404),
])
def test_wrong_method_or_path(upstream, make_proxy, method, path, expected):
    shield = make_proxy(upstream)
    status, headers, body = request(shield.port, method, path, body=b"{}")
    assert status == expected
    assert headers["content-type"] == "application/json" and json.loads(body)["error"]["message"]
    assert_still_serving(shield.port, upstream)


def test_oversized_request_line_and_headers(upstream, make_proxy, caplog, capfd):
    caplog.set_level(logging.WARNING)
    shield = make_proxy(upstream)
    long_line = b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    received = raw_exchange(shield.port, long_line)
    assert received.startswith(b"HTTP/1.1 414") or received.startswith(b"HTTP/1.0 414")
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    received = raw_exchange(shield.port, post_raw(b"{}", many + b"Content-Length: 2\r\n"))
    assert b" 431 " in received.split(b"\r\n", 1)[0]
    big = b"X-Big: " + b"v" * 70000 + b"\r\n"
    received = raw_exchange(shield.port, post_raw(b"{}", big + b"Content-Length: 2\r\n"))
    assert b" 431 " in received.split(b"\r\n", 1)[0]
    assert_still_serving(shield.port, upstream)
    assert_no_internal_error(caplog, capfd)


def test_garbage_request_line(upstream, make_proxy, caplog, capfd):
    caplog.set_level(logging.WARNING)
    shield = make_proxy(upstream)
    received = raw_exchange(shield.port, b"\x16\x03\x01\x02\x00 garbage\r\n\r\n")
    assert b" 400 " in received.split(b"\r\n", 1)[0]
    assert_still_serving(shield.port, upstream)
    assert_no_internal_error(caplog, capfd)


@pytest.mark.parametrize("partial", [b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                                     post_raw(b'{"mod', b"Content-Length: 100\r\n")])
def test_slow_client_is_dropped_after_client_timeout(upstream, make_proxy, caplog, capfd, partial):
    caplog.set_level(logging.WARNING)
    shield = make_proxy(upstream, CLIENT_TIMEOUT="0.5")
    with socket.create_connection(("127.0.0.1", shield.port), timeout=10) as sock:
        sock.sendall(partial)
        started = time.monotonic()
        try:
            sock.recv(65536)  # the server gives up on us and closes
        except ConnectionResetError:
            pass
        waited = time.monotonic() - started
    assert waited < 5.0
    assert_still_serving(shield.port, upstream)
    assert_no_internal_error(caplog, capfd)


header_names = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=":"),
                       min_size=1, max_size=20)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=12)


def test_arbitrary_input_never_crashes_or_forwards_garbage(upstream, make_proxy, caplog, capfd):
    caplog.set_level(logging.WARNING)
    shield = make_proxy(upstream)

    @settings(max_examples=60, deadline=None)
    @given(body=st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())),
           headers=st.lists(st.tuples(header_names, header_values), max_size=5),
           path=st.sampled_from([b"/v1/responses", b"/v1/chat/completions", b"/responses", b"/x", b"/health"]))
    def check(body, headers, path):
        since = len(caplog.records)
        capfd.readouterr()  # this example's stderr only
        skip = ("content-length", "transfer-encoding", "host", "origin", "expect")
        extra = b"".join(name.encode() + b": " + value.encode() + b"\r\n" for name, value in headers
                         if name.lower() not in skip)
        received = raw_exchange(shield.port, post_raw(body, extra + b"Content-Length: %d\r\n" % len(body), path))
        assert received.startswith(b"HTTP/1."), received[:200]
        status, _, _ = request(shield.port, "GET", "/health", body=None)
        assert status == 200
        assert_no_internal_error(caplog, capfd, since)
        for seen in upstream.requests:  # what reached the upstream is a JSON object with stream forced on
            assert isinstance(seen.json, dict) and seen.json.get("stream") is True

    check()
